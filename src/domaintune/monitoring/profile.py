"""The reference profile (`RUN_DIR/profile.json`): what normal traffic looked like at training time.

Drift is a comparison, so every online or offline statistic needs a reference.
It is taken from the held-out dev + test texts (never train: the model fits
train, so its confidence there is optimistic), through the model that was just
trained, and holds:

* label shares of the predictions and of the gold labels (multi-label: the
  fraction of texts carrying each label, with "(none)" for texts given none),
* a confidence (top score) histogram on fixed bins 0, 0.1, ..., 1,
* a token-count histogram on the reference's own deciles (so each bin holds
  ~10 % of reference texts and PSI is well conditioned),
* the unknown-token rate and the out-of-profile rate: the share of held-out
  tokens whose id never occurs in the *training* texts (the same measure the
  service applies to live texts, so the two are comparable),
* an embedding summary that costs O(tokens x 64) per text on every backend
  (torch, ONNX, int8): the mean of the model's static input-embedding rows for
  the text's token ids, centred by the vocabulary mean and randomly projected to
  64 components. The projection is applied once to the whole embedding table
  when it is read from the safetensors (vocab x 64 floats, ~8 MB for MiniLM),
  so serving never touches the 384-dimensional table and no forward pass is
  repeated. Random projections keep distances and cosines (Johnson-
  Lindenstrauss); the profile stores the seed, the reference mean and the
  per-component standard deviation.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from domaintune.monitoring.stats import Record

log = logging.getLogger("domaintune.monitoring")

PROFILE_FILE = "profile.json"
CONFIDENCE_EDGES = [round(0.1 * i, 1) for i in range(10)] + [1.000001]
DEFAULT_LENGTH_EDGES = [0, 8, 16, 24, 32, 48, 64, 96, 128, 256, 1_000_000]
ABSTAIN = "(abstain)"
NO_LABEL = "(none)"  # a multi-label prediction with no label above its threshold
COMPONENTS, SEED = 64, 0
MAX_CHARS = 20_000  # the service's default per-text limit; longer texts are cut before tokenizing


@dataclass
class Profile:
    labels: list[str] = field(default_factory=list)
    predicted_share: dict[str, float] = field(default_factory=dict)
    gold_share: dict[str, float] = field(default_factory=dict)
    confidence_edges: list[float] = field(default_factory=lambda: list(CONFIDENCE_EDGES))
    confidence_share: list[float] = field(default_factory=list)
    confidence_mean: float | None = None
    length_edges: list[float] = field(default_factory=lambda: list(DEFAULT_LENGTH_EDGES))
    length_share: list[float] = field(default_factory=list)
    length_mean: float | None = None
    unk_rate: float | None = None
    oov_rate: float | None = None
    vocab_ids: list[int] = field(default_factory=list)
    embedding: dict | None = None   # {tensor, components, seed, mean, std}
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.label_index = {name: i for i, name in enumerate(self.labels)}

    @property
    def embedding_components(self) -> int:
        return int(self.embedding["components"]) if self.embedding else 0

    @property
    def embedding_mean(self):
        return self.embedding["mean"] if self.embedding else None

    @property
    def embedding_std(self):
        return self.embedding["std"] if self.embedding else None

    def predicted_share_vector(self) -> np.ndarray | None:
        """Reference shares in window order (profile labels, then the 'unknown label' slot at 0)."""
        if not self.predicted_share:
            return None
        return np.array([self.predicted_share.get(n, 0.0) for n in self.labels] + [0.0])

    def to_json(self) -> dict:
        keys = ("labels", "predicted_share", "gold_share", "confidence_edges", "confidence_share", "confidence_mean",
                "length_edges", "length_share", "length_mean", "unk_rate", "oov_rate", "embedding", "vocab_ids")
        return {"version": 1, "meta": self.meta, **{k: getattr(self, k) for k in keys}}

    @classmethod
    def from_json(cls, d: dict) -> "Profile":
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**fields)

    def save(self, path: str | Path) -> Path:
        from domaintune.training.checkpoint import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_json(), ensure_ascii=False, indent=1))


def load_profile(run_dir: str | Path) -> Profile | None:
    p = Path(run_dir) / PROFILE_FILE
    if not p.is_file():
        return None
    return Profile.from_json(json.loads(p.read_text(encoding="utf-8")))


def prediction_labels(pred: dict) -> list[str] | None:
    """The labels a prediction counts as; None: the task has none (regression, NER, retrieval).

    Single-label: one name, abstentions (out-of-scope) a category of their own. Multi-label: every chosen
    label (the `labels` list the service returns), or `(none)` when none passed its threshold."""
    if not isinstance(pred, dict):
        return None
    chosen = pred.get("labels")
    if isinstance(chosen, list) and all(isinstance(c, dict) and "label" in c for c in chosen):
        return [str(c["label"]) for c in chosen] or [NO_LABEL]
    if "label" not in pred:
        return None
    return [ABSTAIN if pred["label"] is None else str(pred["label"])]


def label_indices(pred: dict, index: dict[str, int]) -> int | tuple[int, ...]:
    """A prediction as `Record.label`: -1 without labels, else the profile indices (len(index) = unknown)."""
    names = prediction_labels(pred)
    if names is None:
        return -1
    return tuple(index.get(x, len(index)) for x in names)


def prediction_score(pred: dict) -> float:
    s = pred.get("score") if isinstance(pred, dict) else None
    return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) else float("nan")


def _embedding_tensor(run_dir: Path) -> tuple[np.ndarray, str] | None:
    """The static input-embedding matrix from the run's safetensors (or its base model for adapter runs)."""
    from safetensors import safe_open

    folders = [run_dir / "model"]
    try:
        from domaintune.models import resolve_model
        from domaintune.security.safe_yaml import load_yaml_file

        cfg = load_yaml_file(run_dir / "config.yaml") or {}
        if cfg.get("model"):
            folders.append(Path(resolve_model(cfg["model"])))
    except Exception:  # noqa: BLE001 - the base model is only a fallback
        pass
    for folder in folders:
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    if key.endswith(("word_embeddings.weight", "embed_tokens.weight", "shared.weight")):
                        return st.get_tensor(key).float().numpy(), f"{f.name}:{key}"
    return None


class TextFeaturizer:
    """Token counts, unknown / out-of-profile tokens and the projected embedding of texts (run's tokenizer)."""

    def __init__(self, run_dir: str | Path, vocab_ids: Sequence[int] = (), components: int = COMPONENTS,
                 seed: int = SEED):
        from transformers import AutoTokenizer

        run_dir = Path(run_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "model"))
        self.unk_id = self.tokenizer.unk_token_id
        self.components, self.seed, self.tensor_name = components, seed, None
        self.table = None
        found = _embedding_tensor(run_dir) if components else None
        if found is not None:
            emb, self.tensor_name = found
            rng = np.random.default_rng(seed)
            proj = rng.standard_normal((emb.shape[1], components)) / math.sqrt(components)
            self.table = ((emb - emb.mean(axis=0)) @ proj).astype(np.float32)
        else:
            log.warning("%s: no input-embedding tensor found; embedding drift is not monitored", run_dir)
        size = max(len(self.tokenizer), self.table.shape[0] if self.table is not None else 0)
        self.known = np.zeros(size, dtype=bool)
        self.set_vocab(vocab_ids)

    def set_vocab(self, vocab_ids: Sequence[int]) -> None:
        self.known[:] = False
        ids = np.asarray(list(vocab_ids), dtype=np.int64)
        self.known[ids[(ids >= 0) & (ids < len(self.known))]] = True
        self.has_vocab = bool(len(ids))

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer([t[:MAX_CHARS] for t in texts], add_special_tokens=False, truncation=False,
                              return_attention_mask=False)["input_ids"]

    def records(self, texts: Sequence[str], labels: Sequence, scores: Sequence[float]) -> list[Record]:
        out = []
        for ids, lab, score in zip(self.token_ids(texts), labels, scores):
            a = np.asarray(ids, dtype=np.int64)
            a = a[a < len(self.known)]
            emb = self.table[a].mean(axis=0) if self.table is not None and len(a) else None
            unk = int(np.sum(a == self.unk_id)) if self.unk_id is not None else 0
            oov = int(np.sum(~self.known[a])) if self.has_vocab else 0
            out.append(Record(lab, score, len(ids), unk, oov, emb))
        return out


def _shares(values: list[list[str]], order: list[str]) -> dict[str, float]:
    """Fraction of texts carrying each label (each text: a list of one or more labels)."""
    n = len(values) or 1
    counts = {k: 0 for k in order}
    for labs in values:
        for k in set(labs):
            if k in counts:
                counts[k] += 1
    return {k: c / n for k, c in counts.items()}


def build_profile(featurizer: TextFeaturizer, texts: Sequence[str], predictions: Sequence[dict],
                  gold: Sequence | None = None, train_texts: Sequence[str] | None = None,
                  labels: Sequence[str] = (), meta: dict | None = None) -> Profile:
    """A profile from reference texts with their predictions (and gold labels), vocabulary from `train_texts`.

    `gold`: per text a label, or a list of labels (multi-label; an empty list counts as "(none)")."""
    pred_labels = [prediction_labels(p) for p in predictions]
    order = [str(x) for x in labels]
    order += sorted({x for labs in pred_labels if labs for x in labs if x not in order})
    gold = [[str(x) for x in g] or [NO_LABEL] if isinstance(g, (list, tuple)) else [str(g)]
            for g in (gold or []) if g is not None]
    order += sorted({x for g in gold for x in g if x not in order})
    has_labels = any(x is not None for x in pred_labels)

    vocab_src = list(train_texts) if train_texts else list(texts)
    vocab = sorted({i for ids in featurizer.token_ids(vocab_src) for i in ids})
    featurizer.set_vocab(vocab)
    scores = [prediction_score(p) for p in predictions]
    recs = featurizer.records(list(texts), [0] * len(texts), scores)
    lengths = np.array([r.tokens for r in recs], dtype=float)
    tok = max(int(lengths.sum()), 1)
    qs = np.unique(np.round(np.quantile(lengths, np.linspace(0, 1, 11)[1:-1]))) if len(lengths) else []
    length_edges = [0.0] + [float(q) for q in qs if q > 0] + [1e6]
    from domaintune.monitoring.stats import bin_index

    len_counts = np.bincount(bin_index(np.array(length_edges), lengths), minlength=len(length_edges) - 1)
    finite = np.array([s for s in scores if math.isfinite(s)])
    conf_counts = np.bincount(bin_index(np.array(CONFIDENCE_EDGES), finite), minlength=len(CONFIDENCE_EDGES) - 1)
    embedding = None
    embs = np.array([r.embedding for r in recs if r.embedding is not None])
    if len(embs):
        embedding = {"tensor": featurizer.tensor_name, "components": featurizer.components, "seed": featurizer.seed,
                     "mean": embs.mean(axis=0).round(6).tolist(), "std": embs.std(axis=0).round(6).tolist()}
    n = len(texts)
    return Profile(
        labels=order if has_labels or gold else [],
        predicted_share=_shares([x for x in pred_labels if x is not None], order) if has_labels else {},
        gold_share=_shares(gold, order) if gold else {},
        confidence_share=(conf_counts / max(len(finite), 1)).round(6).tolist() if len(finite) else [],
        confidence_mean=float(finite.mean()) if len(finite) else None,
        length_edges=length_edges, length_share=(len_counts / max(n, 1)).round(6).tolist(),
        length_mean=float(lengths.mean()) if n else None,
        unk_rate=sum(r.unk for r in recs) / tok, oov_rate=sum(r.oov for r in recs) / tok,
        vocab_ids=vocab, embedding=embedding,
        meta={"created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "reference_texts": n,
              "vocab_texts": len(vocab_src), **(meta or {})})


def _input_text(ex) -> str:
    """As the service sees it (`serving.app._raw_texts`): a pair is 'text\\ntext_pair'."""
    return ex.text if ex.text_pair is None else f"{ex.text}\n{ex.text_pair}"


def profile_from_examples(run_dir: Path, reference: Sequence, train: Sequence, predict) -> Profile:
    """Profile of a run from held-out Examples; `predict(examples) -> predictions`."""
    labels = []
    labels_path = run_dir / "labels.json"
    if labels_path.is_file():
        from domaintune.data import LabelMap

        labels = list(LabelMap.load(labels_path).labels)
    featurizer = TextFeaturizer(run_dir)
    preds = predict(list(reference))
    gold = None
    if preds and isinstance(preds[0].get("labels"), list):   # multi-label: the parsed label tuple of each row
        gold = [ex.extra if isinstance(ex.extra, tuple) else None for ex in reference]
    elif preds and "label" in preds[0]:
        gold = [ex.label for ex in reference]
    return build_profile(featurizer, [_input_text(e) for e in reference], preds, gold,
                         [_input_text(e) for e in train], labels, meta={"run": run_dir.name})


def write_run_profile(run_dir: Path, task, model, tokenizer, splits, ctx, max_length: int) -> Path | None:
    """Called at the end of `train_run`: profile of dev + test through the in-memory model.

    A profile is a monitoring aid: any failure is logged and never loses the trained run."""
    if task.output_kind == "text":  # a profile would decode a reply per dev/test row: minutes to hours on a CPU
        log.info("no monitoring profile for a generation run (drift of generated text is not profiled yet)")
        return None
    try:
        reference = list(splits.dev) + list(splits.test)
        if not reference:
            log.warning("no dev/test texts: no monitoring profile written (domaintune monitor profile RUN --data FILE)")
            return None

        def predict(examples):
            feats = task.encode(tokenizer, examples, max_length, with_targets=False)
            return task.predict(model, examples, feats, ctx, 1)

        profile = profile_from_examples(Path(run_dir), reference, splits.train, predict)
        return profile.save(Path(run_dir) / PROFILE_FILE)
    except Exception as e:  # noqa: BLE001
        log.warning("monitoring profile not written (%s: %s); build it later with `domaintune monitor profile %s`",
                    type(e).__name__, e, run_dir)
        return None


def profile_run(run_dir: str | Path, data: str | Path | None = None, output: str | Path | None = None) -> Path:
    """Build `profile.json` for an existing run: from `data` (a labelled file), else the run's own dev + test.

    The run's own splits are rebuilt from config.yaml with its seed (the same split training used), so the
    data files must still be where the config says."""
    from domaintune.config import load_config
    from domaintune.data import DataError, prepare_data
    from domaintune.predictor import Predictor

    run_dir = Path(run_dir)
    predictor = Predictor(run_dir)
    if data is not None:
        from domaintune.data import Problem
        from domaintune.evaluate import data_config_for

        problems: list = []
        reference = predictor.task.read(str(data), data_config_for(predictor, None), problems)
        if [p for p in problems if not p.warning]:
            raise DataError(problems)
        train: list = []
        if not reference:
            raise DataError([Problem(str(data), None, "no rows", "give a file with the run's text column")])
    else:
        from domaintune.tasks import get_task

        cfg = load_config(run_dir / "config.yaml")
        task = get_task(cfg.task)
        task.configure(cfg)
        splits = prepare_data(cfg, task)
        reference, train = list(splits.dev) + list(splits.test), list(splits.train)
    profile = profile_from_examples(run_dir, reference, train, lambda exs: predictor.predict(exs))
    return profile.save(Path(output) if output else run_dir / PROFILE_FILE)
