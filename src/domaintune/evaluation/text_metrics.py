"""Text-generation metrics: ROUGE-L, chrF, BLEU, lengths, exact match, perplexity.

We score with the reference implementations instead of our own code so the numbers
compare with published ones: Google's `rouge-score` for ROUGE-L and `sacrebleu` for
chrF and BLEU.

Why per-character Chinese ROUGE-L: rouge-score's default tokenizer lower-cases and
replaces every character outside [a-z0-9] by a space, so a Chinese text has no tokens
and every Chinese score is 0 (the bug behind LLaMA-Factory issue #6267 and its kin).
For Chinese we hand rouge-score a tokenizer that returns the non-space characters one
by one, as the CrossWOZ README and LLaMA-Factory PR #4877 do: it needs no word
segmenter (jieba and the like disagree with each other) and a partly right answer
gets partial credit. English keeps the default tokenizer (lower-cased words, stemming
off), the setting most papers report.

Why these sacrebleu settings: chrF (character n-grams, whitespace ignored) needs no
tokenizer and is the one metric here that works alike for both languages. BLEU needs
words: sacrebleu's "zh" tokenizer splits CJK characters apart (and runs 13a on the
rest); "13a" is its standard (WMT) tokenizer for English.

Keys of `generation_metrics`: `rougeL` (mean sentence ROUGE-L F1, 0-100), `chrf` and
`bleu` (corpus scores as sacrebleu reports them, 0-100), `exact_match` (share 0-1 of
predictions equal to their reference once runs of whitespace are collapsed),
`empty_outputs` (blank predictions), `pred_len_mean`/`ref_len_mean` (in ROUGE-L's
tokens: characters for zh, words for en), `n`, `language`, `tokenization`.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from rouge_score import rouge_scorer, tokenizers
from sacrebleu.metrics import BLEU, CHRF

#: Share of CJK characters among non-space characters from which texts count as Chinese.
CJK_SHARE_FOR_ZH = 0.30

#: Perplexity ceiling: a diverged model's mean NLL would overflow exp().
PERPLEXITY_CAP = 1e9

# Explicit ranges with stdlib `re` (the `regex` module's \p{Han} would need another direct
# dependency): Han (basic, extension A, compatibility, extensions B+), kana, hangul.
_CJK = re.compile(
    "[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0003134f"
    "\u3040-\u30ff\u31f0-\u31ff\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]"
)

_TOKENIZATION = {
    "zh": "ROUGE-L on characters, BLEU tokenize=zh",
    "en": "ROUGE-L on lower-cased words (rouge-score default tokenizer with stemming off), BLEU 13a",
}
_BLEU_TOKENIZE = {"zh": "zh", "en": "13a"}


def text_language(texts: Sequence[str]) -> str:
    """"zh" if CJK characters are at least 30 % of the texts' pooled non-space characters, else "en".

    Pooled over all texts so a few short or English-only rows in a Chinese set do not
    flip it. 30 %, not 50 %: Chinese answers often carry Latin digits, units, product
    names or URLs, and any real share of CJK makes word-level scoring wrong for them.
    Kana and hangul count as CJK too (they are scored per character as well).
    Texts without non-space characters count as "en".
    """
    cjk = other = 0
    for text in texts:
        chars = "".join(text.split())
        n_cjk = len(_CJK.findall(chars))
        cjk += n_cjk
        other += len(chars) - n_cjk
    total = cjk + other
    return "zh" if total and cjk / total >= CJK_SHARE_FOR_ZH else "en"


class CharTokenizer:
    """rouge-score tokenizer giving the non-space characters one by one (see the module docstring)."""

    def tokenize(self, text: str) -> list[str]:
        return [ch for ch in text if not ch.isspace()]


def _normalise(text: str) -> str:
    # CRLF/CR line ends from Windows-made files must not count as extra characters.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def generation_metrics(
    predictions: Sequence[str], references: Sequence[str], language: str | None = None
) -> dict:
    """Score generated texts against one reference each (keys: see the module docstring).

    `language` ("zh" or "en") picks the tokenization; None detects it from the
    references (the predictions of a bad model must not change how it is scored),
    or from the predictions when the references are all blank.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"generation_metrics: {len(predictions)} predictions but {len(references)} references; "
            "pass exactly one reference per prediction, in the same order"
        )
    if language is not None and language not in _TOKENIZATION:
        raise ValueError(f"generation_metrics: language must be 'zh', 'en' or None, got {language!r}")
    preds = [_normalise(str(p)) for p in predictions]
    refs = [_normalise(str(r)) for r in references]
    if language is None:
        language = text_language(refs) if any(r.strip() for r in refs) else text_language(preds)
    out = {
        "rougeL": 0.0,
        "chrf": 0.0,
        "bleu": 0.0,
        "language": language,
        "tokenization": _TOKENIZATION[language],
        "n": len(preds),
        "pred_len_mean": 0.0,
        "ref_len_mean": 0.0,
        "empty_outputs": 0,
        "exact_match": 0.0,
    }
    if not preds:
        return out

    # One tokenizer for ROUGE-L and the lengths, so the lengths are in ROUGE-L's units.
    tokenizer = CharTokenizer() if language == "zh" else tokenizers.DefaultTokenizer(use_stemmer=False)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizer)
    tokenize = tokenizer.tokenize
    # rouge-score's argument order is (target, prediction).
    f1 = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]
    n = len(preds)
    out["rougeL"] = 100.0 * sum(f1) / n
    out["chrf"] = float(CHRF().corpus_score(preds, [refs]).score)
    out["bleu"] = float(BLEU(tokenize=_BLEU_TOKENIZE[language]).corpus_score(preds, [refs]).score)
    out["pred_len_mean"] = sum(len(tokenize(p)) for p in preds) / n
    out["ref_len_mean"] = sum(len(tokenize(r)) for r in refs) / n
    out["empty_outputs"] = sum(1 for p in preds if not p.strip())
    out["exact_match"] = sum(" ".join(p.split()) == " ".join(r.split()) for p, r in zip(preds, refs)) / n
    return out


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean NLL per token), capped at `PERPLEXITY_CAP`; 0.0 when no token was scored.

    0.0 for no tokens (not inf or NaN) keeps reports and JSON valid; a caller that needs
    to tell "nothing scored" apart checks n_tokens. The cap stops OverflowError from
    exp() when a diverged model's mean NLL passes ~709.
    """
    if n_tokens < 0:
        raise ValueError(f"perplexity: n_tokens must be >= 0, got {n_tokens}")
    if n_tokens == 0:
        return 0.0
    if math.isnan(total_nll):
        raise ValueError("perplexity: total_nll is NaN; the model produced non-finite losses (check its logits)")
    mean = total_nll / n_tokens
    if mean >= math.log(PERPLEXITY_CAP):
        return PERPLEXITY_CAP
    return math.exp(mean)
