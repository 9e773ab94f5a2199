"""FAQ retrieval with a bi-encoder: embed user queries and FAQ questions into one space, return the nearest entries.

Data convention: each row is one (query, matching FAQ question) pair:
`data.text_column` holds the user query, `data.text_pair_column` the FAQ
question it should find. If the file also has the label column
(`data.label_column`, default `label`), it is read as a match flag and only
rows labelled `1` are kept, so paraphrase-pair files (AFQMC, LCQMC, Quora)
work as they are; any other label value is an error. Without that column every
row is a positive pair.

Model: mean-pooled, L2-normalised last hidden states of a plain `AutoModel`
(what sentence-transformers calls Pooling + Normalize), trained with in-batch
negatives: for a batch of n pairs the n x n cosine matrix times a scale of 20
goes through cross-entropy with the diagonal as targets (MultipleNegatives-
RankingLoss). In-batch entries that are the same query or the same FAQ question
as the row's own pair are masked rather than counted as negatives. The saved
`run/model` is a plain Hugging Face encoder folder plus sentence-transformers
module files, so `AutoModel` and `SentenceTransformer` both load it.

Evaluation searches held-out queries against the FAQ (`data.faq`) or, without
one, against every distinct FAQ question in train+dev+test, and reports
recall@1/5/10 and MRR (over the full ranking). A query's gold entries are the
FAQ entries whose question is the pair's text. Prediction searches the run's
index (`domaintune index RUN --faq FILE`, see `domaintune.retrieval_index`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel
from transformers.utils import ModelOutput

from domaintune.data.readers import Example, Problem, ReadOptions
from domaintune.evaluation.markdown import md_code
from domaintune.tasks.base import EvalContext, Task
from domaintune.tasks.classification import pad_batch, sequence_model_kwargs
from domaintune.training.loop import predict_logits

log = logging.getLogger("domaintune")

#: Cosine similarities lie in [-1, 1]; scaling by 20 makes the softmax over in-batch candidates sharp enough
#: to learn from (the sentence-transformers default for MultipleNegativesRankingLoss).
SCALE = 20.0
POSITIVE_LABELS = {"1", "1.0", "true", "yes"}
NEGATIVE_LABELS = {"0", "0.0", "false", "no"}


@dataclass
class BiEncoderOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # the query embeddings (normalised), so predict_logits can batch them


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class BiEncoder(torch.nn.Module):
    """An AutoModel encoder with mean pooling and an in-batch-negatives loss; `encoder` is what gets saved."""

    def __init__(self, encoder, scale: float = SCALE):
        super().__init__()
        self.encoder = encoder
        self.scale = scale

    @property
    def config(self):
        return self.encoder.config

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return F.normalize(mean_pool(hidden, attention_mask).float(), dim=-1)

    def forward(self, input_ids, attention_mask, token_type_ids=None, pos_input_ids=None, pos_attention_mask=None,
                pos_token_type_ids=None, query_group=None, pos_group=None) -> BiEncoderOutput:
        q = self.embed(input_ids, attention_mask, token_type_ids)
        if pos_input_ids is None:
            return BiEncoderOutput(logits=q)
        p = self.embed(pos_input_ids, pos_attention_mask, pos_token_type_ids)
        sim = self.scale * (q @ p.T)
        if query_group is not None and pos_group is not None:
            # Another row with the same query or the same FAQ question is a correct answer, not a negative.
            same = (query_group[:, None] == query_group[None, :]) | (pos_group[:, None] == pos_group[None, :])
            same.fill_diagonal_(False)
            sim = sim.masked_fill(same, float("-inf"))
        loss = F.cross_entropy(sim, torch.arange(len(q), device=sim.device))
        return BiEncoderOutput(loss=loss, logits=q)


def _norm(text: str | None) -> str:
    return (text or "").strip()


def retrieval_metrics(scores: np.ndarray, gold: list[list[int]]) -> dict:
    """recall@1/5/10 and MRR from a (queries x candidates) score matrix and each query's gold candidate indices.

    A query's rank is 1 + the number of candidates scoring strictly higher
    than its best gold entry; a query with no gold entry among the
    candidates counts as not found (rank infinity).
    """
    ranks = []
    for row, g in zip(scores, gold):
        ranks.append(1 + int((row > row[g].max()).sum()) if g else np.inf)
    r = np.asarray(ranks, dtype=np.float64)
    n = max(len(r), 1)
    return {"recall_at_1": float((r <= 1).sum() / n), "recall_at_5": float((r <= 5).sum() / n),
            "recall_at_10": float((r <= 10).sum() / n), "mrr": float((1.0 / r).sum() / n),
            "n": len(r), "not_in_candidates": int(np.isinf(r).sum()), "candidates": int(scores.shape[1]) if scores.ndim == 2 else 0}


class RetrievalTask(Task):
    name = "retrieval"
    auto_class = AutoModel
    default_metric = "mrr"
    headline = ("recall_at_1", "recall_at_5", "mrr")
    supports_probe_init = False
    #: Prediction input is the query alone: data.text_pair_column names the training positive, not an input column.
    pair_input = False
    output_kind = "ranking"  # FAQ entries, best first; `domaintune index` embeds the FAQ with embed_texts
    output_activation = None  # similarities between two embeddings, not a score per input
    explain_refusal = None
    peft_task_type = None  # a bi-encoder without a task head: no peft TaskType forwards its in-batch loss
    pooled_head_problem = None
    k_shot_classes = None
    augmentable = False
    not_augmentable_reason = "its training pairs are matched question/answer texts"
    prunable = False
    onnx_exportable = True
    labels_from_model_config = False
    supports_continual = False

    def __init__(self) -> None:
        super().__init__()
        self.faq: str | None = None            # data.faq: evaluation searches this knowledge base
        self.faq_options: ReadOptions | None = None
        self.run_dir: Path | None = None       # set by attach(); prediction searches run_dir/index
        self._index = None
        self._corpus: dict[str, None] = {}     # every FAQ question seen in train/dev/test (ordered set)
        self._faq_cache: tuple | None = None
        self._cand_cache: tuple | None = None

    # ---- data
    def read(self, path, data_cfg, problems: list[Problem]) -> list[Example]:
        from domaintune.data.readers import read_examples
        from domaintune.data.splits import options_from
        from domaintune.retrieval_index import file_columns, has_column

        self.faq = data_cfg.faq or self.faq
        if data_cfg.text_pair_column is None:
            problems.append(Problem("<config>", None, "task retrieval needs data.text_pair_column: the column with the "
                                    "FAQ question each query should find",
                                    "set data.text_pair_column (and data.text_column to the user query column)"))
            return []
        opts = options_from(data_cfg)
        columns = file_columns(path, opts)
        labelled = has_column(columns, opts.label_column)
        if not opts.has_header and not labelled and columns and len(columns) > 2:
            problems.append(Problem(str(path), None, f"rows have {len(columns)} fields but data.label_column "
                                    f"{opts.label_column!r} is not a column index, so every row is read as a matching pair",
                                    "if one column flags matches with 1/0, set data.label_column to its index", warning=True))
        examples = read_examples(path, opts if labelled else replace(opts, label_column=None), problems)
        if labelled:
            kept = []
            for ex in examples:
                value = (ex.label or "").strip().lower()
                if value in POSITIVE_LABELS:
                    kept.append(ex)
                elif value not in NEGATIVE_LABELS:
                    problems.append(Problem(ex.source, ex.line, f"label {ex.label!r} is not a match flag (1 or 0)",
                                            "for task retrieval the label column marks matching pairs with 1 (kept) or 0 "
                                            "(dropped); fix the value, or point data.label_column at no existing column"))
            if examples and kept:
                log.info("%s: %d of %d pairs are labelled 1 (matching) and kept", path, len(kept), len(examples))
            elif examples:
                problems.append(Problem(str(path), None, f"none of the {len(examples)} rows is labelled 1 (a matching pair)",
                                        "task retrieval learns from matching pairs: label them 1"))
            examples = kept
        for ex in examples:
            self._corpus[_norm(ex.text_pair)] = None
        return examples

    def check(self, train, others, problems: list[Problem]) -> None:
        if not self.faq:
            return
        try:
            known = {_norm(e.question) for e in self._faq_entries()}
        except Exception as e:  # DataError from the FAQ reader: surface its problems with the data's
            problems.extend(getattr(e, "problems", [Problem(str(self.faq), None, str(e))]))
            return
        self._missing(others, known, f"the FAQ ({self.faq})", problems)

    def check_known(self, examples, problems):
        """For `domaintune evaluate`: every gold FAQ question must be in the searched index."""
        index = self._load_index_if_any()
        if index is not None:
            self._missing({"evaluation": examples}, {_norm(e["question"]) for e in index.entries},
                          f"the run's FAQ index ({index.manifest.get('faq_file')})", problems)

    @staticmethod
    def _missing(splits: dict, known: set, where: str, problems: list[Problem]) -> None:
        for role, exs in splits.items():
            for ex in exs:
                if _norm(ex.text_pair) not in known:
                    problems.append(Problem(ex.source, ex.line, f"{role} query's FAQ question {ex.text_pair[:60]!r} "
                                            f"is not in {where}", "add the question to the FAQ or fix its spelling"))

    def state(self) -> dict:
        return {"labels": [], "faq": self.faq, "index": "index"}

    def load_state(self, state: dict) -> None:
        self.labels = []
        self.faq = state.get("faq")

    # ---- prediction needs the run's index
    def attach(self, run_dir) -> None:
        """Remember the run directory; its index is loaded on first use (so `domaintune index` can build it)."""
        self.run_dir = Path(run_dir)
        self._index = None

    def _load_index_if_any(self):
        from domaintune.retrieval_index import INDEX_DIR, load_run_index

        if self._index is None and self.run_dir is not None and (self.run_dir / INDEX_DIR / "manifest.json").is_file():
            self._index = load_run_index(self.run_dir)
        return self._index

    def index(self):
        from domaintune.retrieval_index import FaqIndexMissingError, load_run_index

        if self._index is None:
            if self.run_dir is None:
                raise FaqIndexMissingError("this retrieval task has no run directory: call task.attach(RUN_DIR), then "
                                           "build the index with `domaintune index RUN_DIR --faq FILE`")
            self._index = load_run_index(self.run_dir)
        return self._index

    # ---- model
    def build_model(self, model_dir, dropout=None):
        kwargs = {k: v for k, v in sequence_model_kwargs(dropout).items() if k != "classifier_dropout"}
        # weights_only: a packaged .bin (m3e-small) must never run pickled code
        return BiEncoder(AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, weights_only=True, **kwargs))

    def load_model(self, model_dir):
        return BiEncoder(AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, weights_only=True)).eval()

    def save_model(self, model, tokenizer, out_dir: Path) -> None:
        encoder = model.encoder if isinstance(model, BiEncoder) else model
        encoder.save_pretrained(str(out_dir))  # safetensors
        tokenizer.save_pretrained(str(out_dir))
        write_sentence_transformers_files(out_dir, encoder.config.hidden_size)

    def encode(self, tokenizer, examples, max_length, with_targets=True):
        queries = [ex.text for ex in examples]
        enc = tokenizer(queries, truncation=True, max_length=max_length, padding=False, return_attention_mask=False,
                        return_token_type_ids=False)
        out = [{"input_ids": ids} for ids in enc["input_ids"]]
        if with_targets and examples:
            pos = tokenizer([_norm(ex.text_pair) for ex in examples], truncation=True, max_length=max_length,
                            padding=False, return_attention_mask=False, return_token_type_ids=False)
            qid: dict[str, int] = {}
            pid: dict[str, int] = {}
            for o, ex, ids in zip(out, examples, pos["input_ids"]):
                o["pos_input_ids"] = ids
                o["query_group"] = qid.setdefault(_norm(ex.text), len(qid))
                o["pos_group"] = pid.setdefault(_norm(ex.text_pair), len(pid))
        return out

    def collate(self, features, pad_id):
        batch = pad_batch([{"input_ids": f["input_ids"]} for f in features], pad_id)
        if "pos_input_ids" in features[0]:
            pos = pad_batch([{"input_ids": f["pos_input_ids"]} for f in features], pad_id)
            batch["pos_input_ids"], batch["pos_attention_mask"] = pos["input_ids"], pos["attention_mask"]
            batch["query_group"] = torch.tensor([f["query_group"] for f in features], dtype=torch.long)
            batch["pos_group"] = torch.tensor([f["pos_group"] for f in features], dtype=torch.long)
        return batch

    # ---- embedding and scoring
    def embed_features(self, model, features: list[dict], ctx: EvalContext) -> np.ndarray:
        queries = [{"input_ids": f["input_ids"]} for f in features]
        if not queries:
            return np.zeros((0, model.config.hidden_size), dtype=np.float32)
        vecs = predict_logits(model, queries, self.collate, ctx.pad_id, ctx.batch_size, ctx.bf16)
        return F.normalize(vecs.float(), dim=-1).numpy()  # re-normalise after bf16 autocast

    def embed_texts(self, model, texts: Sequence[str], ctx: EvalContext) -> np.ndarray:
        """Normalised embeddings of raw texts (FAQ questions), in input order."""
        return self.embed_features(model, self.encode(ctx.tokenizer, [Example(t, None) for t in texts], ctx.max_length,
                                                      with_targets=False), ctx)

    def _faq_entries(self):
        from domaintune.retrieval_index import read_faq, sha256_file

        key = (self.faq, sha256_file(self.faq)) if self.faq and Path(self.faq).is_file() else (self.faq, None)
        if self._faq_cache is None or self._faq_cache[0] != key:
            self._faq_cache = (key, read_faq(self.faq, self.faq_options))
        return self._faq_cache[1]

    def _candidates(self, model, examples, ctx) -> tuple[list[str], np.ndarray, str]:
        """Candidate questions and their vectors: the run's index, else data.faq, else all distinct FAQ questions seen."""
        index = self._load_index_if_any()
        if index is not None:
            return [_norm(e["question"]) for e in index.entries], index.embeddings, "index"
        if self.faq:
            texts, source = [_norm(e.question) for e in self._faq_entries()], "faq"
        else:
            corpus = dict(self._corpus)
            corpus.update((_norm(ex.text_pair), None) for ex in examples)
            texts, source = list(corpus), "pairs"
        # Re-embedding thousands of candidates is the cost of an evaluation: reuse it while the weights are unchanged.
        with torch.no_grad():
            fingerprint = (id(model), ctx.bf16, len(texts), float(sum(p.detach().double().sum() for p in model.parameters())))
        if self._cand_cache is None or self._cand_cache[0] != fingerprint or self._cand_cache[1] != texts:
            self._cand_cache = (fingerprint, texts, self.embed_texts(model, texts, ctx))
        return texts, self._cand_cache[2], source

    def evaluate(self, model, examples, features, ctx):
        if not examples:
            return {}
        texts, cand, source = self._candidates(model, examples, ctx)
        where: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            where.setdefault(t, []).append(i)
        gold = [where.get(_norm(ex.text_pair), []) for ex in examples]
        q = self.embed_features(model, features, ctx)
        metrics: dict = {}
        chunk = 512  # bounded memory: chunk x candidates scores at a time
        parts = [retrieval_metrics(q[s:s + chunk] @ cand.T, gold[s:s + chunk]) for s in range(0, len(q), chunk)]
        n = sum(p["n"] for p in parts)
        for key in ("recall_at_1", "recall_at_5", "recall_at_10", "mrr"):
            metrics[key] = sum(p[key] * p["n"] for p in parts) / max(n, 1)
        metrics.update(n=n, not_in_candidates=sum(p["not_in_candidates"] for p in parts), candidates=len(texts),
                       candidate_source=source)
        return metrics

    def baselines(self, model_dir, splits, features, ctx, seed):
        """frozen_cosine: the pretrained encoder, untrained, searching the same candidates with the same metrics."""
        return {"frozen_cosine": self.evaluate(self.build_model(model_dir).eval(), splits.test, features["test"], ctx)}

    def predict(self, model, examples, features, ctx, top_k=1):
        index = self.index()
        scores, idx = index.search(self.embed_features(model, features, ctx), max(1, top_k))
        out = []
        for s_row, i_row in zip(scores.tolist(), idx.tolist()):
            hits = [{"id": index.entries[i]["id"], "question": index.entries[i]["question"],
                     "answer": index.entries[i]["answer"], "score": s} for s, i in zip(s_row, i_row)]
            best = hits[0]
            out.append({"label": best["id"], "id": best["id"], "question": best["question"], "answer": best["answer"],
                        "score": best["score"], "top_k": hits})
        return out

    def output_fields(self, prediction: dict) -> dict:
        return {"faq_id": prediction.get("id"), "faq_question": prediction.get("question"),
                "faq_answer": prediction.get("answer"), "score": prediction.get("score")}

    def format_prediction(self, prediction: dict) -> str:
        lines = []
        for rank, hit in enumerate(prediction.get("top_k") or [], start=1):
            lines.append(f"{rank}. {hit['score']:.4f}  id {hit['id']}: {hit['question']}\n     -> {hit['answer']}")
        return "\n  ".join(lines)

    def report_lines(self, metrics: dict) -> list[str]:
        test = metrics.get("test") or {}
        if not test:
            return []
        source = {"faq": f"the FAQ file {md_code(self.faq, table=False)}", "pairs": "every distinct FAQ question in train+dev+test",
                  "index": "the run's FAQ index"}.get(test.get("candidate_source"), "?")
        return ["## Retrieval", "",
                f"- {test.get('n')} test queries searched against {test.get('candidates')} candidates ({source}); "
                f"{test.get('not_in_candidates', 0)} queries had no gold entry among them.",
                f"- recall@10 {100 * test.get('recall_at_10', 0):.2f} %; MRR is over the full ranking.",
                "- Build the search index for prediction with `domaintune index RUN --faq FILE`.", ""]


def write_sentence_transformers_files(out_dir: Path, dim: int) -> None:
    """Module files that let `SentenceTransformer(run/model)` rebuild the same mean pooling + normalisation."""
    out_dir = Path(out_dir)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2) + "\n", encoding="utf-8")
    (out_dir / "2_Normalize").mkdir(exist_ok=True)
