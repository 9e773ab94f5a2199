"""Domain-adaptive pre-training (DAPT): continue masked-LM training on the user's unlabelled text.

Gururangan et al. (2020, "Don't Stop Pretraining") showed that a few more
masked-LM steps on in-domain text help small labelled sets most. `domaintune
pretrain CONFIG` does exactly that for the config's `model` and writes a base
model folder that a later config uses as `model: OUT/model`.

What is ours and what is borrowed:

* masking is transformers' `DataCollatorForLanguageModeling` (80/10/10, or
  whole-word masking). Its whole-word mode finds words from character offsets
  and would treat a run of Chinese characters as one "word" (no gap between
  them); we hand it offsets rebuilt from the tokenizer's own word split
  (`word_ids`), where BERT's pre-tokenizer makes each Chinese character a word.
* the optimisation is the shared `Trainer` (AdamW, warm-up/decay, gradient
  accumulation, clipping, kill -9-safe checkpoints, `--resume`, best
  checkpoint by held-out masked-LM loss, `train.*` options), so DAPT needs no
  loop of its own. Its safetensors checkpoints cannot hold tied tensors (the
  MLM decoder shares the word-embedding matrix), hence `_TiedSafeMLM`.
* the packaged encoders are sentence-embedding models shipped without an MLM
  head; transformers then initialises a fresh head (logged). Their pooler is
  not part of `*ForMaskedLM` either, so it is copied from the source into the
  saved folder: fine-tuning from the DAPT model must not start from a random
  pooler that the base model did not have.

Output directory OUT: `model/` (the base model: safetensors, tokenizer,
README.md, `domaintune_pretrain.json` naming the source model and its
licence), `checkpoints/`, `train_log.jsonl`, `pretrain.json` (metrics).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from domaintune.data import DataError, Problem, ReadOptions, read_examples
from domaintune.models import licence_of, resolve_model
from domaintune.training.checkpoint import atomic_dir, atomic_write_json, atomic_write_text

log = logging.getLogger("domaintune")

META_FILE = "domaintune_pretrain.json"
LINE_FORMATS = {".txt", ".text", ""}
#: Files of a sentence-transformers folder that describe pooling; copied so the adapted
#: encoder keeps the same sentence-embedding recipe (mean pooling) as its source.
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling")
MLM_METRICS = ("neg_mlm_loss", "mlm_accuracy")


class PretrainError(ValueError):
    """A pre-training input problem the user can fix; the message says what and where."""


# ---------------------------------------------------------------- unlabelled text
def read_pretrain_texts(section) -> list[str]:
    """Unlabelled texts: one per line (.txt), or the `pretrain.text_column` of a csv/tsv/jsonl/parquet.

    A string column is a header name; an integer column means the file has no
    header (e.g. `text_column: 0` for `title<TAB>label` rows). Blank lines and
    exact duplicates are dropped (a repeated boilerplate line must not dominate).
    """
    if not section.text_file:
        raise PretrainError("pretrain.text_file is empty: set it to a file of unlabelled domain text "
                            "(one text per line .txt, or a csv/tsv/jsonl column), e.g. --set pretrain.text_file=corpus.txt")
    path = Path(section.text_file)
    if not path.is_file():
        raise PretrainError(f"{path}: pretrain.text_file not found (give a path relative to the current directory)")
    if path.suffix.lower() in LINE_FORMATS:
        try:
            raw = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise PretrainError(f"{path}: not UTF-8 text ({e}); re-save it as UTF-8") from None
        texts = [line.strip() for line in raw.splitlines()]
    else:
        col = section.text_column
        problems: list[Problem] = []
        examples = read_examples(path, ReadOptions(text_column=col, label_column=None, has_header=isinstance(col, str)),
                                 problems)
        hard = [p for p in problems if not p.warning]
        if hard:
            raise DataError(hard)
        texts = [ex.text.strip() for ex in examples]
    seen: set[str] = set()
    out = [t for t in texts if t and not (t in seen or seen.add(t))]
    if not out:
        raise PretrainError(f"{path}: no text found (empty file or empty column {section.text_column!r})")
    if len(out) < len([t for t in texts if t]):
        log.info("pretrain: %d duplicate texts dropped", len([t for t in texts if t]) - len(out))
    return out


def mlm_features(tokenizer, texts: list[str], max_length: int, whole_word: bool) -> list[dict]:
    """Token ids (+ special-token mask, and word offsets for whole-word masking) per text."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False, return_special_tokens_mask=True,
                    return_attention_mask=False, return_token_type_ids=False)
    feats = [{"input_ids": ids, "special_tokens_mask": sm} for ids, sm in zip(enc["input_ids"], enc["special_tokens_mask"])]
    if whole_word:
        if not getattr(tokenizer, "is_fast", False):
            raise PretrainError("pretrain.whole_word_mask needs a fast tokenizer (tokenizer.json) to find word boundaries; "
                                "set pretrain.whole_word_mask: false")
        for i, f in enumerate(feats):
            f["offset_mapping"] = word_offsets(enc.word_ids(i))
    return feats


def word_offsets(word_ids: list[int | None]) -> list[tuple[int, int]]:
    """Synthetic character offsets that encode the tokenizer's word split for the collator.

    The collator starts a new word wherever a token's start differs from the
    previous token's end; real offsets of Chinese text are contiguous, so one
    title would become one word. Here a continuation sub-token starts where the
    previous one ended and a new word leaves a gap of one.
    """
    out, pos, prev = [], 0, None
    for w in word_ids:
        if w is None:
            out.append((0, 0))
            prev = None
            continue
        if prev is not None and w != prev:
            pos += 1
        out.append((pos, pos + 1))
        pos += 1
        prev = w
    return out


class MaskingCollate:
    """Pads a batch and masks it with transformers' collator (dynamic masking: new masks every epoch)."""

    def __init__(self, tokenizer, mlm_probability: float, whole_word: bool, seed: int | None = None):
        import warnings

        from transformers import DataCollatorForLanguageModeling

        with warnings.catch_warnings():  # whole-word masking always replaces by [MASK]; that is the intent
            warnings.simplefilter("ignore", UserWarning)
            self.collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability,
                                                            whole_word_mask=whole_word, seed=seed)
        self.whole_word = whole_word

    def __call__(self, features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        n, width = len(features), max(len(f["input_ids"]) for f in features)
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        special = torch.ones((n, width), dtype=torch.long)   # padding is never masked
        offsets = torch.zeros((n, width, 2), dtype=torch.long) if self.whole_word else None
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.tensor(f["input_ids"])
            mask[i, :k] = 1
            special[i, :k] = torch.tensor(f["special_tokens_mask"])
            if offsets is not None:
                offsets[i, :k] = torch.tensor(f["offset_mapping"])
        if self.collator.seed is not None and self.collator.generator is None:
            self.collator.create_rng()
        inputs, labels = self.collator.torch_mask_tokens(ids, special_tokens_mask=special, offset_mapping=offsets)
        return {"input_ids": inputs, "attention_mask": mask, "labels": labels}


# ---------------------------------------------------------------- model
class _TiedSafeMLM(nn.Module):
    """The MLM model as the Trainer trains it: logits only where tokens are masked, checkpoint-safe state_dict.

    Speed (our CPU edge, no library does it): `*ForMaskedLM` projects every
    position onto the vocabulary, yet only the ~15 % masked positions enter the
    loss; for a 4-layer 512-wide encoder with 21k words that projection is
    about as costly as the encoder itself. When the model's head is one module
    (BERT `cls`, RoBERTa `lm_head`) we run it on the masked positions only.

    Checkpoints: safetensors refuses tensors that share memory (decoder weight
    = word embeddings); transformers' `save_pretrained` handles ties itself, but
    the Trainer's checkpoints save `state_dict()` directly, so tied copies are
    left out here and re-tied on load.
    """

    def __init__(self, mlm: nn.Module):
        super().__init__()
        self.mlm = mlm
        prefix = getattr(mlm, "base_model_prefix", "")
        heads = [m for n, m in mlm.named_children() if n != prefix]
        self._head = heads[0] if prefix and hasattr(mlm, prefix) and len(heads) == 1 else None

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        from transformers.modeling_outputs import MaskedLMOutput

        if self._head is None or labels is None:
            return self.mlm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        hidden = getattr(self.mlm, self.mlm.base_model_prefix)(input_ids=input_ids, attention_mask=attention_mask,
                                                                **kwargs).last_hidden_state
        sel = labels != -100
        logits = self._head(hidden[sel])              # [n_masked, vocab]
        target = labels[sel]
        loss = nn.functional.cross_entropy(logits.float(), target) if target.numel() else logits.sum() * 0.0
        return MaskedLMOutput(loss=loss, logits=logits)

    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        seen: dict[tuple, str] = {}
        for k in list(sd):
            key = (sd[k].data_ptr(), tuple(sd[k].shape))
            if key in seen:
                del sd[k]
            else:
                seen[key] = k
        return sd

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        tied = set(super().state_dict()) - set(self.state_dict())
        missing = [k for k in result.missing_keys if k not in tied]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"checkpoint does not match the masked-LM model: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
        return result


def load_mlm(model_dir: Path, dropout: float | None = None):
    """The source encoder with a masked-LM head; returns (model, names of freshly initialised tensors)."""
    from transformers import AutoModelForMaskedLM

    from domaintune.tasks.classification import sequence_model_kwargs

    kwargs = sequence_model_kwargs(dropout)
    kwargs.pop("classifier_dropout", None)
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(str(model_dir), dtype=torch.float32, weights_only=True,
                                                           output_loading_info=True, **kwargs)
    except ValueError as e:
        raise PretrainError(f"{model_dir}: this architecture has no masked-LM variant in transformers ({e}); "
                            f"domain-adaptive pre-training needs an encoder such as BERT/RoBERTa") from None
    fresh = sorted(info.get("missing_keys") or [])
    return model, fresh


def _copy_pooler(source_dir: Path, mlm, out_dir: Path) -> list[str]:
    """Add the source's pooler weights to the saved checkpoint (the MLM model has no pooler)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    path = out_dir / "model.safetensors"
    prefix = getattr(mlm, "base_model_prefix", "")
    if not path.is_file() or not prefix:
        return []
    base = AutoModel.from_pretrained(str(source_dir), dtype=torch.float32, weights_only=True)
    pooler = getattr(base, "pooler", None)
    if pooler is None:
        return []
    state = load_file(str(path))
    added = {f"{prefix}.pooler.{k}": v.detach().clone().contiguous() for k, v in pooler.state_dict().items()}
    added = {k: v for k, v in added.items() if k not in state}
    if added:
        state.update(added)
        save_file(state, str(path), metadata={"format": "pt"})
    return sorted(added)


def source_licence(name_or_path: str) -> str:
    """The source model's licence: from the catalog, or from a DAPT folder's own metadata."""
    lic = licence_of(name_or_path)
    if lic:
        return lic
    meta = Path(name_or_path) / META_FILE
    if meta.is_file():
        return json.loads(meta.read_text(encoding="utf-8")).get("source_licence", "unknown")
    return "unknown: check the source model's card"


# ---------------------------------------------------------------- evaluation
@torch.inference_mode()
def evaluate_mlm(model: nn.Module, batches: list[dict]) -> dict:
    """Masked-token loss, perplexity and accuracy on fixed (seeded) held-out masks."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for batch in batches:
        labels = batch["labels"]
        target = labels[labels != -100]
        n = int(target.numel())
        if not n:
            continue
        logits = model(**batch).logits
        if logits.dim() == 3:  # a full-vocabulary model output: keep the masked positions
            logits = logits[labels != -100]
        total_loss += float(nn.functional.cross_entropy(logits.float(), target, reduction="sum"))
        correct += int((logits.argmax(-1) == target).sum())
        count += n
    loss = total_loss / max(count, 1)
    return {"mlm_loss": loss, "neg_mlm_loss": -loss, "perplexity": float(torch.exp(torch.tensor(min(loss, 50.0)))),
            "mlm_accuracy": correct / max(count, 1), "masked_tokens": count}


def _holdout(texts: list[str], fraction: float, cap: int, seed: int) -> tuple[list[str], list[str]]:
    import random

    k = min(cap, int(len(texts) * fraction)) if len(texts) >= 20 else 0
    if k <= 0:
        return texts, []
    idx = list(range(len(texts)))
    random.Random(seed).shuffle(idx)
    held = set(idx[:k])
    return [t for i, t in enumerate(texts) if i not in held], [texts[i] for i in sorted(held)]


# ---------------------------------------------------------------- entry point
def default_output_dir(cfg) -> Path:
    out = Path(cfg.output_dir)
    return out.with_name(out.name + "-dapt")


def pretrain(cfg, output_dir: str | Path | None = None, overwrite: bool = False, resume: bool = False) -> dict:
    """Continue masked-LM training of `cfg.model` on `cfg.pretrain.text_file`; return pretrain.json's content."""
    from transformers import AutoTokenizer

    from domaintune.methods.base import Method
    from domaintune.training.loop import Trainer

    t_total = time.perf_counter()
    section, tcfg = cfg.pretrain, cfg.train
    texts = read_pretrain_texts(section)
    model_dir = resolve_model(cfg.model)
    out = Path(output_dir) if output_dir else default_output_dir(cfg)
    if out.exists() and any(out.iterdir()) and not (overwrite or resume):
        raise FileExistsError(f"{out} already holds a pre-training output; pass --overwrite to replace it, "
                              f"--resume to continue it, or choose another -o OUT")
    if overwrite and not resume and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        (out / "train_log.jsonl").unlink(missing_ok=True)

    train_texts, dev_texts = _holdout(texts, section.dev_fraction, section.max_dev_texts, tcfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.mask_token is None:
        raise PretrainError(f"{model_dir}: the tokenizer has no mask token, so masked-LM training is impossible")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    feats = mlm_features(tokenizer, train_texts, tcfg.max_length, section.whole_word_mask)
    dev_feats = mlm_features(tokenizer, dev_texts, tcfg.max_length, section.whole_word_mask)

    torch.manual_seed(tcfg.seed)
    mlm, fresh = load_mlm(model_dir, tcfg.dropout)
    if fresh:
        log.warning("%s has no masked-LM head (a sentence-embedding encoder): a fresh head was initialised "
                    "(%d tensors: %s); its first steps are spent learning it", cfg.model, len(fresh), ", ".join(fresh[:4]))
    model = _TiedSafeMLM(mlm)
    # Held-out masks are drawn once with the seed, so every evaluation scores the same positions.
    eval_collate = MaskingCollate(tokenizer, section.mlm_probability, section.whole_word_mask, seed=tcfg.seed)
    dev_batches = [eval_collate(dev_feats[i:i + tcfg.eval_batch_size], pad_id)
                   for i in range(0, len(dev_feats), tcfg.eval_batch_size)]
    before = evaluate_mlm(model, dev_batches) if dev_batches else {}
    if before:
        log.info("held-out masked-LM before: loss %.4f, accuracy %.4f (%d texts)", before["mlm_loss"],
                 before["mlm_accuracy"], len(dev_texts))
    metric = tcfg.metric_for_best if tcfg.metric_for_best in MLM_METRICS else "neg_mlm_loss"
    train_cfg = tcfg.model_copy(update={"metric_for_best": metric})
    trainer = Trainer(model, Method(), MaskingCollate(tokenizer, section.mlm_probability, section.whole_word_mask),
                      pad_id, feats, evaluate=lambda m, bf16=False: evaluate_mlm(m, dev_batches), cfg=train_cfg,
                      run_dir=out, has_dev=bool(dev_batches))
    result = trainer.train(resume=resume)
    after = evaluate_mlm(model, dev_batches) if dev_batches else {}
    if after:
        log.info("held-out masked-LM after: loss %.4f, accuracy %.4f", after["mlm_loss"], after["mlm_accuracy"])

    licence = source_licence(cfg.model)
    meta = {"adapted_from": cfg.model, "source_path": str(model_dir), "source_licence": licence,
            "method": "masked-LM domain-adaptive pre-training (domaintune pretrain)",
            "text_file": str(section.text_file), "texts": len(train_texts), "held_out_texts": len(dev_texts),
            "mlm_probability": section.mlm_probability, "whole_word_mask": section.whole_word_mask,
            "global_step": result.global_step, "epochs_completed": round(result.epochs_completed, 3),
            "fresh_mlm_head": fresh, "held_out_before": before, "held_out_after": after}

    def write(tmp: Path) -> None:
        mlm.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        meta["pooler_copied_from_source"] = _copy_pooler(model_dir, mlm, tmp)
        for name in ST_FILES:
            src = model_dir / name
            if src.is_dir():
                shutil.copytree(src, tmp / name)
            elif src.is_file():
                shutil.copy2(src, tmp / name)
        if (model_dir / "README.md").is_file():
            shutil.copy2(model_dir / "README.md", tmp / "SOURCE_README.md")
        (tmp / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
        (tmp / "README.md").write_text(_model_card(meta), encoding="utf-8")

    atomic_dir(out / "model", write)
    metrics = {**meta, "output_dir": str(out), "model_dir": str(out / "model"),
               "train": {"seconds": round(result.seconds, 2), "samples_per_second": round(result.samples_per_second, 2),
                         "best_step": result.best_step, "stopped_early": result.stopped_early, "bf16": result.bf16,
                         "threads": result.threads, "total_seconds": round(time.perf_counter() - t_total, 2)},
               "history": result.history}
    atomic_write_json(out / "pretrain.json", metrics)
    log.info("adapted model written to %s; fine-tune it with `model: %s`", out / "model", out / "model")
    return metrics


def _model_card(meta: dict) -> str:
    before, after = meta.get("held_out_before") or {}, meta.get("held_out_after") or {}
    lines = [f"# Domain-adapted {meta['adapted_from']}", "",
             f"Continued masked-LM pre-training of `{meta['adapted_from']}` on {meta['texts']} unlabelled texts from "
             f"`{meta['text_file']}` ({meta['global_step']} optimizer steps, masking probability "
             f"{meta['mlm_probability']}, whole-word masking {'on' if meta['whole_word_mask'] else 'off'}), "
             "written by `domaintune pretrain`.", "",
             f"**Licence:** derived from the source model, whose licence applies: {meta['source_licence']}. "
             "The source model card is kept as SOURCE_README.md.", ""]
    if before and after:
        lines += [f"Held-out masked-LM loss {before['mlm_loss']:.4f} -> {after['mlm_loss']:.4f}, masked-token accuracy "
                  f"{100 * before['mlm_accuracy']:.2f} % -> {100 * after['mlm_accuracy']:.2f} % "
                  f"({meta['held_out_texts']} texts).", ""]
    if meta.get("fresh_mlm_head"):
        lines += ["The source had no masked-LM head; a fresh one was initialised and trained here.", ""]
    lines += ["Use it as a base model in a domaintune config: `model: path/to/this/folder`.", ""]
    return "\n".join(lines)
