"""Continual-learning scores over the accuracy matrix, and the regression gate.

`R[i][j]` is the test accuracy on stage j's test set after training stage i
(j <= i; entries above the diagonal are None: that data was not seen yet). The
definitions follow Chaudhry et al. 2018 (forgetting) and Lopez-Paz & Ranzato
2017 (backward transfer), in percentage points so they read next to accuracy:

* average accuracy after stage k: mean_j<=k R[k][j]
* forgetting of stage j after stage k: max_{l in j..k-1} R[l][j] - R[k][j]
  (the best it ever was minus now); average forgetting: mean over j < k
* backward transfer after stage k: mean_j<k (R[k][j] - R[j][j]); negative
  when learning later stages hurt earlier ones

The gate compares the new run with the run it continues (the one a registry
would replace): a stage whose accuracy drops by more than `max_forgetting`
points blocks promotion.
"""

from __future__ import annotations

from typing import Sequence

Matrix = Sequence[Sequence[float | None]]


def _check(matrix: Matrix, k: int) -> None:
    if k < 0 or k >= len(matrix):
        raise ValueError(f"stage {k} is outside the accuracy matrix ({len(matrix)} stages)")
    for j in range(k + 1):
        if matrix[k][j] is None:
            raise ValueError(f"accuracy matrix has no entry for stage {k} on the test set of stage {j}")


def average_accuracy(matrix: Matrix, k: int | None = None) -> float:
    """Mean accuracy (points) over the test sets of stages 0..k after training stage k (default: the last)."""
    k = len(matrix) - 1 if k is None else k
    _check(matrix, k)
    return 100.0 * sum(matrix[k][j] for j in range(k + 1)) / (k + 1)  # type: ignore[misc]


def forgetting_per_stage(matrix: Matrix, k: int | None = None) -> list[float]:
    """Forgetting (points) of every stage j < k after stage k: its best earlier accuracy minus now."""
    k = len(matrix) - 1 if k is None else k
    _check(matrix, k)
    return [100.0 * (max(matrix[l][j] for l in range(j, k)) - matrix[k][j]) for j in range(k)]  # type: ignore[misc]


def average_forgetting(matrix: Matrix, k: int | None = None) -> float | None:
    """Mean forgetting (points) over stages 0..k-1; None after the first stage (nothing to forget)."""
    f = forgetting_per_stage(matrix, k)
    return sum(f) / len(f) if f else None


def backward_transfer(matrix: Matrix, k: int | None = None) -> float | None:
    """Mean of R[k][j] - R[j][j] over j < k, in points; None after the first stage."""
    k = len(matrix) - 1 if k is None else k
    _check(matrix, k)
    if k == 0:
        return None
    return 100.0 * sum(matrix[k][j] - matrix[j][j] for j in range(k)) / k  # type: ignore[operator]


def summarize(matrix: Matrix) -> dict:
    """All scores after the last stage, plus average accuracy after every stage (for the curve)."""
    k = len(matrix) - 1
    return {"stages": k + 1,
            "average_accuracy": average_accuracy(matrix, k),
            "average_accuracy_per_stage": [average_accuracy(matrix, i) for i in range(k + 1)],
            "average_forgetting": average_forgetting(matrix, k),
            "forgetting_per_stage": forgetting_per_stage(matrix, k),
            "backward_transfer": backward_transfer(matrix, k)}


def gate(matrix: Matrix, max_forgetting: float | None, stage_names: Sequence[str]) -> dict:
    """`continual/gate.json`: per earlier stage, accuracy in the previous run vs now; `promotable`.

    A stage is blocked when it dropped by more than `max_forgetting` points relative to the run
    this one continues. Without a threshold every run is promotable (the drops are still listed).
    """
    k = len(matrix) - 1
    _check(matrix, k)
    drops = []
    for j in range(k):
        before, after = matrix[k - 1][j], matrix[k][j]
        drop = 100.0 * (before - after)  # type: ignore[operator]
        drops.append({"stage": j, "name": stage_names[j], "accuracy_before": 100.0 * before,  # type: ignore[operator]
                      "accuracy_after": 100.0 * after, "drop_points": round(drop, 4),  # type: ignore[operator]
                      "blocked": max_forgetting is not None and drop > max_forgetting})
    blocked = [d for d in drops if d["blocked"]]
    return {"promotable": not blocked, "max_forgetting_points": max_forgetting, "stage": k, "drops": drops,
            "reason": ("no --max-forgetting gate was set" if max_forgetting is None else
                       "no earlier stage dropped by more than the gate" if not blocked else
                       "; ".join(f"stage {d['stage']} ({d['name']}) dropped {d['drop_points']:.2f} points "
                                 f"({d['accuracy_before']:.2f} -> {d['accuracy_after']:.2f} %) > {max_forgetting:g}"
                                 for d in blocked))}
