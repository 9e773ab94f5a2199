"""Named-entity recognition: a token-classification head, entity-level strict F1, character-offset predictions.

Words, not sub-tokens, are the unit: each word is tokenised separately
(`is_split_into_words=True`, aligned with `word_ids()`), only its first
sub-token carries a label (the rest are -100 in the loss), and predictions are
read back per word, so a wordpiece can never become an entity of its own.
Character-level Chinese files keep every character a word, even inside a digit
run that the tokenizer would otherwise merge into one wordpiece.

Sentences longer than `max_length` are cut into overlapping windows at word
boundaries (half a window of overlap) for training and scoring alike; each
word's prediction is taken from the window where it sits most centrally, so
an entity on a cut is still seen whole with context on both sides.

The model is a plain `AutoModelForTokenClassification` whose `id2label` holds
the internal tags (BIO, or BIOES for BIOES/BMES files); `task.json` keeps the
user's scheme, entity types and word-splitting mode for prediction. Decoding
is a Viterbi pass restricted to valid tag transitions, used for scores and
predictions alike, so the entities users get are the ones that were scored.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch
from transformers import AutoModelForTokenClassification

from domaintune.data.ner_readers import NerSentence, is_cjk, read_ner, sentence_from_text, sentence_from_words
from domaintune.data.readers import Example, Problem
from domaintune.evaluation.markdown import md_cell
from domaintune.tasks.base import EvalContext, Task
from domaintune.tasks.classification import pad_batch, sequence_model_kwargs
from domaintune.tasks.ner_schemes import (convert, from_spans, internal_scheme, label_set, seqeval_scheme, to_spans,
                                          transitions, viterbi)
from domaintune.training.loop import predict_logits

log = logging.getLogger("domaintune")

IGNORE = -100
#: Frozen-encoder baseline: at most this many training words for the logistic regression.
BASELINE_MAX_WORDS = 40000


def entity_metrics(gold: list[list[str]], pred: list[list[str]], scheme: str, types: Sequence[str]) -> dict:
    """Entity-level strict precision/recall/F1 (seqeval) overall and per type, plus word-level tag accuracy."""
    from seqeval.metrics import classification_report

    words = sum(len(g) for g in gold)
    correct = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    n_gold = sum(len(to_spans(g, scheme)) for g in gold)
    n_pred = sum(len(to_spans(p, scheme)) for p in pred)
    out: dict[str, Any] = {"f1": 0.0, "precision": 0.0, "recall": 0.0,
                           "token_accuracy": correct / words if words else 0.0,
                           "n": len(gold), "entities": n_gold, "predicted_entities": n_pred}
    per_class = {t: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for t in types}
    if n_gold or n_pred:
        rep = classification_report(gold, pred, mode="strict", scheme=seqeval_scheme(scheme), output_dict=True,
                                    zero_division=0)
        micro = rep["micro avg"]
        out.update(precision=float(micro["precision"]), recall=float(micro["recall"]), f1=float(micro["f1-score"]))
        for t, m in rep.items():
            if t.endswith(" avg"):
                continue
            per_class[t] = {"precision": float(m["precision"]), "recall": float(m["recall"]),
                            "f1": float(m["f1-score"]), "support": int(m["support"])}
    out["per_class"] = per_class
    return out


class _HiddenStates(torch.nn.Module):
    """Makes a bare encoder look like a head model (`.logits` = last hidden states) for `predict_logits`."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, **batch):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.encoder(**batch).last_hidden_state)


class NerTask(Task):
    name = "ner"
    auto_class = AutoModelForTokenClassification
    default_metric = "f1"
    headline = ("f1", "precision", "recall", "token_accuracy")
    supports_probe_init = False
    pair_input = False  # tags one text; as_example refuses (text, text_pair)
    output_kind = "tags"
    output_activation = "softmax"  # per token: an ensemble averages each token's tag probabilities
    explain_refusal = ("per-token explanations of NER are not supported: an NER prediction is already per token; "
                       "use the tagged spans (`entities`, with start/end offsets) that `domaintune predict` returns")
    peft_task_type = "TOKEN_CLS"
    pooled_head_problem = None  # tags belong to tokens, not to a pooled text embedding
    k_shot_classes = None  # a sentence holds several entity types: there is no one class per example
    augmentable = False
    not_augmentable_reason = "its labels belong to token positions, which word and character edits move"
    prunable = True
    onnx_exportable = True
    labels_from_model_config = False
    supports_continual = False

    def __init__(self) -> None:
        super().__init__()
        self.scheme: str | None = None     # the user's files' scheme (configured, or detected on train)
        self.types: list[str] = []
        self.char_level = False            # trained on one-character words (Chinese): predict the same way

    @property
    def internal(self) -> str:
        return internal_scheme(self.scheme or "BIO")

    # ---- data
    def read(self, path, data_cfg, problems: list[Problem]) -> list[Example]:
        """The first file read (train) fixes the scheme under `tag_scheme: auto`; dev/test are checked against it."""
        scheme = data_cfg.tag_scheme if data_cfg.tag_scheme != "auto" else self.scheme
        examples, used = read_ner(path, data_cfg.format, data_cfg.delimiter, data_cfg.encoding,
                                  str(data_cfg.text_column), scheme, problems)
        if self.scheme is None and used is not None:
            self.scheme = used
        return examples

    def check(self, train, others, problems: list[Problem]) -> None:
        """No entities in train is an error; so is a dev/test type never seen in train.

        An unseen type cannot be predicted, so it would only lower the scores
        (recall 0 for that type) - and it is usually a spelling variant
        (`PERS` vs `PER`) that the user wants to fix, as classification does
        for unseen labels.
        """
        counts = Counter(t for ex in train for _s, _e, t in self.sentence(ex).spans)
        if train and not counts:
            problems.append(Problem(train[0].source, None, "the training data has no entities (every tag is O)",
                                    "check the tag column (the last one) and data.tag_scheme"))
            return
        for t, n in sorted(counts.items()):
            if n < 2:
                ex = next(e for e in train if any(s[2] == t for s in self.sentence(e).spans))
                problems.append(Problem(ex.source, ex.line, f"entity type {t!r} has only {n} training entity",
                                        "add more examples of it, or expect it never to be predicted", warning=True))
        for role, exs in others.items():
            unseen: dict[str, list[Example]] = {}
            for ex in exs:
                for _s, _e, t in self.sentence(ex).spans:
                    if t not in counts:
                        unseen.setdefault(t, []).append(ex)
            for t, rows in sorted(unseen.items()):
                shown = ", ".join(str(r.line) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
                problems.append(Problem(rows[0].source, rows[0].line,
                                        f"{role} entity type {t!r} never appears in train ({len(rows)} entities, lines {shown})",
                                        f"fix the type's spelling (train has {sorted(counts)[:10]}), add training "
                                        f"examples of it, or tag these words O"))

    def fit(self, train: list[Example]) -> None:
        sents = [self.sentence(ex) for ex in train]
        self.types = sorted({t for s in sents for _a, _b, t in s.spans})
        self.scheme = self.scheme or "BIO"
        self.labels = label_set(self.types, self.internal)
        words = [w for s in sents for w in s.words]
        single = sum(len(w) == 1 for w in words)
        cjk = sum(len(w) == 1 and is_cjk(w) for w in words)
        self.char_level = bool(words) and single >= 0.9 * len(words) and cjk >= 0.3 * len(words)

    def state(self) -> dict:
        return {"labels": list(self.labels), "types": list(self.types), "scheme": self.scheme,
                "internal_scheme": self.internal, "char_level": self.char_level}

    def load_state(self, state: dict) -> None:
        self.labels = list(state.get("labels", []))
        self.types = list(state.get("types", []))
        self.scheme = state.get("scheme") or "BIO"
        self.char_level = bool(state.get("char_level", False))

    def check_known(self, examples, problems):
        known = set(self.types)
        for ex in examples:
            for _s, _e, t in self.sentence(ex).spans:
                if t not in known:
                    problems.append(Problem(ex.source, ex.line, f"entity type {t!r} is not one the model was trained on",
                                            f"use one of {self.types[:10]}"))
                    break

    def sentence(self, ex: Example) -> NerSentence:
        """The words of an example: read from a file, or split from raw text with offsets."""
        if isinstance(ex.extra, NerSentence):
            return ex.extra
        return sentence_from_text(ex.text, self.char_level)

    def as_example(self, item: Any) -> Example:
        """A raw string, {"text": ...}, or pre-split {"tokens": [...]} (offsets then index the space-joined words)."""
        if isinstance(item, dict) and isinstance(item.get("tokens"), list):
            text, sent = sentence_from_words([str(t) for t in item["tokens"]])
            return Example(text, None, extra=sent)
        if isinstance(item, dict) and "text" in item:
            return Example(str(item["text"]), None)
        if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
            raise TypeError("NER predicts on single texts, not (text, text_pair) pairs")
        return super().as_example(item)

    # ---- model
    def build_model(self, model_dir, dropout=None):
        return AutoModelForTokenClassification.from_pretrained(
            str(model_dir), num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
            label2id={l: i for i, l in enumerate(self.labels)}, dtype=torch.float32,
            weights_only=True, **sequence_model_kwargs(dropout))

    def encode(self, tokenizer, examples, max_length, with_targets=True):
        """Window features: `input_ids`, word index / position / centrality of each first sub-token, `labels`."""
        sents = [self.sentence(ex) for ex in examples]
        words = [list(s.words) for s in sents]
        ids, word_ids = self._tokenize(tokenizer, words)
        probe = tokenizer([["a"]], is_split_into_words=True)
        wid = probe.word_ids(0)
        first, last = wid.index(0), len(wid) - 1 - wid[::-1].index(0)
        prefix, suffix = probe["input_ids"][0][:first], probe["input_ids"][0][last + 1:]
        room = max(1, max_length - len(prefix) - len(suffix))
        l2i = {l: i for i, l in enumerate(self.labels)}
        out = []
        for k, (sent, tok, wids) in enumerate(zip(sents, ids, word_ids)):
            targets = [l2i[t] for t in from_spans(sent.spans, len(sent.words), self.internal)] if with_targets else None
            starts = [p for p, w in enumerate(wids) if p == 0 or wids[p - 1] != w]  # first sub-token of each word
            for s, e in self._windows(len(tok), starts, room):
                lo, hi = bisect.bisect_left(starts, s), bisect.bisect_left(starts, e)
                f = {"input_ids": prefix + tok[s:e] + suffix, "ex": k,
                     "words": [wids[p] for p in starts[lo:hi]],
                     "pos": [len(prefix) + p - s for p in starts[lo:hi]],
                     "cent": [min(p - s, e - 1 - p) for p in starts[lo:hi]]}
                if targets is not None:
                    labels = [IGNORE] * len(f["input_ids"])
                    for w, p in zip(f["words"], f["pos"]):
                        labels[p] = targets[w]
                    f["labels"] = labels
                out.append(f)
        return out

    @staticmethod
    def _tokenize(tokenizer, words: list[list[str]]) -> tuple[list[list[int]], list[list[int]]]:
        """Sub-token ids and word ids without special tokens, with two repairs so every word keeps a
        meaningful position: a word the tokenizer drops (a zero-width space, a lone combining mark)
        becomes the unknown token, and a word that is nothing but unknown tokens is retried in lower
        case (m3e-small's vocabulary has no capital Latin letters, yet its tokenizer does not lowercase,
        so `CTO` or `MBA` inside Chinese text would otherwise all read as [UNK])."""
        ids: list[list[int]] = [[] for _ in words]
        wids: list[list[int]] = [[] for _ in words]
        unk = tokenizer.unk_token_id
        todo = [i for i, w in enumerate(words) if w]
        for attempt in range(2):
            if not todo:
                break
            enc = tokenizer([words[i] for i in todo], is_split_into_words=True, add_special_tokens=False,
                            return_attention_mask=False, return_token_type_ids=False)
            again = []
            for j, i in enumerate(todo):
                wi, tok = enc.word_ids(j), enc["input_ids"][j]
                if attempt == 0:
                    known = {w for w, t in zip(wi, tok) if t != unk}
                    seen = set(wi)
                    fixed = [w if n in known else w.lower() if n in seen else (tokenizer.unk_token or "?")
                             for n, w in enumerate(words[i])]
                    if fixed != words[i]:
                        words[i] = fixed
                        again.append(i)
                        continue
                ids[i], wids[i] = tok, list(wi)
            todo = again
        return ids, wids

    @staticmethod
    def _windows(n: int, starts: list[int], room: int) -> list[tuple[int, int]]:
        """Sub-token windows of at most `room`, cut at word starts, each overlapping the last by about half."""
        if n <= room:
            return [(0, n)]
        step = max(1, room // 2)
        out, s = [], 0
        while True:
            e = min(s + room, n)
            if e < n:
                b = bisect.bisect_right(starts, e) - 1  # the last word start at or before e
                if starts[b] > s:
                    e = starts[b]
            out.append((s, e))
            if e >= n:
                return out
            nxt = bisect.bisect_left(starts, min(s + step, e))
            if nxt >= len(starts) or starts[nxt] <= s:
                return out
            s = starts[nxt]

    def collate(self, features, pad_id):
        batch = pad_batch(features, pad_id)
        if "labels" in features[0]:
            width = batch["input_ids"].shape[1]
            labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
            for i, f in enumerate(features):
                labels[i, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.long)
            batch["labels"] = labels
        return batch

    # ---- scoring
    def word_scores(self, per_feature: list[np.ndarray], features: list[dict], n_words: list[int]) -> list[np.ndarray]:
        """Per-example (words x labels) log-probabilities, each word from the window where it is most central."""
        out = [np.zeros((n, len(self.labels)), dtype=np.float32) for n in n_words]
        best = [np.full(n, -1) for n in n_words]
        for scores, f in zip(per_feature, features):
            k = f["ex"]
            for w, p, c in zip(f["words"], f["pos"], f["cent"]):
                if c > best[k][w]:
                    best[k][w] = c
                    out[k][w] = scores[p]
        return out

    def _log_probs(self, model, features, ctx: EvalContext) -> list[np.ndarray]:
        logits = predict_logits(model, features, self.collate, ctx.pad_id, ctx.batch_size, ctx.bf16, stack=False)
        return [torch.log_softmax(l.float(), dim=-1).numpy() for l in logits]

    def decode(self, scores: list[np.ndarray]) -> list[list[str]]:
        allowed = transitions(self.labels, self.internal)
        return [[self.labels[i] for i in viterbi(s, allowed)] for s in scores]

    def gold(self, examples) -> list[list[str]]:
        return [from_spans(s.spans, len(s.words), self.internal) for s in map(self.sentence, examples)]

    def evaluate(self, model, examples, features, ctx):
        n_words = [len(self.sentence(ex).words) for ex in examples]
        pred = self.decode(self.word_scores(self._log_probs(model, features, ctx), features, n_words))
        return entity_metrics(self.gold(examples), pred, self.internal, self.types)

    def baselines(self, model_dir, splits, features, ctx, seed):
        """`majority` (every word O) and `frozen_linear`: logistic regression on the frozen encoder's
        first-sub-token states, decoded and scored exactly like the fine-tuned model."""
        from sklearn.linear_model import LogisticRegression
        from transformers import AutoModel

        gold = self.gold(splits.test)
        out = {"majority": entity_metrics(gold, [["O"] * len(g) for g in gold], self.internal, self.types)}
        out["majority"]["predicted_label"] = "O"
        encoder = _HiddenStates(AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, weights_only=True))
        train_f, test_f = features["train"], features["test"]
        hidden = predict_logits(encoder, train_f, self.collate, ctx.pad_id, ctx.batch_size, ctx.bf16, stack=False)
        x = np.concatenate([h[f["pos"]].numpy() for h, f in zip(hidden, train_f) if f["pos"]])
        y = np.array([f["labels"][p] for f in train_f for p in f["pos"]])
        if len(y) > BASELINE_MAX_WORDS:  # bound the cost on large sets; stated in the result
            keep = np.random.default_rng(seed).choice(len(y), BASELINE_MAX_WORDS, replace=False)
            x, y = x[keep], y[keep]
        clf = LogisticRegression(max_iter=300, C=1.0)
        clf.fit(x, y)
        full = np.full((1, len(self.labels)), -30.0, dtype=np.float32)
        per_feature = []
        for h in predict_logits(encoder, test_f, self.collate, ctx.pad_id, ctx.batch_size, ctx.bf16, stack=False):
            lp = np.repeat(full, len(h), axis=0)
            lp[:, clf.classes_] = clf.predict_log_proba(h.numpy())
            per_feature.append(lp)
        n_words = [len(self.sentence(ex).words) for ex in splits.test]
        out["frozen_linear"] = entity_metrics(gold, self.decode(self.word_scores(per_feature, test_f, n_words)),
                                              self.internal, self.types)
        out["frozen_linear"]["train_words"] = int(len(y))
        return out

    # ---- prediction
    def predict(self, model, examples, features, ctx, top_k=1):
        sents = [self.sentence(ex) for ex in examples]
        scores = self.word_scores(self._log_probs(model, features, ctx), features, [len(s.words) for s in sents])
        out = []
        for ex, sent, sc, tags in zip(examples, sents, scores, self.decode(scores)):
            probs = np.exp(sc[np.arange(len(tags)), [self.labels.index(t) for t in tags]]) if tags else np.zeros(0)
            ents = []
            for s, e, kind in to_spans(tags, self.internal):
                start, end = sent.offsets[s][0], sent.offsets[e - 1][1]
                ents.append({"type": kind, "text": ex.text[start:end], "start": start, "end": end,
                             "score": round(float(probs[s:e].mean()), 4)})
            out.append({"entities": ents, "words": list(sent.words),
                        "tags": convert(tags, self.internal, self.scheme or "BIO")})
        return out

    def output_fields(self, prediction: dict) -> dict:
        return {"entities": prediction.get("entities", [])}

    def format_prediction(self, prediction: dict) -> str:
        ents = prediction.get("entities", [])
        if not ents:
            return "no entities"
        return "\n  ".join(f"{e['type']}\t{e['text']}\t[{e['start']}:{e['end']}]\t{e['score']:.3f}" for e in ents)

    # ---- report
    def report_lines(self, metrics: dict) -> list[str]:
        test = metrics.get("test") or {}
        scheme = self.scheme or "BIO"
        trained = self.internal
        lines = ["## Entities", "",
                 f"- tag scheme of the files: {scheme}" + (f" (trained as {trained}; predictions are shown in {scheme})"
                                                          if trained != scheme else ""),
                 f"- {len(self.types)} entity types: {', '.join(map(md_cell, self.types))}",
                 "- scores are entity-level with strict matching (seqeval `mode='strict'`): an entity counts only "
                 "with its exact boundaries and type; token accuracy counts words and is high even for the "
                 "all-`O` majority row",
                 f"- words are {'single characters' if self.char_level else 'the tokens of the files'}; "
                 "only each word's first sub-token is labelled"]
        if test:
            lines.append(f"- test: {test.get('entities', 0)} gold entities, {test.get('predicted_entities', 0)} predicted")
        return lines + [""]
