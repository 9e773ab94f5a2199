"""Length-grouped batches: the main CPU speed lever besides bf16.

Padding a batch to its longest member wastes work on every pad token. Sorting
texts of similar length into the same batch (within shuffled "mega-batches",
so the order stays random between epochs) removes most padding. The order is a
pure function of (seed, epoch), which is what lets a resumed run continue with
exactly the batches the interrupted run would have seen.
"""

from __future__ import annotations

import torch


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True,
                  mega: int = 50) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    span = batch_size * mega
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: -lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in perm]


def inference_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Longest-first sorted batches for evaluation/prediction; callers restore input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
