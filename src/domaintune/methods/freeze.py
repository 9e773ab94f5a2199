"""Freezing strategies for full fine-tuning (`freeze:` in the config).

* `head_only: true` - only the task head trains: a linear probe over the frozen
  encoder (the fastest and most stable choice with very few labels);
* `top_k_layers: N` - the top N transformer layers, what sits above them (BERT's
  pooler, a final LayerNorm) and the head train; embeddings and lower layers stay
  frozen (lower layers hold the general features, Howard & Ruder 2018);
* `freeze_embeddings: true` - the embedding layer stays frozen (saves a third of a
  small encoder's optimizer state and protects rare-token embeddings on small data).

Written here rather than taken from a library: transformers and peft offer no
layer-wise freezing, and this is a few `requires_grad_` calls once the body, its
layer list and its embeddings are found, which is the only model-specific part.
"""

from __future__ import annotations

from torch import nn


class FreezeError(ValueError):
    """A freeze option that does not fit the model (with what to change)."""


def _unwrap(model: nn.Module) -> nn.Module:
    from domaintune.tasks.regression import _LossOverride

    return model.model if isinstance(model, _LossOverride) else model


def find_body(model: nn.Module) -> tuple[str, nn.Module]:
    """(name, module) of the pretrained encoder inside a task model; the rest is the head.

    HF task models keep it under `base_model_prefix` (`bert`, `roberta`, ...); domaintune's
    own heads (FeatureRegressor, PooledClassifier, BiEncoder) keep it as `.encoder`.
    """
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None) if prefix else None
    if isinstance(body, nn.Module) and body is not model:
        return prefix, body
    enc = getattr(model, "encoder", None)
    if isinstance(enc, nn.Module) and hasattr(enc, "config"):
        return "encoder", enc
    raise FreezeError(f"cannot find the pretrained encoder inside {type(model).__name__} "
                      f"(no `{prefix or 'base_model_prefix'}` or `encoder` attribute); remove the freeze: options")


def find_layers(body: nn.Module) -> tuple[str, nn.ModuleList]:
    """The stack of transformer layers: the ModuleList with config.num_hidden_layers entries."""
    n = getattr(getattr(body, "config", None), "num_hidden_layers", None)
    for name, m in body.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0 and (n is None or len(m) == n):
            return name, m
    raise FreezeError(f"cannot find the transformer layers of {type(body).__name__}; freeze.top_k_layers needs a "
                      f"model with a layer list (BERT-style encoders); use freeze.head_only or no freezing")


def find_embeddings(body: nn.Module) -> tuple[str, nn.Module]:
    emb = getattr(body, "embeddings", None)
    if isinstance(emb, nn.Module):
        return "embeddings", emb
    emb = body.get_input_embeddings() if hasattr(body, "get_input_embeddings") else None
    if isinstance(emb, nn.Module):
        name = next((n for n, m in body.named_modules() if m is emb), "input_embeddings")
        return name, emb
    raise FreezeError(f"cannot find the embedding layer of {type(body).__name__}; remove freeze.freeze_embeddings")


def _freeze(module: nn.Module) -> int:
    n = 0
    for p in module.parameters():
        p.requires_grad_(False)
        n += p.numel()
    return n


def apply_freezing(model: nn.Module, section) -> dict:
    """Set requires_grad per `section` (a FreezeSection); return what is frozen, for the report.

    Everything not frozen here keeps its current requires_grad (the caller makes all
    weights trainable first). Raises FreezeError when options conflict or the model
    has no head to train.
    """
    head_only = bool(getattr(section, "head_only", False))
    top_k = getattr(section, "top_k_layers", None)
    freeze_emb = bool(getattr(section, "freeze_embeddings", False))
    if not (head_only or top_k is not None or freeze_emb):
        return {}
    if head_only and top_k is not None:
        raise FreezeError(f"freeze.head_only and freeze.top_k_layers={top_k} exclude each other: head_only trains "
                          f"no encoder layer; set one of them (top_k_layers: 0 also leaves the pooler trainable)")
    model = _unwrap(model)
    body_name, body = find_body(model)
    body_params = {id(p) for p in body.parameters()}
    head = [n for n, p in model.named_parameters() if id(p) not in body_params]
    if (head_only or top_k is not None) and not head:
        raise FreezeError(f"{type(model).__name__} has no task head outside its encoder (e.g. a retrieval "
                          f"bi-encoder), so freeze.head_only/top_k_layers would train nothing; use freeze_embeddings")
    frozen: list[str] = []
    if head_only:
        _freeze(body)
        frozen.append(body_name)
    else:
        if top_k is not None:
            layers_name, layers = find_layers(body)
            if top_k > len(layers):
                raise FreezeError(f"freeze.top_k_layers={top_k} but the model has {len(layers)} layers; "
                                  f"use 0..{len(layers)}")
            for i in range(len(layers) - top_k):
                _freeze(layers[i])
            if len(layers) - top_k:
                frozen.append(f"{body_name}.{layers_name}.0-{len(layers) - top_k - 1}")
            freeze_emb = True  # below the lowest trained layer: nothing under it trains
        if freeze_emb:
            emb_name, emb = find_embeddings(body)
            _freeze(emb)
            frozen.append(f"{body_name}.{emb_name}")
    trainable = sorted({_group(n) for n, p in model.named_parameters() if p.requires_grad})
    return {"head_only": head_only, "top_k_layers": top_k, "freeze_embeddings": freeze_emb,
            "frozen": frozen, "head_parameters": sorted(head),
            "trainable_modules": _compact(trainable)}


def _group(name: str) -> str:
    """A parameter's reporting group: up to its layer index (`bert.encoder.layer.5`), else its module."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[: min(2, len(parts) - 1)])


def _compact(names: list[str], limit: int = 40) -> list[str]:
    return names if len(names) <= limit else names[:limit] + [f"... {len(names) - limit} more"]


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that will train (tests and debugging)."""
    return [n for n, p in _unwrap(model).named_parameters() if p.requires_grad]


__all__ = ["FreezeError", "apply_freezing", "find_body", "find_embeddings", "find_layers", "trainable_names"]
