"""Atomic files and resumable checkpoints that survive kill -9.

A checkpoint is a directory `checkpoints/step-XXXXXXX/` written under a
temporary name, fsynced and renamed into place; only then is the pointer file
`checkpoints/latest.json` replaced (itself atomically). A crash at any instant
leaves either the old or the new checkpoint fully readable, never a torn one.
Weights are safetensors; optimizer/scheduler/RNG state is loaded with
`torch.load(weights_only=True)`, so a checkpoint cannot execute code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give run files the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


# Lives in a torch-free module so the registry can hash weights without importing torch; re-exported here.
from domaintune.security.digest import sha256_file  # noqa: E402,F401


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=float) + "\n")


def fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def atomic_dir(target: Path, write) -> Path:
    """Call write(tmp_dir), then move tmp_dir onto target in one rename.

    If target exists it is first moved aside and deleted after the swap; a
    crash in between leaves `target.old`, which `resolve_dir` falls back to.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_UMASK)
    try:
        write(tmp)
        fsync_tree(tmp)
        old = target.with_name(target.name + ".old")
        if target.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])


METHOD_STATE = "method_state.safetensors"


def _frozen_names(model) -> set[str]:
    """Every name of every frozen parameter (a tied parameter has several: the embeddings and the LM head)."""
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def _aliases(model) -> set[str]:
    """State-dict names of tensors that share memory with an earlier entry (tied embeddings and LM head)."""
    seen, out = set(), set()
    for k, v in model.state_dict(keep_vars=True).items():
        ptr = (v.data_ptr(), v.shape, v.dtype)
        if ptr in seen and v.numel():
            out.add(k)
        seen.add(ptr)
    return out


def checkpoint_tensors(model) -> dict[str, torch.Tensor]:
    """What a checkpoint must hold to restore the training: every tensor of the state dict except frozen
    parameters (the same pretrained values are rebuilt on resume; for a LoRA run on a 135M-parameter LM this
    is 2 MB instead of 540 MB per checkpoint) and except second names of one tied tensor (safetensors refuses
    to write shared memory twice; loading the first name fills both)."""
    frozen, aliases = _frozen_names(model), _aliases(model)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in frozen and k not in aliases}


class CheckpointManager:
    """Keeps `latest` (for resume) and `best` (by the dev metric) under run/checkpoints."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "checkpoints"

    def save_latest(self, model, optimizer, scheduler, trainer_state: dict,
                    method_state: dict[str, torch.Tensor] | None = None) -> Path:
        """`method_state`: tensors a method needs to resume exactly (AdaLoRA's importance scores, rank masks)."""
        step = trainer_state["global_step"]
        name = f"step-{step:07d}"

        def write(tmp: Path) -> None:
            save_file(checkpoint_tensors(model), str(tmp / "model.safetensors"))
            if method_state:
                save_file({k: v.detach().contiguous() for k, v in method_state.items()}, str(tmp / METHOD_STATE))
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                       tmp / "optimizer.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, default=float))

        path = atomic_dir(self.dir / name, write)
        atomic_write_json(self.dir / "latest.json", {"checkpoint": name, "global_step": step})
        for old in self.dir.glob("step-*"):
            if old.name != name and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        return path

    def save_best(self, model, info: dict) -> Path:
        def write(tmp: Path) -> None:
            save_file(checkpoint_tensors(model), str(tmp / "model.safetensors"))
            (tmp / "info.json").write_text(json.dumps(info, indent=2, default=float))

        return atomic_dir(self.dir / "best", write)

    def latest(self) -> Path | None:
        pointer = self.dir / "latest.json"
        if pointer.is_file():
            path = self.dir / json.loads(pointer.read_text())["checkpoint"]
            if (path / "trainer_state.json").is_file():
                return path
        candidates = sorted(p for p in self.dir.glob("step-*") if (p / "trainer_state.json").is_file())
        return candidates[-1] if candidates else None

    def best(self) -> Path | None:
        for name in ("best", "best.old"):
            if (self.dir / name / "model.safetensors").is_file():
                return self.dir / name
        return None

    @staticmethod
    def load_weights(model, folder: Path) -> None:
        state = load_file(str(Path(folder) / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        frozen = _frozen_names(model)
        params = dict(model.named_parameters(remove_duplicate=False))
        tensors = {**params, **model.state_dict(keep_vars=True)}

        def where(t) -> tuple:
            return t.data_ptr(), tuple(t.shape)

        loaded = {where(tensors[k]) for k in state if k in tensors}
        # a key absent from the file is fine when it is frozen or shares its memory with a key that was loaded
        missing = [k for k in missing if k not in frozen and k in tensors and where(tensors[k]) not in loaded]
        if missing or unexpected:
            raise RuntimeError(f"{folder}: checkpoint does not fit the model (missing {missing[:5]}, unexpected "
                               f"{unexpected[:5]}); it was written for another model or method")

    @staticmethod
    def load_method_state(folder: Path) -> dict[str, torch.Tensor] | None:
        path = Path(folder) / METHOD_STATE
        return load_file(str(path)) if path.is_file() else None

    @staticmethod
    def load_training_state(folder: Path) -> tuple[dict, dict]:
        extra = torch.load(Path(folder) / "optimizer.pt", map_location="cpu", weights_only=True)
        state = json.loads((Path(folder) / "trainer_state.json").read_text())
        return extra, state
