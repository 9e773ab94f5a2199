"""Security helpers shared by every store and writer: owner-only files and keyed hashes.

Why a package of its own: the audit log, the alert history, the model registry, the key
store, prediction outputs and the PII masker all need the same two guarantees (files that
may hold user text or keys are 0600 in a 0700 folder; hashes of user text cannot be
reversed by brute force), and one implementation is easier to review than five.
"""

from domaintune.security.files import private_dir, private_file, sqlite_url_private
from domaintune.security.secret import installation_secret, keyed_hash

__all__ = ["installation_secret", "keyed_hash", "private_dir", "private_file", "sqlite_url_private"]
