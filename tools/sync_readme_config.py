"""Rewrite the README's config reference table from domaintune.config (run after changing the config)."""

import re
from pathlib import Path

from domaintune.config import reference_markdown

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text(encoding="utf-8")
new, n = re.subn(r"\| key \| default \| description \|\n(\|.*\|\n)+", lambda m: reference_markdown(), text, count=1)
assert n == 1, "config reference table not found in README.md"
readme.write_text(new, encoding="utf-8")
