"""Decoding settings and the stop-string handling of streamed replies (no model needed)."""

import pytest

from domaintune.generation.engine import _held_back, cut_at_stop
from domaintune.generation.settings import GenerationResult, PromptTooLongError, SamplingSettings


def test_settings_validate_every_field_at_once():
    with pytest.raises(ValueError) as e:
        SamplingSettings(max_new_tokens=0, temperature=-1, top_p=0, top_k=-2, repetition_penalty=0, stop=("",))
    msg = str(e.value)
    for field in ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop"):
        assert field in msg


def test_greedy_by_default_and_sampling_kwargs():
    s = SamplingSettings()
    assert s.greedy and s.hf_kwargs()["do_sample"] is False and s.hf_kwargs()["temperature"] is None
    kw = SamplingSettings(temperature=0.7, top_p=0.9, top_k=40, seed=3).hf_kwargs()
    assert kw["do_sample"] and kw["temperature"] == 0.7 and kw["top_p"] == 0.9 and kw["top_k"] == 40


def test_cut_at_the_first_stop_string():
    assert cut_at_stop("Hello###world END", ("END", "###")) == ("Hello", True)
    assert cut_at_stop("Hello", ("###",)) == ("Hello", False)


def test_stream_holds_back_a_possible_stop_prefix():
    assert _held_back("answer #", ("###",)) == 1
    assert _held_back("answer ##", ("###",)) == 2
    assert _held_back("answer", ("###",)) == 0
    assert _held_back("结束语<|im_", ("<|im_start|>",)) == 5


def test_result_usage_and_prompt_too_long_message():
    r = GenerationResult("hi", prompt_tokens=7, completion_tokens=2, finish_reason="stop")
    assert r.as_dict()["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    e = PromptTooLongError(5000, 2048, 256)
    assert "5000" in str(e) and "1792" in str(e) and "max_new_tokens" in str(e)
