"""Drift monitoring and alerts: reference profiles, sliding-window statistics, rules, sinks.

profile.py   RUN_DIR/profile.json at training time (or `domaintune monitor profile RUN`)
stats.py     PSI / JS and the sliding window every statistic is read from
rules.py     alert rules (YAML, expression syntax) with validation errors that say where and how to fix
alerts.py    rule evaluation (thresholds, z-score spikes, cooldown) and sinks (log, webhook, history)
online.py    the service's per-model monitor: O(1) hook on the request path, work on a background thread
offline.py   the same statistics from the audit log (`domaintune monitor --model NAME --since 24h`)
"""
