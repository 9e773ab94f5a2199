"""Error types the CLI catches, importable without the modules that raise them.

Why a module of its own: `domaintune.cli` lists the user errors it turns into one-line
messages (exit 2) at import time, and `domaintune --help` must not pay for importing
`domaintune.config` (pydantic models, ~0.15-0.25 s) just to name ConfigError.
`domaintune.config` re-exports it, so `from domaintune.config import ConfigError` still works.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message says what and where."""
