"""`domaintune export RUN --format gguf [--quantize f32|f16|q8_0]`: a causal-LM run as one GGUF file.

GGUF is what llama.cpp and Ollama load. Why we write it ourselves: the `gguf` package (gguf-py, from
llama.cpp) has the file writer, the HF->GGUF tensor-name map and the Q8_0 quantizer, but the HF->GGUF
*converter* (`convert_hf_to_gguf.py`) is a script in llama.cpp's repository, not part of any package
installable here. So this module mirrors what that script does for the two architectures our catalog
ships, and nothing more:

* llama (smollm2-135m): q_proj/k_proj rows are permuted (`LlamaModel.permute`) because GGUF llama
  uses the interleaved rope layout; a tied lm_head is not written (llama.cpp reuses token_embd).
* gemma3_text (gemma3-270m): every `*norm.weight` is stored as w + 1 (Gemma's RMSNorm multiplies by
  1 + w; llama.cpp by w); the tokenizer is written as llama.cpp's sentencepiece vocabulary ("llama"):
  tokens, scores and types, rebuilt from tokenizer.json since the prepared folder has no tokenizer.model.
* BPE tokenizers are written as "gpt2" with `tokenizer.ggml.pre` found the script's way: the sha256 of
  the ids of a fixed check text, looked up in a table (only the hashes we can verify here are listed).
* add_bos_token / add_eos_token say what the tokenizer actually does (SmolLM2 adds no BOS, Gemma does).

Compared with the catalog's own GGUFs (made by that script): the same tokens, token types, merges, special
ids and hyper-parameters (Gemma's sentencepiece scores differ by a constant after one piece, same order).

Tensor types follow the script too: 1-D tensors and norms stay F32, the rest take the chosen type
(a Q8_0 row that is not a multiple of 32 falls back to F16).

The file is then checked the way our own users would read it back: transformers loads it
(`from_pretrained(folder, gguf_file=...)`, which un-permutes and de-quantises) and must agree with the
source model on the arg-max next token of every probe prompt (English, Chinese, a chat turn), and its
tokenizer must give the same ids. Only then is it moved to `RUN/export/model-<quant>.gguf`, with the
record in `RUN/export/gguf.json`; a failed check leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from domaintune.export.onnx_export import ExportError

log = logging.getLogger("domaintune")

QUANTIZATIONS = ("f32", "f16", "q8_0")
#: HF model_type -> GGUF architecture name (gguf.MODEL_ARCH member name).
SUPPORTED = {"llama": "LLAMA", "gemma3_text": "GEMMA3"}
RECORD = "gguf.json"

# convert_hf_to_gguf.py's `get_vocab_base_pre`: the ids of this text identify a BPE pre-tokenizer.
_CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f "
           "(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 "
           "3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785"
           "\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
           "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
           "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll "
           "make it, 'D you like some tea? We'Ve a'lL")
#: sha256 of str(tokenizer.encode(_CHKTXT)) -> tokenizer.ggml.pre, from convert_hf_to_gguf.py (verified here).
_BPE_PRE = {"855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm"}

#: Prompts with a clear next token on the catalog LMs: a near tie (top-2 logits within ~0.05, as for
#: "def fibonacci(n):\n    " on smollm2) can flip under Q8_0 rounding without anything being wrong.
PROBES = ("The capital of France is", "def add(a, b):\n    return", "The opposite of hot is",
          "上海是中国最大的城", "一二三四五六七八九")
_CHAT_PROBE = [{"role": "user", "content": "Hello!"}]


class GGUFExportError(ExportError):
    """The run cannot be written as GGUF (not a supported causal LM) or the written file failed its check."""


def export_gguf(run_dir: str | Path, quantize: str = "q8_0", out: str | Path | None = None) -> dict:
    """Write RUN/export/model-<quantize>.gguf (or into folder `out`), check it by reading it back; -> the record."""
    if quantize not in QUANTIZATIONS:
        raise GGUFExportError(f"--quantize {quantize!r} is not a GGUF type we write; use one of: "
                              f"{', '.join(QUANTIZATIONS)}")
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    model, config, tok_dir, source = _load_source(run_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    out_dir = Path(out) if out is not None else run_dir / "export"
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gguf-", dir=out_dir))
    name = f"model-{quantize}.gguf"
    try:
        n_tensors = _write(work / name, model, config, tokenizer, tok_dir, quantize, run_dir.name)
        check = _check(work, name, model, tokenizer)
        if not check["passed"]:
            bad = [p for p in check["probes"] if not (p["argmax_match"] and p["tokens_match"])]
            raise GGUFExportError(
                f"{run_dir}: the {quantize} GGUF, read back with transformers, disagrees with the source model on "
                f"{len(bad)} of {len(check['probes'])} probe prompts (first: {bad[0]['prompt']!r}: next token "
                f"{bad[0]['source_token']!r} vs {bad[0]['gguf_token']!r}, source top-2 margin "
                f"{bad[0]['source_margin']}, tokens match {bad[0]['tokens_match']}); "
                f"nothing was written. Try --quantize f16 or f32; if those fail too, report it with this run.")
        final = out_dir / name
        with open(work / name, "rb") as f:
            os.fsync(f.fileno())  # on disk before it takes the final name
        os.replace(work / name, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    shutil.rmtree(work, ignore_errors=True)
    from domaintune.training.checkpoint import atomic_write_json

    record = {"file": name, "path": str(final), "bytes": final.stat().st_size, "sha256": _sha256(final),
              "quantization": quantize, "architecture": SUPPORTED[config.model_type].lower(),
              "model_type": config.model_type, "tensors": n_tensors, "source": source, "check": check,
              "seconds": round(time.perf_counter() - t0, 1),
              "use": f"llama-cli -m {final}  |  Ollama Modelfile: FROM ./{name}"}
    atomic_write_json(out_dir / RECORD, record)
    log.info("wrote %s (%.1f MB); read back: arg-max %d/%d, max |logit diff| %.4f", final, record["bytes"] / 1e6,
             sum(p["argmax_match"] for p in check["probes"]), len(check["probes"]), check["max_abs_diff"])
    return record


def _load_source(run_dir: Path):
    """(model in fp32 eval mode, its config, tokenizer folder, description); LoRA adapters merged in memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from domaintune.model_io import refuse_pickled_weights
    from domaintune.models import adapter_info, resolve_adapter_base

    model_dir = run_dir / "model" if (run_dir / "model").is_dir() else run_dir
    is_adapter = (model_dir / "adapter_config.json").is_file()
    if not is_adapter and not (model_dir / "config.json").is_file():
        raise GGUFExportError(f"{run_dir}: no model to export (expected {run_dir / 'model'} with config.json, or "
                              f"a LoRA adapter's adapter_config.json); pass a finished run directory")
    base_dir = resolve_adapter_base(adapter_info(model_dir), model_dir) if is_adapter else model_dir
    config = AutoConfig.from_pretrained(str(base_dir))
    if config.model_type not in SUPPORTED:
        raise GGUFExportError(f"{run_dir}: model type {config.model_type!r} cannot be exported as GGUF; supported "
                              f"causal LMs: {', '.join(SUPPORTED)} (e.g. smollm2-135m, gemma3-270m). Encoder runs "
                              f"export with --format onnx.")
    refuse_pickled_weights(base_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, use_safetensors=True)
    source = f"{model_dir}"
    if is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(model_dir)).merge_and_unload()
        source = f"LoRA adapter {model_dir} merged into {base_dir}"
    tok_dir = model_dir if (model_dir / "tokenizer.json").is_file() else base_dir
    return model.eval(), config, tok_dir, source


def _rope(config, layer_type: str = "full_attention") -> dict:
    """rope_theta / rope_type / factor from a transformers 5 config (flat or per layer type) or an older one."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    params.setdefault("rope_theta", getattr(config, "rope_theta", None))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def _write(path: Path, model, config, tokenizer, tok_dir: Path, quantize: str, run_name: str) -> int:
    """Write the GGUF (metadata, vocabulary, tensors) to `path`; -> number of tensors."""
    import gguf

    arch = gguf.MODEL_ARCH[SUPPORTED[config.model_type]]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quantize]
    writer_log = logging.getLogger("gguf.gguf_writer")  # its INFO lines name our temporary file
    level = writer_log.level
    writer_log.setLevel(logging.WARNING)
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    try:
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(run_name)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _hparams(w, arch, config, ftype)
        _vocab(w, arch, config, tokenizer, tok_dir)
        n = _tensors(w, arch, config, model, quantize)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
        writer_log.setLevel(level)
    return n


def _hparams(w, arch, config, ftype) -> None:
    """The hyper-parameters llama.cpp reads, as convert_hf_to_gguf.py writes them for this architecture."""
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = _rope(config)
    if rope["rope_type"] not in ("default", "linear"):
        raise GGUFExportError(f"rope scaling {rope['rope_type']!r} is not supported by this GGUF writer "
                              f"(only default and linear); use llama.cpp's convert_hf_to_gguf.py for this model")
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_file_type(ftype)
    if rope["rope_type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    if arch == gguf.MODEL_ARCH.LLAMA:
        w.add_vocab_size(config.vocab_size)
        w.add_rope_dimension_count(head_dim)
        return
    # gemma3: llama.cpp fixes the sliding-window layers (every 6th is global) and their rope base (10000).
    pattern = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(config.num_hidden_layers)]
    local_theta = _rope(config, "sliding_attention").get("rope_theta")
    if getattr(config, "layer_types", pattern) != pattern or local_theta not in (None, 10000.0):
        raise GGUFExportError("this gemma3 model's sliding-window layout or local rope base differs from the one "
                              "llama.cpp assumes (every 6th layer global, local rope base 10000); not exportable")
    if getattr(config, "attn_logit_softcapping", None):
        raise GGUFExportError("gemma3 with attn_logit_softcapping is not supported by llama.cpp")
    if getattr(config, "final_logit_softcapping", None):
        w.add_final_logit_softcapping(config.final_logit_softcapping)
    w.add_sliding_window(config.sliding_window)


def _looks_special(token: str) -> bool:
    """convert_hf_to_gguf.py's `does_token_look_special`: added tokens some models forget to mark special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _vocab(w, arch, config, tokenizer, tok_dir: Path) -> None:
    """tokens, types (and scores or merges), special ids, add_bos/eos and the chat template."""
    import gguf

    T = gguf.TokenType
    n_vocab = config.vocab_size
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(reverse) >= n_vocab:
        raise GGUFExportError(f"{tok_dir}: the tokenizer has id {max(reverse)} but the model's vocab_size is "
                              f"{n_vocab}; resize the model's embeddings to the tokenizer before exporting")
    added, decoder = tokenizer.get_added_vocab(), tokenizer.added_tokens_decoder
    spm = arch == gguf.MODEL_ARCH.GEMMA3
    tokens, types, scores, n_normal = [], [], [], 0
    for i in range(n_vocab):
        tok = reverse.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]"), types.append(T.UNUSED), scores.append(-1000.0)
            continue
        if tok in added:
            if not decoder[i].normalized:  # llama.cpp expects added tokens pre-normalised
                tok = tokenizer.decode(tokenizer.encode(tok, add_special_tokens=False))
            if decoder[i].special or _looks_special(tok):
                types.append(T.CONTROL)
            else:
                tok = tok.replace("\u2581", " ")  # user-defined spaces are stored as spaces (Gemma)
                types.append(T.USER_DEFINED)
            scores.append(-1000.0)
        elif spm and len(tok) > 1 and not tok.strip("\u2581"):  # runs of spaces: user-defined in Gemma's SPM model
            tok = tok.replace("\u2581", " ")
            types.append(T.USER_DEFINED), scores.append(-1000.0)
        elif spm and re.fullmatch(r"<0x[0-9A-F]{2}>", tok):
            types.append(T.BYTE), scores.append(0.0)
        else:
            # sentencepiece BPE merges the highest-scoring pair first; the vocabulary is in merge order
            types.append(T.NORMAL), scores.append(-float(n_normal))
            n_normal += 1
        tokens.append(tok)
    if spm:
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_scores(scores)
    else:
        chk = hashlib.sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest()
        if chk not in _BPE_PRE:
            raise GGUFExportError(f"{tok_dir}: BPE pre-tokenizer not recognised (check hash {chk}); llama.cpp needs "
                                  f"its name in tokenizer.ggml.pre. Known: {', '.join(sorted(_BPE_PRE.values()))}; "
                                  f"convert this model with llama.cpp's convert_hf_to_gguf.py instead")
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(_BPE_PRE[chk])
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(tok_dir, load_merges=not spm, n_vocab=n_vocab)
    # Whether the tokenizer adds BOS/EOS, from what it does rather than from config flags it may not carry.
    ids = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id
    if not special.chat_template and getattr(tokenizer, "chat_template", None):
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(w, quiet=True)
    w.add_add_space_prefix(False)


def _rope_permute(weight, heads: int):
    """convert_hf_to_gguf.py `LlamaModel.permute`: HF's rotate-half rope rows -> GGUF llama's interleaved pairs."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _tensors(w, arch, config, model, quantize: str) -> int:
    """Every weight under its GGUF name, in the chosen type (norms and 1-D tensors F32)."""
    import gguf
    import torch

    Q = gguf.GGMLQuantizationType
    want = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}[quantize]
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    count = 0
    for name, tensor in model.state_dict().items():
        if name.endswith(".rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue  # recomputed / shared with token_embd by llama.cpp
        data = tensor.detach().to(torch.float32)
        if arch == gguf.MODEL_ARCH.LLAMA and re.search(r"\.[qk]_proj\.(weight|bias)$", name):
            data = _rope_permute(data, n_head if ".q_proj." in name else n_kv)
        if arch == gguf.MODEL_ARCH.GEMMA3 and name.endswith("norm.weight"):
            data = data + 1.0  # Gemma3RMSNorm scales by (1 + w)
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise GGUFExportError(f"tensor {name!r} has no GGUF name for {gguf.MODEL_ARCH_NAMES[arch]}; "
                                  f"this model has parts llama.cpp's {gguf.MODEL_ARCH_NAMES[arch]} does not")
        array = data.contiguous().numpy()
        qtype = Q.F32 if array.ndim <= 1 or new.endswith("_norm.weight") else want
        try:
            packed = gguf.quants.quantize(array, qtype)
        except gguf.QuantError:  # e.g. a row length that is not a multiple of Q8_0's block of 32
            qtype = Q.F16
            packed = gguf.quants.quantize(array, qtype)
        w.add_tensor(new, packed, raw_dtype=qtype)
        count += 1
    return count


def _probes(tokenizer) -> list[tuple[str, bool]]:
    """(text, add_special_tokens): the fixed prompts plus one chat turn through the model's template."""
    probes = [(p, True) for p in PROBES]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(_CHAT_PROBE, tokenize=False, add_generation_prompt=True)
        probes.append((text, False))  # the template writes its own special tokens
    else:
        probes.append(("Question: What is the capital of France?\nAnswer:", True))
    return probes


#: Logit gap under which the source's top two next tokens count as tied (seen: 0.0019 on Gemma 3, q8_0).
TIE_MARGIN = 0.05


def _check(folder: Path, name: str, model, tokenizer) -> dict:
    """Read the GGUF back with transformers; compare next-token logits and token ids with the source."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g_tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    g_model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32).eval()
    rows = []
    with torch.inference_mode():
        for text, add_special in _probes(tokenizer):
            ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
            g_ids = g_tok(text, add_special_tokens=add_special)["input_ids"]
            x = torch.tensor([ids])
            a = model(input_ids=x, logits_to_keep=1).logits[0, -1]
            b = g_model(input_ids=x, logits_to_keep=1).logits[0, -1]
            ia, ib = int(a.argmax()), int(b.argmax())
            top2, top2_ids = a.topk(2)
            # a source whose two best tokens are within TIE_MARGIN is a tie: 8-bit rounding may pick either
            tie = float(top2[0] - top2[1]) < TIE_MARGIN and ib == int(top2_ids[1])
            rows.append({"prompt": text, "tokens_match": list(ids) == list(g_ids), "argmax_match": ia == ib or tie,
                         "tie": tie,
                         "max_abs_diff": round(float((a - b).abs().max()), 5),
                         "source_margin": round(float(top2[0] - top2[1]), 4),  # how near a tie the source is
                         "source_token": tokenizer.decode([ia]), "gguf_token": tokenizer.decode([ib])})
    del g_model
    return {"reader": "transformers (from_pretrained gguf_file=)", "probes": rows,
            "argmax_agreement": sum(r["argmax_match"] for r in rows) / len(rows),
            "tokens_agreement": sum(r["tokens_match"] for r in rows) / len(rows),
            "max_abs_diff": max(r["max_abs_diff"] for r in rows),
            "passed": all(r["argmax_match"] and r["tokens_match"] for r in rows)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
