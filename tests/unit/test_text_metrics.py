"""Generation metrics (domaintune.evaluation.text_metrics): ROUGE-L per character for Chinese, language detection."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from domaintune.evaluation.text_metrics import (
    PERPLEXITY_CAP,
    CharTokenizer,
    generation_metrics,
    perplexity,
    text_language,
)


def test_identical_texts_score_100():
    for texts in (["营业时间为早上九点到晚上十点。", "可以退货"], ["The store opens at nine.", "Refunds take 5 days"]):
        m = generation_metrics(texts, texts)
        assert m["rougeL"] == pytest.approx(100.0)
        assert m["chrf"] == pytest.approx(100.0)
        assert m["bleu"] == pytest.approx(100.0)
        assert m["exact_match"] == 1.0 and m["empty_outputs"] == 0 and m["n"] == 2


def test_chinese_rouge_l_is_per_character():
    # LCS 营业时间…点 = 5 of 7 characters each side: P = R = F1 = 5/7
    m = generation_metrics(["营业时间为九点"], ["营业时间是十点"])
    assert m["language"] == "zh"
    assert m["rougeL"] == pytest.approx(100 * 5 / 7)
    assert round(m["rougeL"], 2) == 71.43
    assert m["pred_len_mean"] == m["ref_len_mean"] == 7.0  # characters
    assert m["tokenization"] == "ROUGE-L on characters, BLEU tokenize=zh"
    # tokenize=zh splits the characters, so a partly right answer gets partial BLEU (13a would see one word: 0)
    assert 0 < m["bleu"] < 100
    assert 0 < m["chrf"] < 100


def test_chinese_sharing_half_its_characters_is_strictly_between_0_and_100():
    m = generation_metrics(["退货需要七天"], ["退货需要三周以内"])
    assert 0 < m["rougeL"] < 100


def test_rouge_score_default_tokenizer_zeroes_chinese_but_ours_does_not():
    # Why CharTokenizer exists: the default tokenizer drops every non-[a-z0-9] character.
    default = rouge_scorer.RougeScorer(["rougeL"]).score("营业时间是十点", "营业时间是十点")
    assert default["rougeL"].fmeasure == 0.0
    assert generation_metrics(["营业时间是十点"], ["营业时间是十点"])["rougeL"] == pytest.approx(100.0)


@settings(max_examples=60, deadline=None)
@given(
    shared=st.text(alphabet="营业时间是十点退货可以", min_size=1, max_size=5),
    pred_extra=st.text(alphabet="我你他们的了 \n", max_size=8),
    ref_extra=st.text(alphabet="天地人和大小 ", max_size=8),
)
def test_chinese_with_a_shared_character_never_scores_zero(shared, pred_extra, ref_extra):
    m = generation_metrics([pred_extra + shared], [shared + ref_extra], language="zh")
    assert m["rougeL"] > 0


def test_char_tokenizer_keeps_every_non_space_character():
    assert CharTokenizer().tokenize("营业 时间\nA1，") == ["营", "业", "时", "间", "A", "1", "，"]


def test_english_rouge_l_is_on_lower_cased_words():
    # words: the cat sat on the mat / the cat is on the mat -> LCS "the cat on the mat" = 5 of 6
    m = generation_metrics(["The cat sat on the mat."], ["the cat is on the mat"])
    assert m["language"] == "en"
    assert m["rougeL"] == pytest.approx(100 * 5 / 6)
    assert m["pred_len_mean"] == m["ref_len_mean"] == 6.0  # words
    assert "BLEU 13a" in m["tokenization"]
    assert m["exact_match"] == 0.0


def test_language_detection():
    assert text_language(["您好，请问营业时间是几点？", "我们早上九点开门。"]) == "zh"
    assert text_language(["Hello, when do you open?", "We open at nine."]) == "en"
    # Latin digits and a product name do not make a Chinese answer English
    assert text_language(["请拨打 iPhone 客服电话 400-1234 转 2"]) == "zh"
    # pooled: one Chinese word in English text stays English
    assert text_language(["Order the 豆腐 please, it is very good"]) == "en"
    assert text_language(["ab中"]) == "zh" and text_language(["abc中"]) == "en"  # 33 % vs 25 %
    assert text_language(["こんにちは"]) == "zh" and text_language(["안녕하세요"]) == "zh"
    assert text_language([]) == "en" and text_language(["  \n"]) == "en"


def test_language_is_detected_from_the_references():
    m = generation_metrics(["I do not know"], ["营业时间是十点"])
    assert m["language"] == "zh"
    assert generation_metrics(["营业时间"], ["营业时间"], language="en")["language"] == "en"


def test_crlf_is_normalised():
    lf = generation_metrics(["第一行\n第二行", "line one\nline two"], ["第一行\n第二行", "line one\nline two"])
    crlf = generation_metrics(["第一行\r\n第二行", "line one\r\nline two"], ["第一行\n第二行", "line one\nline two"])
    assert crlf == lf
    assert crlf["exact_match"] == 1.0 and crlf["rougeL"] == pytest.approx(100.0)


def test_empty_inputs_give_zeros():
    m = generation_metrics([], [])
    assert m["n"] == 0
    for key in ("rougeL", "chrf", "bleu", "pred_len_mean", "ref_len_mean", "empty_outputs", "exact_match"):
        assert m[key] == 0


def test_blank_predictions_are_counted_and_score_zero():
    m = generation_metrics(["", "  \n"], ["营业时间是十点", "可以退货"])
    assert m["empty_outputs"] == 2
    assert m["rougeL"] == 0 and m["chrf"] == 0 and m["bleu"] == 0
    assert m["pred_len_mean"] == 0 and m["ref_len_mean"] == 5.5


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="one reference per prediction"):
        generation_metrics(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="language must be"):
        generation_metrics(["a"], ["a"], language="fr")


def test_perplexity():
    assert perplexity(10 * math.log(5.0), 10) == pytest.approx(5.0)
    assert perplexity(0.0, 0) == 0.0
    assert perplexity(1e6, 1) == PERPLEXITY_CAP
    assert perplexity(float("inf"), 3) == PERPLEXITY_CAP
    with pytest.raises(ValueError):
        perplexity(float("nan"), 3)
    with pytest.raises(ValueError):
        perplexity(1.0, -1)
