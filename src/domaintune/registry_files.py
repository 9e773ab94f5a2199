"""Bind a registered version to the bytes it was registered with: record file hashes, refuse a version that changed.

A registry version names a run directory by path (runs are not copied). Without a
binding, weights edited after registration - by mistake, by a re-export into the
wrong folder, or by someone with write access to the run - would be promoted and
served as the same version number, and the audit log would attribute their answers
to the version that was reviewed. So `register` records the SHA-256 and size of
every file a Predictor loads (`bound_files`), and `promote`, `rollback` and
`serve --registry` (at start, on every switch and on a SIGHUP/admin reload) check
the files against that record first (`verify_files`). A file that changed, went
missing or appeared (an extra weight file transformers or peft might pick up)
refuses the version, naming the file; the fix is to register the run again as a
new version, which is an explicit decision that the new bytes are the ones to serve.

What is bound (relative to the run directory):
  * config.yaml, task.json, labels.json - the task, its labels and thresholds;
  * every file under model/ (weights, tokenizer, configs, adapters, custom heads,
    ensemble members) and under index/ (a retrieval run's FAQ index);
  * export/*.onnx* and export/benchmark.json - the ONNX backends and the record
    that decides which one `--backend auto` serves;
  * for an adapter (LoRA, IA3...) under model/, every file of the base model it
    is applied to, found the way the loader finds it (catalog name, then path).
Reports, metrics, checkpoints and logs are not bound: editing them changes no answer.

When: at registration, promotion, rollback and model load - never on the
registry poll (every 0.5 s), where hashing a 90 MB model would cost the service
a core. A file is hashed only when its size still matches the record.

Limit: the check and the load read the files one after the other, so a process
that can write the run directory and wins that race between the two is not
stopped; the binding catches edits made any time before a load, which is what a
registry needs to mean "version 3 is these bytes". Keep run directories writable
only by the people who may register models.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from domaintune.registry import RegistryError

FORMAT = 1
ROOT_FILES = ("config.yaml", "task.json", "labels.json")
TREES = ("model", "index")
EXPORT_DIR = "export"
MAX_LISTED = 10  # problems named one by one in a refusal; the rest are counted


class BindingError(RegistryError):
    """A version's files differ from its registration (or were never recorded); the message names the files."""


def _walk(top: Path):
    """Every regular file under `top`, following symlinked folders once (a loop cannot hang us)."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")  # bytecode a package import left; never loaded
        for f in sorted(files):
            p = Path(folder) / f
            if p.is_file():
                yield p


def _is_export_file(name: str) -> bool:
    return ".onnx" in name or name == "benchmark.json"


def bound_files(run_dir: Path) -> dict[str, Path]:
    """{path relative to the run directory (POSIX): path} of every file a Predictor of this run may load."""
    run_dir = Path(run_dir)
    out = {name: run_dir / name for name in ROOT_FILES if (run_dir / name).is_file()}
    for tree in TREES:
        if (run_dir / tree).is_dir():
            out.update({p.relative_to(run_dir).as_posix(): p for p in _walk(run_dir / tree)})
    export = run_dir / EXPORT_DIR
    if export.is_dir():
        out.update({f"{EXPORT_DIR}/{p.name}": p for p in sorted(export.iterdir())
                    if _is_export_file(p.name) and p.is_file()})
    return out


def _adapter_dirs(run_dir: Path) -> list[str]:
    """Folders under model/ holding a peft adapter (model/ itself, or ensemble members), relative to the run."""
    model = Path(run_dir) / "model"
    if not model.is_dir():
        return []
    return sorted(p.parent.relative_to(run_dir).as_posix() for p in _walk(model) if p.name == "adapter_config.json")


def _base_dir(run_dir: Path, rel: str) -> Path:
    from domaintune.models import ModelNotFoundError, adapter_info, resolve_adapter_base

    model_dir = Path(run_dir) / rel
    try:
        return resolve_adapter_base(adapter_info(model_dir), model_dir)
    except (OSError, ValueError, ModelNotFoundError) as e:
        raise BindingError(f"{model_dir}: cannot find the adapter's base model to check its files ({e})") from None


def _hash_tree(files: dict[str, Path]) -> dict[str, dict]:
    from domaintune.security.digest import sha256_file

    return {rel: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for rel, p in sorted(files.items())}


def record_files(run_dir: str | Path) -> dict:
    """What `register` stores (tag `domaintune.files`): hashes of the bound files and of adapter base models."""
    run_dir = Path(run_dir)
    rec = {"format": FORMAT, "algorithm": "sha256", "files": _hash_tree(bound_files(run_dir))}
    bases = {}
    for rel in _adapter_dirs(run_dir):
        base = _base_dir(run_dir, rel)
        bases[rel] = {"path": str(base.resolve()),
                      "files": _hash_tree({p.relative_to(base).as_posix(): p for p in _walk(base)})}
    if bases:
        rec["bases"] = bases
    return rec


def _compare(root: Path, want: dict[str, dict], have: dict[str, Path], prefix: str = "") -> list[str]:
    """One line per difference between the recorded files and the files there now."""
    from domaintune.security.digest import sha256_file

    problems = []
    for rel, rec in sorted(want.items()):
        p = root / rel
        if not p.is_file():
            problems.append(f"{prefix}{rel} is missing")
            continue
        size = p.stat().st_size
        if size != rec.get("bytes"):
            problems.append(f"{prefix}{rel} changed ({size} bytes, registered {rec.get('bytes')})")
            continue
        digest = sha256_file(p)
        if digest != rec.get("sha256"):
            was = str(rec.get("sha256"))[:12]
            problems.append(f"{prefix}{rel} changed (sha256 {digest[:12]}..., registered {was}...)")
    problems += [f"{prefix}{rel} is new (not there when the version was registered)"
                 for rel in sorted(set(have) - set(want))]
    return problems


def verify_files(run_dir: str | Path, record: dict | None, name: str, version: int | str) -> None:
    """Raise BindingError naming every bound file of NAME vVERSION that changed, went missing or appeared.

    A version registered before hashes were recorded (`record` None) is refused too, not served with a
    warning: nothing shows that its folder still holds the registered model, and an override flag would
    become a standing bypass in deployment scripts - exactly where an edited model would then go
    unnoticed. Re-registering the run is one command and is itself the explicit, recorded decision
    that these bytes are the ones to serve (the audit trail shows the new version number)."""
    run_dir = Path(run_dir)
    again = (f"register the run again as a new version (`domaintune registry register {run_dir} --name {name}`) "
             f"and promote that version")
    if record is None:
        raise BindingError(f"{name} v{version} was registered before domaintune recorded the SHA-256 of each weight "
                           f"and tokenizer file, so nothing shows that {run_dir} still holds the registered model; "
                           f"it is refused rather than trusted. To keep serving this run, {again}")
    if record.get("format") != FORMAT or not isinstance(record.get("files"), dict):
        raise BindingError(f"{name} v{version}: its file record (tag domaintune.files) has format "
                           f"{record.get('format')!r}, not {FORMAT}; it was written by another domaintune version. "
                           f"Use that version, or {again}")
    problems = _compare(run_dir, record["files"], bound_files(run_dir))
    if not problems:  # the adapter configs naming each base are bound above, so resolve bases only when they match
        for rel, base in sorted((record.get("bases") or {}).items()):
            try:
                folder = _base_dir(run_dir, rel)
            except BindingError as e:
                problems.append(str(e))
                continue
            have = {p.relative_to(folder).as_posix(): p for p in _walk(folder)}
            problems += _compare(folder, base.get("files") or {}, have, prefix=f"base model of {rel} ({folder}): ")
    if problems:
        listed = "; ".join(problems[:MAX_LISTED]) + (f"; and {len(problems) - MAX_LISTED} more"
                                                      if len(problems) > MAX_LISTED else "")
        raise BindingError(f"{name} v{version} ({run_dir}) no longer matches its registration: {listed}. A registered "
                           f"version is bound to the files it was registered with, so it is not promoted, rolled back "
                           f"to or served. If the change is intended, {again}; otherwise restore the registered files "
                           f"or promote another version")


def files_tag(record: dict) -> str:
    """The record as the tag value; MLflow caps a version tag at 100,000 characters."""
    value = json.dumps(record, separators=(",", ":"))
    if len(value) > 100_000:
        raise RegistryError(f"{len(record['files'])} files under model/, index/ and export/ are too many to record "
                            f"(the hashes take {len(value)} characters, MLflow's tag limit is 100,000); remove stray "
                            f"files from the run directory and register again")
    return value
