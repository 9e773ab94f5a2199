"""`domaintune pretrain`: masked-LM domain adaptation that writes a base model `model:` accepts."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from domaintune.config import load_config
from domaintune.data import DataError
from domaintune.models import resolve_model
from domaintune.pretrain import (META_FILE, MaskingCollate, PretrainError, mlm_features, pretrain, read_pretrain_texts,
                                 word_offsets)

ZH = ["压缩机出口温度过高，已停机检查", "传送带跑偏需要调整张紧轮", "配电柜内有焦糊味，立即断电", "叉车电池充电异常",
      "冷却塔风机振动偏大", "车间地面有油污，注意防滑", "更换液压站滤芯", "焊接机器人报警代码E12",
      "空压机储气罐压力不足", "生产线急停按钮失灵"]


def write_config(tmp_path, text_file, model="m3e-small", **pre) -> str:
    lines = [f"model: {model}", f"output_dir: {tmp_path / 'unused'}", "pretrain:", f"  text_file: {text_file}"]
    lines += [f"  {k}: {v}" for k, v in pre.items()]
    lines += ["train:", "  max_steps: 3", "  batch_size: 8", "  lr: 1.0e-4", "  max_length: 32", "  log_every: 1", "  eval_every: 3"]
    p = tmp_path / "pretrain.yaml"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(p)


def test_read_texts_lines_and_columns(tmp_path):
    sec = lambda f, col="text": load_config(None, [f"pretrain.text_file={f}", f"pretrain.text_column={col}"]).pretrain  # noqa: E731
    (tmp_path / "a.txt").write_text("\ufeff第一行\n\n second line \n第一行\n", encoding="utf-8")
    assert read_pretrain_texts(sec(tmp_path / "a.txt")) == ["第一行", "second line"]  # blank and duplicate lines dropped
    with open(tmp_path / "b.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["id", "body"], [1, "泵房积水"], [2, "pump room flooded"]])
    assert read_pretrain_texts(sec(tmp_path / "b.csv", "body")) == ["泵房积水", "pump room flooded"]
    (tmp_path / "c.tsv").write_text("标题一\tnews_car\n标题二\tnews_tech\n", encoding="utf-8")
    assert read_pretrain_texts(sec(tmp_path / "c.tsv", 0)) == ["标题一", "标题二"]  # integer column: no header
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    assert read_pretrain_texts(sec(tmp_path / "d.jsonl")) == ["a", "b"]
    with pytest.raises(PretrainError, match="not found"):
        read_pretrain_texts(sec(tmp_path / "missing.txt"))
    with pytest.raises(PretrainError, match="pretrain.text_file is empty"):
        read_pretrain_texts(load_config(None).pretrain)
    with pytest.raises(DataError, match="body"):
        read_pretrain_texts(sec(tmp_path / "b.csv", "content"))
    (tmp_path / "e.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(PretrainError, match="no text found"):
        read_pretrain_texts(sec(tmp_path / "e.txt"))


def test_whole_word_masking_words_and_chinese_characters():
    assert word_offsets([None, 0, 1, 1, 2, None]) == [(0, 0), (0, 1), (2, 3), (3, 4), (5, 6), (0, 0)]
    tok = AutoTokenizer.from_pretrained(str(resolve_model("minilm-l6")))
    feats = mlm_features(tok, ["unbelievably worldly tokenization", "变压器过热"], 32, whole_word=True)
    collate = MaskingCollate(tok, 0.5, whole_word=True, seed=0)
    for _ in range(5):
        batch = collate(feats, tok.pad_token_id)
        for f, labels in zip(feats, batch["labels"]):
            pieces = tok.convert_ids_to_tokens(f["input_ids"])
            masked = (labels[: len(pieces)] != -100).tolist()
            for i, p in enumerate(pieces):
                if p.startswith("##"):  # a word's pieces are masked together
                    assert masked[i] == masked[i - 1], pieces
            assert not masked[0] and not masked[len(pieces) - 1]  # [CLS]/[SEP] never masked
    zh_words = mlm_features(tok, ["变压器过热"], 32, whole_word=True)[0]["offset_mapping"]
    assert len({s for s, _e in zh_words[1:-1]}) == 5 and all(b[0] - a[1] == 1 for a, b in zip(zh_words[1:-2], zh_words[2:-1]))


def test_pretrain_chinese_writes_a_base_model_that_fine_tunes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{t}（第{i}次）" for i in range(4) for t in ZH), encoding="utf-8")
    out = tmp_path / "dapt"
    m = pretrain(load_config(write_config(tmp_path, corpus, whole_word_mask="true", dev_fraction=0.2)), out)
    model_dir = out / "model"
    meta = json.loads((model_dir / META_FILE).read_text(encoding="utf-8"))
    assert meta["adapted_from"] == "m3e-small" and "research-only" in meta["source_licence"]
    assert meta["fresh_mlm_head"] and m["global_step"] == 3 and meta["held_out_texts"] == 8
    assert m["held_out_after"]["mlm_loss"] < m["held_out_before"]["mlm_loss"]  # the fresh head learns fast
    assert (model_dir / "model.safetensors").is_file() and not list(model_dir.glob("*.bin"))
    assert "research-only" in (model_dir / "README.md").read_text(encoding="utf-8")
    assert (out / "pretrain.json").is_file() and (out / "train_log.jsonl").is_file()

    # The encoder moved, the source pooler came along (fine-tuning must not start from a random pooler).
    src = AutoModel.from_pretrained(str(resolve_model("m3e-small")), weights_only=True)
    new = AutoModel.from_pretrained(str(model_dir))
    assert torch.equal(src.pooler.dense.weight, new.pooler.dense.weight)
    assert not torch.equal(src.encoder.layer[0].attention.self.query.weight, new.encoder.layer[0].attention.self.query.weight)
    assert "bert.pooler.dense.weight" in load_file(str(model_dir / "model.safetensors"))

    # `model: OUT/model` is a base model for a normal run
    from domaintune.run import train_run

    rows = [(t, "设备" if i % 2 else "安全") for i, t in enumerate(ZH * 2)]
    for name, part in (("train", rows[:12]), ("dev", rows[12:16]), ("test", rows[16:])):
        with open(tmp_path / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *part])
    cfg = load_config(None, [f"model={model_dir}", f"output_dir={tmp_path / 'run'}", "baseline=false",
                             f"data.train={tmp_path / 'train.csv'}", f"data.dev={tmp_path / 'dev.csv'}",
                             f"data.test={tmp_path / 'test.csv'}", "train.max_steps=2", "train.batch_size=8",
                             "train.max_length=32"])
    metrics = train_run(cfg)
    assert metrics["model_path"] == str(model_dir) and "accuracy" in metrics["test"]

    # an existing output is protected; --resume continues from the checkpoint
    with pytest.raises(FileExistsError, match="--overwrite"):
        pretrain(load_config(write_config(tmp_path, corpus)), out)
    m2 = pretrain(load_config(write_config(tmp_path, corpus, whole_word_mask="true", dev_fraction=0.2),
                              ["train.max_steps=4"]), out, resume=True)
    assert m2["global_step"] == 4
    rows = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


def test_cli_pretrain_errors(tmp_path):
    from typer.testing import CliRunner

    from domaintune.cli import app

    res = CliRunner().invoke(app, ["pretrain", write_config(tmp_path, tmp_path / "nope.txt"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not found" in res.output
