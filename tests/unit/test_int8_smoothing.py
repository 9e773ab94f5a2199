"""The int8 fast path's smoothing is an exact rewrite in fp32 and makes int8 closer to fp32.

Tiny random Llama and Gemma 3 models built from their configs (no download): the folds differ (Gemma's norms
scale by 1 + weight, it normalises the MLP input with pre_feedforward_layernorm, and its head is tied)."""

import torch
from transformers import Gemma3TextConfig, LlamaConfig
from transformers import Gemma3ForCausalLM, LlamaForCausalLM

from domaintune.generation.engine import quantize_int8
from domaintune.generation.smoothing import _groups, activation_maxima, smooth


def _llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _gemma():
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=8)
    return Gemma3ForCausalLM(cfg).eval()


def _with_outliers(model):
    """Give a few hidden channels 50x larger activations, as trained small LMs have."""
    with torch.no_grad():
        model.get_input_embeddings().weight[:, :3] *= 50.0
        for module in model.modules():
            if hasattr(module, "up_proj"):
                module.up_proj.weight[:4] *= 20.0
    return model


def _batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 300, (1, 24), generator=g) for _ in range(n)]


def test_smoothing_is_exact_in_fp32_and_leaves_the_embedding_alone():
    for build in (_llama, _gemma):
        model = _with_outliers(build())
        ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(2))
        embedding = model.get_input_embeddings().weight.detach().clone()
        with torch.no_grad():
            ref = model(ids).logits
            maxima = activation_maxima(model, _batches())
            groups = len(_groups(model))
            assert smooth(model, maxima) == groups == 2 * 3 + 1  # per layer: qkv, gate/up, up->down; + head
            out = model(ids).logits
        assert torch.allclose(out, ref, atol=1e-4 * float(ref.abs().max()) + 1e-5), build.__name__
        assert torch.equal(model.get_input_embeddings().weight, embedding)  # the tied head was untied first


def test_smoothed_int8_is_closer_to_fp32_than_plain_int8():
    model = _with_outliers(_llama())
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids).logits
        maxima = activation_maxima(model, _batches())
        plain = (quantize_int8(model)(ids).logits - ref).abs().mean()
        smoothed = (quantize_int8(model, maxima)(ids).logits - ref).abs().mean()
        again = model(ids).logits
    assert torch.equal(again, ref)  # the fp32 model is not modified by quantize_int8
    assert smoothed < plain, (float(smoothed), float(plain))
