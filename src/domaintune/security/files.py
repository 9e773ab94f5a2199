"""Owner-only files and folders for anything that may hold user text, PII or key material.

SQLite creates its `-wal` and `-shm` side files with the permissions of the main database
file, so creating the database 0600 *before* SQLite opens it is enough to keep all three
private (checked by tests/security/test_file_modes.py).
"""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and missing parents) as 0700; an existing folder we did not create is left as it is."""
    path = Path(path).expanduser()
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    return path


def private_file(path: str | os.PathLike) -> Path:
    """Create `path` empty as 0600 if it does not exist (its folder 0700 if we create it); return it resolved.

    An existing file is tightened to 0600 too: a store written by an older version (0644) becomes private
    the next time it is opened."""
    path = Path(path).expanduser()
    private_dir(path.parent)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)
    for side in ("-wal", "-shm", "-journal"):
        extra = path.with_name(path.name + side)
        if extra.exists():
            os.chmod(extra, 0o600)
    return path.resolve()


def sqlite_url_private(url_or_path: str | os.PathLike) -> str:
    """An SQLAlchemy URL for a store; a plain path (or `sqlite:///path`) is created owner-only first."""
    s = str(url_or_path)
    if "://" not in s:
        return f"sqlite:///{private_file(s)}"
    if s.startswith("sqlite:///") and s not in ("sqlite://", "sqlite:///:memory:"):
        db = s[len("sqlite:///"):].split("?", 1)[0]
        if db and db != ":memory:":
            private_file(db)
    return s
