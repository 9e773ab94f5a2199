"""Markdown rendering of bench/serving.py's results (serving.md), kept apart so the benchmark itself stays
readable: this module only formats what serving.py measured."""

from __future__ import annotations

VARIANTS = {"pipeline": "(a) transformers pipeline (peer)", "torch": "(b) Predictor torch fp32",
            "onnx": "(c) Predictor onnx fp32", "onnx-int8": "(d) Predictor onnx int8"}


def f(v, nd=1, suffix=""):
    return "—" if v is None else f"{v:.{nd}f}{suffix}"


def offline_table(off: dict) -> list[str]:
    lines = ["| variant | accuracy % | texts/s | p50 ms | p99 ms | peak RSS MB | load s | texts/s ÷ peer | p50 ÷ peer "
             "| RSS ÷ peer | Δacc vs peer (pt) | agreement with (b) | Δacc vs (b) (pt) | other cores busy |",
             "|---|" + "---:|" * 13]
    for v, r in off["rows"].items():
        if r.get("status") != "ok":
            lines.append(f"| {VARIANTS[v]} | {r.get('status')} |" + " |" * 12)
            continue
        p, t = r.get("vs_peer") or {}, r.get("vs_torch") or {}
        agree = t.get("argmax_agreement")
        lines.append(f"| {VARIANTS[v]} | {f(100 * r['accuracy'], 2)} | {f(r['texts_per_second'])} | {f(r['p50_ms'], 2)} "
                     f"| {f(r['p99_ms'], 2)} | {f(r['peak_rss_mb'], 0)} | {f(r['load_seconds'])} | {f(p.get('texts_per_second'), 2, '×')} "
                     f"| {f(p.get('p50'), 2, '×')} | {f(p.get('peak_rss'), 2, '×')} | {f(p.get('accuracy_pt'), 2)} "
                     f"| {f(None if agree is None else 100 * agree, 2, ' %')} | {f(t.get('accuracy_pt'), 2)} "
                     f"| {f(r.get('other_cores_busy'), 2)} |")
    return lines


def http_table(http: dict) -> list[str]:
    lines = ["| server | concurrency | requests | wall s | req/s (2xx) | p50 ms | p99 ms | 2xx | 429 | 503 | other 4xx "
             "| other 5xx | conn errors | label accuracy of 2xx |", "|---|" + "---:|" * 13]
    for side, name in (("naive", "(e) naive FastAPI + pipeline"), ("ours", "(f) domaintune serve")):
        s = http.get(side)
        if s and s.get("status") != "ok":
            lines.append(f"| {name} | {s.get('status')} |" + " |" * 12)
        for c, r in (s or {}).get("levels", {}).items():
            k, acc = r["counts"], r["accuracy_2xx"]
            lines.append(f"| {name} | {c} | {r['requests']} | {f(r['wall_seconds'])} | {f(r['throughput_rps'])} "
                         f"| {f(r['p50_ms'], 2)} | {f(r['p99_ms'], 2)} | {k['2xx']} | {k['429']} | {k['503']} | {k['4xx']} "
                         f"| {k['5xx']} | {k['conn_error']} | {f(None if acc is None else 100 * acc, 2, ' %')} |")
    if http.get("ratios"):
        lines += ["", "| concurrency | req/s ours ÷ naive | p50 ours ÷ naive | p99 ours ÷ naive |", "|---:|---:|---:|---:|"]
        lines += [f"| {c} | {f(r['throughput'], 2, '×')} | {f(r['p50'], 2, '×')} | {f(r['p99'], 2, '×')} |"
                  for c, r in http["ratios"].items()]
    p = (http.get("ours") or {}).get("probe")
    if p:
        k = p["counts"]
        lines += ["", f"Saturation probe of (f): {p['requests']} requests at concurrency {p['concurrency']} (best level "
                  f"{p['peak_level']}), server started with `--max-queue {p['max_queue']}`: {k['2xx']} 2xx, {k['429']} 429, "
                  f"{k['503']} 503, {k['4xx']} other 4xx, {k['5xx']} other 5xx, {k['conn_error']} connection errors; "
                  f"Retry-After on {p['retry_after']['with']} of {p['rejected']} rejections (all: "
                  f"**{p['retry_after_on_all_rejections']}**), rejections answered in p50 {f(p['rejected_p50_ms'], 2)} ms; "
                  f"`GET /healthz` afterwards: **{p['healthz_after']}**; {p['throughput_rps']} req/s of 2xx."]
    return lines


def markdown(res: dict) -> str:
    m, mach = res["meta"], res["meta"]["machine"]
    off, http = res.get("offline"), res.get("http")
    lines = ["# Benchmark: serving a fine-tuned classifier on CPU — domaintune vs plain transformers", "",
             f"Date (UTC): {m['date']} to {m['finished']}  ", f"Command: `{m['command']}`  ",
             f"Run: `{m['run']}`; data: `{m['data']}` ({m['texts']} texts, banking77 test, CC BY 4.0)  ",
             f"Machine: {mach['cpu']}, {mach['physical_cores']} physical / {mach['logical_cores']} logical cores, "
             f"{mach.get('ram_gb')} GB RAM; load average before {m['load_before']}, after {m['load_after']}  ",
             "Versions: " + ", ".join(f"{k} {val}" for k, val in m["versions"].items()), "",
             "## Offline (one fresh process per variant)", ""]
    if off:
        lines += ([f"*Not re-run: carried over from the run of {off['reused_from']}.*", ""] if off.get("reused_from") else [])
        lines += offline_table(off) + [
            "", f"texts/s: all {off['texts']} texts in file order in one call, after a warm-up (the peer with "
            "`batch_size=32`; the Predictor with its default batch size and length-sorted batches). p50/p99: one text "
            "per call over texts spread across the file. Peak RSS: the process's ru_maxrss. Ratios: variant ÷ (a). "
            "The Predictor truncates to the run's `train.max_length`; the pipeline does not. Other cores busy: "
            f"cores other processes kept busy meanwhile ({off.get('other_cores_busy')} over the whole part)."]
    else:
        lines.append("Not run (`--skip-offline`).")
    lines += ["", "## HTTP (asyncio + httpx load generator on loopback)", ""]
    if http:
        lines += ([f"*Not re-run: carried over from the run of {http['reused_from']}.*", ""] if http.get("reused_from") else [])
        o, n = http.get("ours") or {}, http.get("naive") or {}
        lines += http_table(http) + [
            "", "One text per request (cycling over the test texts) as JSON `{\"text\": ...}`; throughput = 2xx "
            "responses ÷ wall seconds; p50/p99 over 2xx responses as the client saw them (queueing included). The "
            "client runs on the same cores as the server, for both sides. The naive server runs with uvicorn's access "
            "log off (in its favour).",
            f"Server peak RSS: naive {n.get('server_peak_rss_mb')} MB, domaintune {o.get('server_peak_rss_mb')} MB; "
            f"ready after {n.get('ready_seconds')} s / {o.get('ready_seconds')} s; other processes kept "
            f"{n.get('other_cores_busy')} / {o.get('other_cores_busy')} cores busy on average; domaintune serve "
            f"args: `{' '.join(o.get('serve_args') or []) or '(defaults)'}`."]
    else:
        lines.append("Not run (`--skip-http`).")
    if m.get("export"):
        lines += ["", f"ONNX export: {m['export']['status']}."]
    return "\n".join(lines + ["", "Commands run:", "", *[f"    {c}" for c in m["commands"]], ""])
