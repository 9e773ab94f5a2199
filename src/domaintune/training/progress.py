"""Progress for humans (a rich bar on a terminal, plain lines otherwise) and for tools
(train_log.jsonl, one JSON object per logging step, and TensorBoard event files)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("domaintune")


class TrainingLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, tensorboard: bool = True):
        self.path = Path(run_dir) / "train_log.jsonl"
        self.total = total_steps
        self.start_step = start_step
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._bar = None
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except Exception as e:  # noqa: BLE001 - TensorBoard is optional at run time
                log.warning("TensorBoard logging disabled: %s", e)
        if self.tty:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, info="")
            self._bar.start()

    def _append(self, row: dict) -> None:
        # Appended and flushed per line: a crash loses at most the line being written.
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False, default=float) + "\n")

    def step(self, step: int, epoch: float, loss: float, lr: float, samples_per_second: float) -> None:
        row = {"step": step, "epoch": round(epoch, 4), "loss": round(loss, 6), "lr": lr,
               "samples_per_second": round(samples_per_second, 2), "elapsed_seconds": round(time.perf_counter() - self.t0, 2)}
        self._append(row)
        if self._tb:
            self._tb.add_scalar("train/loss", loss, step)
            self._tb.add_scalar("train/lr", lr, step)
            self._tb.add_scalar("train/samples_per_second", samples_per_second, step)
        done = step - self.start_step
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step)
        if self._bar:
            self._bar.update(self._task, completed=step, info=f"loss {loss:.4f} | {samples_per_second:.0f} samples/s")
        else:
            log.info("step %d/%d epoch %.2f loss %.4f lr %.2e %.0f samples/s eta %.0fs",
                     step, self.total, epoch, loss, lr, samples_per_second, eta)

    def evaluation(self, step: int, epoch: float, metrics: dict) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self._append({"step": step, "epoch": round(epoch, 4), "eval": scalars,
                      "elapsed_seconds": round(time.perf_counter() - self.t0, 2)})
        if self._tb:
            for k, v in scalars.items():
                self._tb.add_scalar(f"dev/{k}", v, step)
        msg = " ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k != "n")
        if self._bar:
            self._bar.console.print(f"dev @ step {step} (epoch {epoch:.2f}): {msg}")
        else:
            log.info("dev @ step %d (epoch %.2f): %s", step, epoch, msg)

    def close(self) -> None:
        if self._bar:
            self._bar.stop()
        if self._tb:
            self._tb.close()
