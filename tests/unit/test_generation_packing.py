"""Packing and its masks (tasks/generation_encoding.py), on token ids alone; the equivalence with unpacked
losses on a real model is tests/integration/test_generation_encoding.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from domaintune.tasks.generation_encoding import IGNORE_INDEX, EncodedExample, block_causal_mask, collate_packed, pack


def _ex(n: int, start: int = 0) -> EncodedExample:
    ids = list(range(start, start + n))
    return EncodedExample(ids, [IGNORE_INDEX] * (n // 2) + ids[n // 2:], "d.jsonl", start)


def test_pack_first_fit_restarts_positions_and_masks_each_first_label():
    examples = [_ex(3, 100), _ex(6, 200), _ex(2, 300), _ex(4, 400), _ex(5, 500)]
    rows = pack(examples, 8)
    assert [r.members for r in rows] == [(1, 2), (4, 0), (3,)]  # longest first, first row with room
    for r in rows:
        assert len(r.input_ids) == sum(r.lengths) <= 8
        assert r.input_ids == [t for k in r.members for t in examples[k].input_ids]
        assert r.position_ids == [p for k in r.members for p in range(len(examples[k].input_ids))]
    row = rows[1]  # (4, 0): example 0 starts at offset 5
    assert row.labels[5] == IGNORE_INDEX and row.labels[6:] == examples[0].labels[1:]
    assert [r.members for r in pack(examples, 8, sort_by_length=False)] == [(0, 2), (1,), (3,), (4,)]
    with pytest.raises(ValueError, match=r"example 1 \(d.jsonl:200\) has 6 tokens, more than max_length 5"):
        pack(examples, 5)


def test_block_causal_mask_blocks_padding_and_window():
    allowed = block_causal_mask([[2, 3]], 6) == 0
    want = torch.tensor([[1, 0, 0, 0, 0, 0],
                         [1, 1, 0, 0, 0, 0],
                         [0, 0, 1, 0, 0, 0],
                         [0, 0, 1, 1, 0, 0],
                         [0, 0, 1, 1, 1, 0],
                         [0, 0, 0, 0, 0, 1]], dtype=torch.bool)  # the pad attends to itself only: no empty row
    assert allowed.shape == (1, 1, 6, 6) and torch.equal(allowed[0, 0], want)
    windowed = block_causal_mask([[4]], 4, sliding_window=2)[0, 0] == 0
    band = [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    assert torch.equal(windowed, torch.tensor(band, dtype=torch.bool))
    masked = block_causal_mask([[1, 1]], 2, dtype=torch.bfloat16)
    assert masked.dtype == torch.bfloat16 and masked[0, 0, 1, 0] == torch.finfo(torch.bfloat16).min


def test_collate_packed_masks_follow_the_model_config():
    rows = pack([_ex(3), _ex(2), _ex(4)], 5)
    llama = SimpleNamespace()  # no layer types, no sliding window
    batch = collate_packed(rows, 0, llama)
    assert batch["input_ids"].shape == (2, 5) and batch["attention_mask"].shape == (2, 1, 5, 5)
    assert [r.members for r in rows] == [(2,), (0, 1)]
    assert batch["labels"][0, 4] == IGNORE_INDEX  # padding carries no loss
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]  # padding restarts too
    gemma = SimpleNamespace(layer_types=["sliding_attention", "full_attention"], sliding_window=2)
    masks = collate_packed(rows, 0, gemma)["attention_mask"]
    assert set(masks) == {"full_attention", "sliding_attention"}
    assert torch.equal(masks["full_attention"], batch["attention_mask"])
    assert masks["sliding_attention"][0, 0, 1, 0] == 0 and masks["full_attention"][0, 0, 2, 0] == 0
    assert masks["sliding_attention"][0, 0, 2, 0] < 0  # 2 tokens back is outside a window of 2
    assert "attention_mask" not in collate_packed(rows, 0, None, mask="position_ids")
    with pytest.raises(ValueError, match="needs the model's config"):
        collate_packed(rows, 0, None)
    with pytest.raises(ValueError, match="layer types"):
        collate_packed(rows, 0, SimpleNamespace(layer_types=["sliding_attention", "linear_attention"]))
