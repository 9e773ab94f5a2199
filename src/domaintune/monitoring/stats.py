"""Drift statistics and the sliding window they are computed over.

Why one window class serves both the service and `domaintune monitor`: the
online gauges, the alert rules and the offline report must mean the same thing
by "label_psi over 200 texts", so they all feed per-text records into
`SlidingWindow` and read `value(stat)` from it.

Labels: a text may carry several (multi-label tasks), so the window keeps a
multi-hot row per text. `share(label)` is the fraction of labelled texts that
carry the label (for single-label tasks the usual share, summing to 1); the
label PSI/JS compare the distribution of label *occurrences* with the
profile's, normalised the same way on both sides.

A window keeps running sums (label counts, histogram counts, token counts, the
sum of the projected embeddings), so adding a text and reading any statistic
costs O(labels + bins + embedding components), never O(window). The ring arrays
are re-summed every `capacity` additions so floating-point error cannot creep.

Definitions (documented in the README):

* PSI (population stability index) = sum_i (a_i - e_i) * ln(a_i / e_i) over the
  bins, shares floored at `EPS` so an empty bin does not give infinity
  (a common reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift).
* JS = the Jensen-Shannon *divergence* in bits (scipy's `jensenshannon`
  distance squared, base 2): 0 for identical, 1 for disjoint distributions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import jensenshannon

EPS = 1e-4

#: Statistics a rule or a gauge can name; `share(label == "x")` is handled separately.
STATS: dict[str, str] = {
    "label_psi": "PSI of the predicted-label distribution vs the profile",
    "label_js": "Jensen-Shannon divergence (bits) of the predicted-label distribution vs the profile",
    "confidence_mean": "mean top-label score",
    "confidence_drop": "profile mean score minus window mean score (positive = less confident)",
    "confidence_psi": "PSI of the score histogram vs the profile",
    "length_mean": "mean tokens per text",
    "length_shift": "window mean length / profile mean length - 1",
    "length_psi": "PSI of the token-count histogram vs the profile",
    "unk_rate": "share of tokens that are the tokenizer's unknown token",
    "oov_rate": "share of tokens never seen in the training texts (out-of-profile vocabulary)",
    "oov_shift": "oov_rate minus the profile's held-out oov_rate",
    "embedding_cosine": "cosine distance of the window's mean text embedding to the profile's",
    "embedding_shift": "RMS over embedding components of (window mean - profile mean) / profile std",
}


def _shares(x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    s = a.sum()
    return a / s if s > 0 else np.full_like(a, 1.0 / max(len(a), 1))


def psi(expected, actual, eps: float = EPS) -> float:
    """Population stability index between two distributions over the same bins (counts or shares)."""
    e, a = np.maximum(_shares(expected), eps), np.maximum(_shares(actual), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence in bits (0..1); scipy returns the distance, its square root."""
    d = jensenshannon(_shares(p), _shares(q), base=2)
    return float(d * d) if math.isfinite(d) else 0.0


def bin_index(edges: np.ndarray, values) -> np.ndarray:
    """Bin of each value for bins [edges[i], edges[i+1]); values outside go to the first/last bin."""
    idx = np.searchsorted(edges, np.asarray(values, dtype=float), side="right") - 1
    return np.clip(idx, 0, len(edges) - 2)


@dataclass
class Record:
    """What the window keeps of one prediction (the text itself is never kept)."""

    label: int | tuple[int, ...]  # index (or indices, multi-label) into the profile's labels; len(labels) = a
                                  # label the profile does not know; -1: the task has no labels
    confidence: float     # nan when the task gives no score
    tokens: int = 0
    unk: int = 0
    oov: int = 0
    embedding: np.ndarray | None = None


class SlidingWindow:
    """The last `capacity` records with O(1)-per-record running sums (see module docstring)."""

    def __init__(self, capacity: int, profile):
        self.capacity, self.profile = int(capacity), profile
        self.n_labels = len(profile.labels) + 1  # + one slot for labels the profile never saw
        self.conf_edges = np.asarray(profile.confidence_edges, dtype=float)
        self.len_edges = np.asarray(profile.length_edges, dtype=float)
        k = profile.embedding_components
        c = self.capacity
        self._hot = np.zeros((c, self.n_labels), dtype=bool)   # labels of each text (multi-hot)
        self._has_label = np.zeros(c, dtype=bool)
        self._conf = np.full(c, np.nan)
        self._conf_bin = np.full(c, -1, dtype=np.int64)
        self._tokens = np.zeros(c, dtype=np.int64)
        self._len_bin = np.full(c, -1, dtype=np.int64)
        self._unk = np.zeros(c, dtype=np.int64)
        self._oov = np.zeros(c, dtype=np.int64)
        self._has_emb = np.zeros(c, dtype=bool)
        self._emb = np.zeros((c, k)) if k else None
        self.n = 0          # records in the window (<= capacity)
        self.total = 0      # records ever added
        self._pos = 0
        self._reset_sums()

    def _reset_sums(self) -> None:
        self.label_counts = self._hot.sum(axis=0).astype(float)
        self.labelled = int(self._has_label.sum())
        cm = self._conf_bin >= 0
        self.conf_counts = np.bincount(self._conf_bin[cm], minlength=len(self.conf_edges) - 1).astype(float)
        self.conf_sum, self.conf_n = float(np.nansum(self._conf[cm])), int(cm.sum())
        lm = self._len_bin >= 0
        self.len_counts = np.bincount(self._len_bin[lm], minlength=len(self.len_edges) - 1).astype(float)
        self.text_n = int(lm.sum())
        self.tok_sum, self.unk_sum, self.oov_sum = int(self._tokens.sum()), int(self._unk.sum()), int(self._oov.sum())
        self.emb_n = int(self._has_emb.sum())
        self.emb_sum = self._emb[self._has_emb].sum(axis=0) if self._emb is not None else None

    def _apply(self, i: int, sign: int) -> None:
        if self._has_label[i]:
            self.label_counts += sign * self._hot[i]
            self.labelled += sign
        if self._conf_bin[i] >= 0:
            self.conf_counts[self._conf_bin[i]] += sign
            self.conf_sum += sign * self._conf[i]
            self.conf_n += sign
        if self._len_bin[i] >= 0:
            self.len_counts[self._len_bin[i]] += sign
            self.text_n += sign
            self.tok_sum += sign * int(self._tokens[i])
            self.unk_sum += sign * int(self._unk[i])
            self.oov_sum += sign * int(self._oov[i])
        if self._has_emb[i]:
            self.emb_sum += sign * self._emb[i]
            self.emb_n += sign

    def add(self, r: Record, has_text: bool = True) -> None:
        i = self._pos
        if self.n == self.capacity:
            self._apply(i, -1)
        idx = [r.label] if isinstance(r.label, (int, np.integer)) else list(r.label)
        idx = [j for j in idx if j >= 0]
        self._hot[i] = False
        self._hot[i, idx] = True
        self._has_label[i] = bool(idx)
        ok = r.confidence is not None and math.isfinite(r.confidence)
        self._conf[i] = r.confidence if ok else np.nan
        self._conf_bin[i] = int(bin_index(self.conf_edges, r.confidence)) if ok else -1
        self._tokens[i], self._unk[i], self._oov[i] = r.tokens, r.unk, r.oov
        self._len_bin[i] = int(bin_index(self.len_edges, r.tokens)) if has_text else -1
        self._has_emb[i] = r.embedding is not None and self._emb is not None
        if self._has_emb[i]:
            self._emb[i] = r.embedding
        self._apply(i, +1)
        self._pos = (i + 1) % self.capacity
        self.n = min(self.n + 1, self.capacity)
        self.total += 1
        if self.total % self.capacity == 0:
            self._reset_sums()

    @property
    def full(self) -> bool:
        return self.n >= self.capacity

    # --- statistics -------------------------------------------------------------------------------
    def label_share(self) -> dict[str, float]:
        s = self.labelled
        names = list(self.profile.labels) + ["(other)"]
        return {n: float(c / s) if s else 0.0 for n, c in zip(names, self.label_counts) if n != "(other)" or c}

    def share(self, label: str) -> float:
        """Fraction of the window's labelled texts that carry `label`; nan for an empty window."""
        s = self.labelled
        if not s:
            return float("nan")
        idx = self.profile.label_index.get(label)
        return float(self.label_counts[idx] / s) if idx is not None else 0.0

    def value(self, stat: str) -> float:
        """One statistic (a `STATS` name); nan when the window or the profile cannot give it."""
        p, nan = self.profile, float("nan")
        if stat in ("label_psi", "label_js"):
            ref = p.predicted_share_vector()
            if ref is None or not self.label_counts.sum():
                return nan
            return psi(ref, self.label_counts) if stat == "label_psi" else js_divergence(ref, self.label_counts)
        if stat.startswith("confidence"):
            if not self.conf_n:
                return nan
            mean = self.conf_sum / self.conf_n
            if stat == "confidence_mean":
                return mean
            if stat == "confidence_drop":
                return p.confidence_mean - mean if p.confidence_mean is not None else nan
            return psi(p.confidence_share, self.conf_counts) if p.confidence_share else nan
        if stat.startswith("length"):
            if not self.text_n:
                return nan
            mean = self.tok_sum / self.text_n
            if stat == "length_mean":
                return mean
            if stat == "length_shift":
                return mean / p.length_mean - 1.0 if p.length_mean else nan
            return psi(p.length_share, self.len_counts) if p.length_share else nan
        if stat in ("unk_rate", "oov_rate", "oov_shift"):
            if not self.tok_sum:
                return nan
            if stat == "unk_rate":
                return self.unk_sum / self.tok_sum
            rate = self.oov_sum / self.tok_sum
            return rate if stat == "oov_rate" else (rate - p.oov_rate if p.oov_rate is not None else nan)
        if stat in ("embedding_cosine", "embedding_shift"):
            if not self.emb_n or p.embedding_mean is None:
                return nan
            mean = self.emb_sum / self.emb_n
            ref = np.asarray(p.embedding_mean)
            if stat == "embedding_cosine":
                denom = float(np.linalg.norm(mean) * np.linalg.norm(ref))
                return 1.0 - float(mean @ ref) / denom if denom > 0 else nan
            std = np.maximum(np.asarray(p.embedding_std), 1e-6)
            return float(np.sqrt(np.mean(((mean - ref) / std) ** 2)))
        raise KeyError(f"unknown statistic {stat!r}; known: {', '.join(STATS)}")

    def stats(self) -> dict:
        """Every statistic plus the label shares (for gauges, `domaintune monitor` and plots)."""
        out = {"n": self.n}
        out.update({s: self.value(s) for s in STATS})
        out["label_share"] = self.label_share()
        return out
