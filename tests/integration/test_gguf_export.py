"""`export_gguf` on the real packaged SmolLM2 (a Llama causal LM): the Q8_0 file reads back with transformers
and predicts the same next token as the source on every probe (English, Chinese, a chat turn), its metadata has
what llama.cpp needs, and the check fails - leaving nothing behind - when the q/k rope permutation is left out
(the negative control). A non-causal-LM run gets a clear error naming the supported model types."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import pytest

from domaintune.export import gguf_export
from domaintune.export.gguf_export import GGUFExportError, export_gguf
from lm_support import smollm2_dir  # noqa: F401 - session fixture


def _run_dir(model_folder: Path, root: Path) -> Path:
    """A minimal finished run: model/ (links to the prepared model's files) and config.yaml."""
    run = root / "run"
    (run / "model").mkdir(parents=True)
    for f in model_folder.iterdir():
        (run / "model" / f.name).symlink_to(f)
    (run / "config.yaml").write_text(f"task: generation\nmodel: {model_folder}\n", encoding="utf-8")
    return run


def _field(reader: gguf.GGUFReader, key: str):
    f = reader.fields[key]
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        return [f.contents(i) for i in range(len(f.data))]
    return f.contents()


def test_q8_0_export_reads_back_with_the_same_next_tokens(smollm2_dir, tmp_path):  # noqa: F811
    run = _run_dir(smollm2_dir, tmp_path)
    rec = export_gguf(run, quantize="q8_0")

    path = run / "export" / "model-q8_0.gguf"
    assert sorted(p.name for p in (run / "export").iterdir()) == ["gguf.json", "model-q8_0.gguf"]  # no temp left
    assert rec["bytes"] == path.stat().st_size and rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads((run / "export" / "gguf.json").read_text(encoding="utf-8"))["sha256"] == rec["sha256"]
    assert rec["architecture"] == "llama" and rec["quantization"] == "q8_0"

    check = rec["check"]
    probes = check["probes"]
    assert len(probes) == 6 and any("中国" in p["prompt"] for p in probes) and "<|im_start|>" in probes[-1]["prompt"]
    assert check["passed"] and all(p["argmax_match"] and p["tokens_match"] for p in probes), probes
    assert 0 < check["max_abs_diff"] < 3.0  # Q8_0 rounding moves logits a little, never to a different model

    cfg = json.loads((smollm2_dir / "config.json").read_text(encoding="utf-8"))
    r = gguf.GGUFReader(path)
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    expected = {"llama.block_count": cfg["num_hidden_layers"], "llama.embedding_length": cfg["hidden_size"],
                "llama.context_length": cfg["max_position_embeddings"],
                "llama.feed_forward_length": cfg["intermediate_size"],
                "llama.attention.head_count": cfg["num_attention_heads"],
                "llama.attention.head_count_kv": cfg["num_key_value_heads"], "llama.vocab_size": cfg["vocab_size"],
                "llama.rope.dimension_count": cfg["hidden_size"] // cfg["num_attention_heads"]}
    assert {k: _field(r, k) for k in expected} == expected
    assert _field(r, "llama.rope.freq_base") == pytest.approx(cfg["rope_parameters"]["rope_theta"])
    assert _field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"])
    assert _field(r, "tokenizer.ggml.model") == "gpt2" and _field(r, "tokenizer.ggml.pre") == "smollm"
    tokens = _field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == cfg["vocab_size"] == len(_field(r, "tokenizer.ggml.token_type"))
    assert tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert len(_field(r, "tokenizer.ggml.merges")) > 40000
    assert (_field(r, "tokenizer.ggml.bos_token_id"), _field(r, "tokenizer.ggml.eos_token_id")) == (1, 2)
    assert _field(r, "tokenizer.ggml.add_bos_token") is False  # SmolLM2 adds no BOS (as llama.cpp's converter)
    assert "<|im_start|>" in _field(r, "tokenizer.chat_template")

    types = {t.name: t.tensor_type for t in r.tensors}
    assert "output.weight" not in types  # tied lm_head: llama.cpp reuses token_embd
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert len(types) == 2 + 9 * cfg["num_hidden_layers"]


def test_a_wrong_rope_layout_fails_the_check_and_leaves_nothing(smollm2_dir, tmp_path, monkeypatch):  # noqa: F811
    """Negative control: without LlamaModel.permute the file loads fine but predicts other tokens."""
    run = _run_dir(smollm2_dir, tmp_path)
    monkeypatch.setattr(gguf_export, "_rope_permute", lambda weight, heads: weight)
    with pytest.raises(GGUFExportError, match="disagrees with the source model"):
        export_gguf(run, quantize="f32")
    assert not (run / "export").exists()


def test_refuses_what_it_cannot_write(tmp_path):
    from domaintune.models import resolve_model

    run = _run_dir(resolve_model("minilm-l6"), tmp_path)
    with pytest.raises(GGUFExportError, match=r"model type 'bert'.*llama, gemma3_text"):
        export_gguf(run)
    with pytest.raises(GGUFExportError, match=r"'q4_0'.*f32, f16, q8_0"):
        export_gguf(run, quantize="q4_0")
    assert not (run / "export").exists()
