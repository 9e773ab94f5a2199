"""A per-installation secret and keyed hashes (HMAC-SHA-256) of user text.

Why not plain SHA-256: the audit log stores a hash of each input so an auditor can check
"was this exact text sent?". Inputs are short and structured (a masked Chinese mobile number
has ~10^8 candidates), so an unsalted hash is reversed by brute force in under a second.
An HMAC keyed with a secret that never leaves this machine keeps the check possible for
whoever holds the secret and impossible for whoever only holds the database.

The secret lives in `$DOMAINTUNE_HOME/secret.key` (0600, 32 random bytes, created on first
use, atomically so two processes starting together agree) unless `DOMAINTUNE_SECRET` is set
(hex or any string; for several replicas sharing one audit database).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from pathlib import Path

from domaintune.security.files import private_dir

_lock = threading.Lock()
_cache: dict[str, bytes] = {}


def _home() -> Path:
    return Path(os.environ.get("DOMAINTUNE_HOME", "~/.domaintune")).expanduser()


def installation_secret(home: str | os.PathLike | None = None) -> bytes:
    """The secret bytes (environment `DOMAINTUNE_SECRET` first, else `<home>/secret.key`, created if missing)."""
    env = os.environ.get("DOMAINTUNE_SECRET")
    if env:
        return env.encode("utf-8")
    path = Path(home).expanduser() if home is not None else _home()
    path = path / "secret.key"
    key = str(path)
    with _lock:
        if key in _cache:
            return _cache[key]
        private_dir(path.parent)
        if not path.exists():
            tmp = path.with_name(f".secret.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            try:
                os.write(fd, secrets.token_hex(32).encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # fails if another process won the race: then use theirs
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        value = path.read_bytes().strip()
        if len(value) < 32:
            raise ValueError(f"{path}: the installation secret is shorter than 32 characters; delete the file to "
                             f"create a new one (old audit hashes then stop matching)")
        _cache[key] = value
        return value


def keyed_hash(text: str, secret: bytes | None = None) -> str:
    """HMAC-SHA-256 of `text` (UTF-8, lone surrogates kept) under the installation secret, as hex."""
    secret = installation_secret() if secret is None else secret
    return hmac.new(secret, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
