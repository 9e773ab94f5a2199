"""SHA-256 of a file, importable without torch.

Why here and not only in `domaintune.training.checkpoint` (which re-exports it): the registry
checks a version's weights on `registry promote` / `rollback` and when `serve --registry`
switches versions, and those paths must not pay for importing torch just to hash bytes.
"""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (data files and weights can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
