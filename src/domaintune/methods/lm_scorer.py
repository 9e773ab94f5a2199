"""Zero-shot label scoring with a small causal LM, as a classifier module.

`LMScorer` turns a causal LM into a sequence classifier: for an input text it
builds the prompt `[bos] + context + template-before-{text} + text +
template-after-{text}` and scores every label (its description, or its name)
as the continuation of that prompt. `logits[i, l]` is the **mean** log-prob
per token of label l's tokens (`score: mean`, the default: long descriptions
are not penalised for their length; `score: sum` gives the total log-prob,
i.e. log P(label text | prompt)). Softmax over those scores gives the
probabilities the report and the Predictor show.

It consumes the LM tokenizer's ids of the *raw* text (`task.encode` with the
LM tokenizer, which `run/model/` holds), so the standard encode / collate /
`predict_logits` path, `evaluate` and the Predictor all work unchanged;
special tokens the tokenizer adds around the text (Gemma's `<bos>`) are
stripped and the template is built around the text ids here.

Cost: the prompt runs once per text (left-padded batch) with the KV cache
kept; the cache is then repeated for the labels and only the label tokens run
(each label's first token is read from the prompt's last position, so a
one-token label costs nothing extra). Labels are processed in chunks so at
most `max_rows` continuation rows are alive at once (bounded memory with 77+
labels). transformers has no "score these continuations" API; that
cache-reuse is the speed edge and the reason this module exists.

Saved as the LM in plain HF format (AutoModelForCausalLM) + its tokenizer +
`domaintune_head.json` (`kind: lm_scorer`, the template/label token ids and the
texts they came from), which `domaintune.model_io` loads with `load_lm_scorer`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_outputs import SequenceClassifierOutput

HEAD_FILE = "domaintune_head.json"


def _needs_space(before: str, label: str) -> bool:
    """A space between the prompt and the label only between two ASCII (word-spaced) characters."""
    return bool(before) and bool(label) and not before[-1].isspace() and before[-1].isascii() and label[0].isascii()


def build_prompt_parts(tokenizer, template: str, labels_text: list[str], examples: list[tuple[str, str]] = (),
                       max_example_tokens: int = 64) -> dict:
    """Token ids of the pieces around the text and of each label continuation (no special tokens inside).

    `template` must contain `{text}`; `examples` are (text, label text) pairs shown before the prompt,
    each formatted with the same template and followed by its label and a blank line.
    """
    if "{text}" not in template:
        raise ValueError(f"zeroshot.template {template!r} has no {{text}} placeholder; e.g. 'Text: {{text}}\\nCategory:'")
    before, after = template.split("{text}", 1)
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
    context: list[int] = []
    for text, label in examples:
        ids = enc(text)[:max_example_tokens]
        sep = " " if _needs_space(after, label) else ""
        context += enc(before) + ids + enc(after + sep + label + "\n\n")
    labels = [enc((" " if _needs_space(after, t) else "") + t) for t in labels_text]
    empty = [t for t, ids in zip(labels_text, labels) if not ids]
    if empty:
        raise ValueError(f"label text(s) {empty} tokenise to nothing; give them a description in labels.descriptions")
    bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []  # as the LM saw text in pre-training
    return {"prefix_ids": bos + context + enc(before), "suffix_ids": enc(after), "label_ids": labels}


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of plain text (Gemma does, SmolLM2 does not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


class LMScorer(nn.Module):
    """logits[i, l] = mean (or sum) over label l's tokens of log P(token | prompt(text_i), previous label tokens)."""

    def __init__(self, lm: nn.Module, prefix_ids: list[int], suffix_ids: list[int], label_ids: list[list[int]],
                 score: str = "mean", special_ids: list[int] = (), pad_id: int = 0, max_rows: int = 256,
                 bias: list[float] | None = None):
        super().__init__()
        if score not in ("mean", "sum"):
            raise ValueError(f"score must be 'mean' or 'sum', not {score!r}")
        self.lm = lm
        self.prefix_ids, self.suffix_ids = list(prefix_ids), list(suffix_ids)
        self.label_ids = [list(x) for x in label_ids]
        self.score, self.special_ids, self.pad_id, self.max_rows = score, set(special_ids), int(pad_id), int(max_rows)
        #: Contextual calibration: the scores of a content-free input, subtracted from every row.
        self.bias = [0.0] * len(self.label_ids) if bias is None else [float(b) for b in bias]
        for p in self.lm.parameters():
            p.requires_grad_(False)

    @property
    def config(self):
        return self.lm.config

    def _prompts(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt batch (ids, mask) around each row's text ids."""
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            text = [t for t, m in zip(ids, mask) if m and t not in self.special_ids]
            rows.append(self.prefix_ids + text + self.suffix_ids)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return ids, mask

    def forward(self, input_ids, attention_mask=None, labels=None, **_):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ids, mask = self._prompts(input_ids, attention_mask)
        batch, n_labels = ids.shape[0], len(self.label_ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # logits_to_keep=1: only the last position's vocabulary logits (Gemma's 262k-word head over every
        # prompt position would cost B x P x 262144 floats)
        out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)            # (B, vocab)
        scores = first[:, [t[0] for t in self.label_ids]].clone()               # (B, L): each label's first token
        lengths = torch.tensor([len(t) for t in self.label_ids], dtype=scores.dtype)
        longer = [l for l, t in enumerate(self.label_ids) if len(t) > 1]
        step = max(1, self.max_rows // batch)
        start = mask.sum(-1)                                                    # position of the first label token
        for c0 in range(0, len(longer), step):
            chunk = longer[c0:c0 + step]
            width = max(len(self.label_ids[l]) for l in chunk) - 1
            cont = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            target = torch.full((len(chunk), width), -1, dtype=torch.long)
            for j, l in enumerate(chunk):
                t = self.label_ids[l]
                cont[j, : len(t) - 1] = torch.tensor(t[:-1])
                target[j, : len(t) - 1] = torch.tensor(t[1:])
            cache = copy.deepcopy(out.past_key_values)
            cache.batch_repeat_interleave(len(chunk))                          # rows: text0-label0, text0-label1, ...
            rows_ids = cont.repeat(batch, 1)
            rows_mask = torch.cat([mask.repeat_interleave(len(chunk), 0), torch.ones_like(rows_ids)], dim=1)
            rows_pos = start.repeat_interleave(len(chunk)).unsqueeze(1) + torch.arange(width).unsqueeze(0)
            logits = self.lm(input_ids=rows_ids, attention_mask=rows_mask, position_ids=rows_pos,
                             past_key_values=cache, use_cache=True).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            tgt = target.repeat(batch, 1)
            picked = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (tgt >= 0)
            scores[:, chunk] += picked.sum(-1).view(batch, len(chunk))
        logits = scores / lengths if self.score == "mean" else scores
        logits = logits - torch.tensor(self.bias, dtype=logits.dtype)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @torch.inference_mode()
    def calibrate(self, content_free_ids: list[list[int]]) -> list[float]:
        """Contextual calibration (Zhao et al. 2021, "Calibrate before use"): set `bias` to the mean scores of
        content-free inputs (e.g. "N/A"), so a label the prompt favours a priori (shorter, more frequent
        tokens) loses that head start. One forward per content-free text; returns the bias."""
        self.bias = [0.0] * len(self.label_ids)
        rows = []
        for ids in content_free_ids:
            t = torch.tensor([ids], dtype=torch.long)
            rows.append(self(input_ids=t, attention_mask=torch.ones_like(t)).logits[0])
        self.bias = torch.stack(rows).mean(0).tolist()
        return self.bias

    def head_config(self, **extra) -> dict:
        return {"kind": "lm_scorer", "num_labels": len(self.label_ids), "prefix_ids": self.prefix_ids,
                "suffix_ids": self.suffix_ids, "label_ids": self.label_ids, "score": self.score,
                "special_ids": sorted(self.special_ids), "pad_id": self.pad_id, "max_rows": self.max_rows,
                "bias": self.bias,
                "note": "logits[l] = mean (score: mean) or sum (score: sum) log-prob of label l's tokens after "
                        "prefix_ids + text + suffix_ids, minus bias[l] (the scores of a content-free input, "
                        "contextual calibration; zeros when off); the LM loads with transformers.AutoModelForCausalLM",
                **extra}

    def save(self, tokenizer, out_dir: Path, **extra) -> None:
        """LM (HF format, safetensors) + its tokenizer + head config; call inside `atomic_dir`."""
        out_dir = Path(out_dir)
        self.lm.save_pretrained(str(out_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))
        (out_dir / HEAD_FILE).write_text(json.dumps(self.head_config(**extra), ensure_ascii=False, indent=2),
                                         encoding="utf-8")


def load_causal_lm(model_dir) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def lm_tokenizer(model_dir):
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_lm_scorer(task, model_dir) -> LMScorer:
    """`model_io` loader for `kind: lm_scorer`."""
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / HEAD_FILE).read_text(encoding="utf-8"))
    model = LMScorer(load_causal_lm(model_dir), cfg["prefix_ids"], cfg["suffix_ids"], cfg["label_ids"],
                     cfg.get("score", "mean"), cfg.get("special_ids", []), cfg.get("pad_id", 0),
                     cfg.get("max_rows", 256), cfg.get("bias"))
    if task is not None and getattr(task, "labels", None) and len(task.labels) != len(model.label_ids):
        raise ValueError(f"{model_dir}: scorer has {len(model.label_ids)} labels but the run has "
                         f"{len(task.labels)} (labels.json / task.json do not match the model)")
    return model.eval()
