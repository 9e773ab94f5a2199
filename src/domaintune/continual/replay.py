"""Replay: a bounded, class-balanced memory of earlier stages' training rows.

Training on the new stage's rows plus this buffer is the simplest strong
defence against forgetting (Chaudhry et al. 2019, "On Tiny Episodic Memories
in Continual Learning"). The buffer holds at most `capacity` rows, split evenly
over every class seen so far; within a class, reservoir sampling keeps a
uniform sample of all rows of that class ever offered (domain-incremental
stages therefore share a class's slots in proportion to their size). When new
classes arrive the per-class quota shrinks and each class keeps a seeded random
subset. Everything is seeded by (seed, stage): the same stages give the same
buffer.

On disk (inside the run directory, written atomically): `buffer.jsonl` (one row
per example: text, label, stage, source file and line) and `meta.json`
(capacity, seed, how many rows of each class were offered, the buffer's sha256).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from domaintune.data.readers import Example
from domaintune.training.checkpoint import atomic_write_json, atomic_write_text

BUFFER_FILE, META_FILE = "buffer.jsonl", "meta.json"


class ReplayBufferError(ValueError):
    """The stored buffer is unreadable or does not match its meta.json."""


@dataclass
class ReplayBuffer:
    capacity: int
    seed: int = 42
    items: dict[str, list[dict]] = field(default_factory=dict)   # label -> rows
    seen: dict[str, int] = field(default_factory=dict)           # label -> rows offered so far
    updates: int = 0                                             # how many stages were added

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {self.capacity}")

    def __len__(self) -> int:
        return sum(len(v) for v in self.items.values())

    def quota(self, n_classes: int) -> int:
        """Rows per class: the capacity split evenly (at least one row per class)."""
        return max(1, self.capacity // max(n_classes, 1))

    def add(self, examples: list[Example], stage: int) -> None:
        """Offer one stage's training rows: shrink every class to the new quota, then reservoir-sample."""
        rng = random.Random(f"{self.seed}-{stage}")
        labels = set(self.items) | {ex.label for ex in examples}
        q = self.quota(len(labels))
        for label in sorted(self.items):
            rows = self.items[label]
            if len(rows) > q:
                self.items[label] = sorted(rng.sample(rows, q), key=lambda r: (r["stage"], r["line"]))
        for ex in examples:
            c = ex.label
            rows = self.items.setdefault(c, [])
            self.seen[c] = self.seen.get(c, 0) + 1
            row = {"text": ex.text, "label": c, "stage": stage, "source": ex.source, "line": ex.line}
            if ex.text_pair is not None:
                row["text_pair"] = ex.text_pair
            if len(rows) < q:
                rows.append(row)
            else:
                j = rng.randrange(self.seen[c])
                if j < q:
                    rows[j] = row
        self.updates += 1

    def examples(self) -> list[Example]:
        """The buffer as training Examples, in a stable order (label, then stage and line)."""
        return [Example(r["text"], r["label"], source=r.get("source", "replay"), line=int(r.get("line", 0)),
                        text_pair=r.get("text_pair"))
                for label in sorted(self.items) for r in self.items[label]]

    def counts(self) -> dict[str, int]:
        return {label: len(rows) for label, rows in sorted(self.items.items())}

    # ---- storage
    def _lines(self) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for label in sorted(self.items) for r in self.items[label])

    def save(self, folder: str | Path) -> dict:
        folder = Path(folder)
        text = self._lines()
        atomic_write_text(folder / BUFFER_FILE, text)
        meta = {"capacity": self.capacity, "seed": self.seed, "updates": self.updates, "rows": len(self),
                "per_class": self.counts(), "seen": dict(sorted(self.seen.items())),
                "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "selection": "per-class reservoir"}
        atomic_write_json(folder / META_FILE, meta)
        return meta

    @classmethod
    def load(cls, folder: str | Path, capacity: int | None = None) -> "ReplayBuffer":
        """Read a stored buffer; `capacity` overrides the stored one (a smaller one trims at the next `add`)."""
        folder = Path(folder)
        meta_path, buf_path = folder / META_FILE, folder / BUFFER_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            raw = buf_path.read_bytes()
        except (OSError, ValueError) as e:
            raise ReplayBufferError(f"{folder}: replay buffer unreadable ({e}); re-run the previous stage with "
                                    f"--strategy replay, or start this stage without replay") from None
        if hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
            raise ReplayBufferError(f"{buf_path}: contents do not match the sha256 in {meta_path} (edited or "
                                    f"truncated); restore the file from the run that wrote it")
        buf = cls(capacity=capacity or int(meta["capacity"]), seed=int(meta.get("seed", 42)),
                  seen={k: int(v) for k, v in meta.get("seen", {}).items()}, updates=int(meta.get("updates", 0)))
        for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                buf.items.setdefault(str(row["label"]), []).append(row)
                row["text"]  # noqa: B018 - a row without text is corrupt
            except (ValueError, KeyError, TypeError) as e:
                raise ReplayBufferError(f"{buf_path}:{n}: not a replay row ({e}); restore the file from the run "
                                        f"that wrote it") from None
        return buf


from domaintune.continual.base import StageContext, Strategy  # noqa: E402


class Replay(Strategy):
    """Train on the new rows plus the buffer; afterwards add the new rows to the buffer for the next stage."""

    name = "replay"

    def setup(self, ctx: StageContext) -> None:
        folder = ctx.prev_state_dir / "replay"
        if (folder / META_FILE).is_file():
            self.buffer = ReplayBuffer.load(folder, capacity=self.options.replay_size)
        else:  # the previous stage kept no buffer (a plain `train` run, or another strategy): fill it from its data
            self.buffer = ReplayBuffer(self.options.replay_size, seed=ctx.seed)
            self.buffer.add(ctx.prev_train(), stage=ctx.stage - 1)
        self.rows = self.buffer.examples()

    def extra_examples(self):
        return list(self.rows)

    def finish(self, model, ctx: StageContext) -> dict:
        self.buffer.add(ctx.new_train, stage=ctx.stage)
        meta = self.buffer.save(ctx.state_dir / "replay")
        return {"replayed_rows": len(self.rows), "buffer_rows": meta["rows"], "buffer_sha256": meta["sha256"]}

    def settings(self) -> dict:
        return {"replay_size": self.options.replay_size}
