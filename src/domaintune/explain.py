"""Per-token explanations of one prediction: which words pushed the model towards its label.

Compliance and quality teams ask *why* a ticket was labelled `safety_incident`;
"the model said so" is not an answer, a highlighted text is. `explain` returns
one signed score per sub-word token, with character offsets into the original
text, and `to_html` renders it as a self-contained coloured snippet.

Two methods, chosen by `method="auto"`:

* **integrated gradients** (IG, Sundararajan et al. 2017) on the input
  embedding layer, from a baseline where every token is padding (special
  tokens kept). IG is faithful for differentiable models: the attributions add
  up to logit(text) - logit(baseline) (completeness); `convergence_delta` is
  how far the `n_steps` approximation is from that sum. Needs a torch model
  with one input embedding layer that sees exactly our token ids.
* **occlusion**: replace one token at a time by padding and measure how much
  the label's probability drops (the output itself for regression). Forward
  passes only, so it works for any backend (an ONNX export, an ensemble, an LM
  label scorer); it costs one forward per token.

Attributions are divided by their sum of absolute values, so they are shares of
the explanation with their sign kept (positive: towards the explained label).
What is explained: the predicted (or `target`) class of single-label and pair
classification, one label's logit for multi-label (the given or most probable
label), the single output for regression and pair scoring. Text past the run's
`max_length` is truncated, as in `predict`, and not explained.
"""

from __future__ import annotations

import html
import math

import torch

METHODS = {"auto": "auto", "ig": "integrated_gradients", "integrated_gradients": "integrated_gradients",
           "occlusion": "occlusion"}
#: Attribution target by the task's declared `output_activation` (tasks/base.py).
KIND_BY_ACTIVATION = {"softmax": "softmax", "sigmoid": "sigmoid", "identity": "value"}


def _kind(task) -> str:
    """How the model's output becomes a score: softmax (one label), sigmoid (multi-label) or value (regression)."""
    if task.explain_refusal:  # e.g. NER (already per token), a bi-encoder pair run
        raise ValueError(task.explain_refusal)
    kind = KIND_BY_ACTIVATION.get(task.output_activation or "")
    if kind is None:
        from domaintune.tasks import task_names_where

        names = task_names_where(lambda t: not t.explain_refusal and t.output_activation in KIND_BY_ACTIVATION)
        listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)
        raise ValueError(f"explanations support {listed} runs, not {task.name!r}")
    return kind


def _encode(predictor, text, text_pair):
    """The model batch plus, per token: string, (start, end) in its own text, segment, special flag."""
    tok = predictor.tokenizer
    if not getattr(tok, "is_fast", False):
        raise ValueError("explanations need a fast (Rust) tokenizer: it gives each token's character offsets")
    ex = predictor.examples([text if text_pair is None else (text, text_pair)])[0]
    features = predictor.features([ex])
    enc = tok(ex.text, ex.text_pair, truncation=True, max_length=predictor.max_length,
              return_offsets_mapping=True, return_special_tokens_mask=True)
    ids = list(features[0]["input_ids"])
    if list(enc["input_ids"]) != ids:  # offsets must describe exactly the ids the model sees
        raise RuntimeError("the task's encoding differs from the tokenizer's; cannot map tokens to characters")
    segments = enc.sequence_ids()
    special = [bool(s) or seg is None for s, seg in zip(enc["special_tokens_mask"], segments)]
    batch = predictor.task.collate(features, predictor.pad_id)
    batch.pop("labels", None)
    return ex, batch, tok.convert_ids_to_tokens(ids), list(enc["offset_mapping"]), segments, special


def input_embeddings(model) -> torch.nn.Module | None:
    """The model's one input embedding layer, found through wrappers (PEFT, pooled heads), else None.

    Every submodule with `get_input_embeddings` (a PeftModel's base model, a
    pooled classifier's encoder) is asked; several distinct layers (an
    ensemble of runs) mean there is no single layer to attribute to.
    """
    if not isinstance(model, torch.nn.Module):
        return None
    found: dict[int, torch.nn.Module] = {}
    for m in model.modules():
        owners = [m]
        if callable(getattr(m, "get_base_model", None)):  # a PeftModel: its base model owns the embeddings
            owners.append(m.get_base_model())
        for owner in owners:
            try:
                emb = owner.get_input_embeddings() if callable(getattr(owner, "get_input_embeddings", None)) else None
            except (AttributeError, NotImplementedError, TypeError):
                continue
            if isinstance(emb, torch.nn.Module):
                found[id(emb)] = emb
    return next(iter(found.values())) if len(found) == 1 else None


def _logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch).logits
    out = out if isinstance(out, torch.Tensor) else torch.as_tensor(out)
    return out.detach().float().reshape(out.shape[0], -1)


def _probe(model, batch: dict, layer) -> tuple[torch.Tensor, bool]:
    """Logits for the text, and whether `layer` is called exactly once on exactly our token ids
    (a model that re-tokenises into a prompt, like the LM label scorer, cannot be explained by IG)."""
    calls: list[bool] = []
    hook = None
    if layer is not None:
        ids = batch["input_ids"]
        hook = layer.register_forward_pre_hook(
            lambda _m, args: calls.append(bool(args) and isinstance(args[0], torch.Tensor)
                                          and args[0].shape == ids.shape and bool(torch.equal(args[0], ids))))
    try:
        logits = _logits(model, batch)
    finally:
        if hook is not None:
            hook.remove()
    return logits, calls == [True]


def _integrated_gradients(model, layer, batch: dict, special: list[bool], index: int, pad_id: int, n_steps: int,
                          internal_batch_size: int) -> tuple[torch.Tensor, float]:
    from captum.attr import LayerIntegratedGradients

    keys = [k for k in batch if k != "input_ids"]

    def forward(input_ids, *rest):
        return model(input_ids=input_ids, **dict(zip(keys, rest))).logits.reshape(input_ids.shape[0], -1)

    ids = batch["input_ids"]
    keep = torch.tensor(special, dtype=torch.bool).unsqueeze(0)
    baseline = torch.where(keep, ids, torch.full_like(ids, pad_id))
    # Gradients only here, and never into an inference-mode caller's tensors.
    with torch.inference_mode(False), torch.enable_grad():
        attr, delta = LayerIntegratedGradients(forward, layer).attribute(
            ids.clone(), baselines=baseline, target=index, additional_forward_args=tuple(batch[k].clone() for k in keys),
            n_steps=n_steps, internal_batch_size=internal_batch_size, return_convergence_delta=True)
    return attr.detach().sum(-1)[0].float(), float(delta.reshape(-1)[0])


def _occlusion(model, batch: dict, positions: list[int], score, pad_id: int, chunk: int) -> torch.Tensor:
    """Drop in `score` when each position is replaced by padding (attention kept): len(positions) forwards."""
    base = score(_logits(model, batch))[0]
    drops = torch.zeros(batch["input_ids"].shape[1])
    for c in range(0, len(positions), chunk):
        pos = positions[c:c + chunk]
        b = {k: v.repeat(len(pos), *([1] * (v.dim() - 1))) for k, v in batch.items()}
        b["input_ids"][torch.arange(len(pos)), torch.tensor(pos)] = pad_id
        drops[pos] = base - score(_logits(model, b))
    return drops


def explain(predictor, text, target: str | None = None, method: str = "auto", n_steps: int = 32,
            text_pair: str | None = None, *, internal_batch_size: int = 8) -> dict:
    """Signed per-token attributions for one prediction of `predictor` (a domaintune Predictor).

    Returns {"label", "score", "method", "tokens", "html", "convergence_delta", "text", "text_pair"}:
    `tokens` holds the non-special sub-word tokens, each {"token", "start", "end", "attribution"}
    with offsets into the original text (and "segment": 0/1 for a pair, offsets into text/text_pair);
    `score` is the explained label's probability (the predicted value for regression);
    `convergence_delta` is IG's completeness error (None for occlusion). `internal_batch_size`
    bounds how many interpolated (or occluded) copies of the text go through the model at once.
    Raises ValueError for an NER run, an unknown `target` label or `method`.
    """
    kind = _kind(predictor.task)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use auto, ig (integrated gradients) or occlusion")
    method = METHODS[method]
    labels = list(predictor.labels or [])
    if kind == "value" and target is not None:
        raise ValueError("this run predicts a single number, which has no labels: explain it without a target label")
    if target is not None and target not in labels:
        raise ValueError(f"unknown label {target!r}; this run's labels are: {', '.join(labels)}")
    ex, batch, toks, offsets, segments, special = _encode(predictor, text, text_pair)
    model = predictor.model
    if hasattr(model, "eval"):
        model.eval()  # dropout off: explanations must be deterministic, and the model stays in eval mode
    layer = input_embeddings(model) if method != "occlusion" else None
    logits, ig_ok = _probe(model, batch, layer)
    if method == "integrated_gradients" and not ig_ok:
        raise ValueError("integrated gradients need a torch model with a single input embedding layer fed the "
                         "token ids (not an ONNX export, ensemble or LM scorer): use method='occlusion'")
    method = "integrated_gradients" if method == "integrated_gradients" or (method == "auto" and ig_ok) else "occlusion"

    if kind == "value":
        index, label = 0, None
        value = predictor.task.value_from_output(float(logits[0, 0]))
        score_fn = lambda lg: lg[:, 0]  # noqa: E731
    else:
        index = labels.index(target) if target is not None else int(logits[0].argmax())
        label = labels[index] if index < len(labels) else str(index)
        if kind == "softmax":
            score_fn = lambda lg: torch.softmax(lg, -1)[:, index]  # noqa: E731
        else:
            score_fn = lambda lg: torch.sigmoid(lg[:, index])  # noqa: E731
        value = float(score_fn(logits)[0])

    positions = [i for i, s in enumerate(special) if not s]
    delta = None
    if method == "integrated_gradients":
        raw, delta = _integrated_gradients(model, layer, batch, special, index, predictor.pad_id, n_steps,
                                           internal_batch_size)
    else:
        raw = _occlusion(model, batch, positions, score_fn, predictor.pad_id, internal_batch_size)
    total = float(raw[positions].abs().sum()) if positions else 0.0
    tokens = []
    for i in positions:
        a = float(raw[i]) / total if total > 0 else 0.0
        entry = {"token": toks[i], "start": int(offsets[i][0]), "end": int(offsets[i][1]),
                 "attribution": a if math.isfinite(a) else 0.0}
        if ex.text_pair is not None:
            entry["segment"] = int(segments[i])
        tokens.append(entry)
    result = {"label": label, "score": value, "method": method, "tokens": tokens, "convergence_delta": delta,
              "text": ex.text, "text_pair": ex.text_pair}
    result["html"] = to_html(result)
    return result


# ---- rendering ------------------------------------------------------------------------------
POSITIVE, NEGATIVE = (220, 38, 38), (37, 99, 235)  # red: towards the label, blue: against it


def _render(text: str, tokens: list[dict], scale: float) -> str:
    spans: dict[tuple[int, int], list] = {}
    for t in tokens:  # byte-level tokenizers can give several tokens one character span: merge them
        if t["end"] > t["start"]:
            s = spans.setdefault((t["start"], t["end"]), [[], 0.0])
            s[0].append(t["token"])
            s[1] += t["attribution"]
    parts, cursor = [], 0
    for (start, end), (names, a) in sorted(spans.items()):
        start = max(start, cursor)
        if end <= start:
            continue
        parts.append(html.escape(text[cursor:start]))
        r, g, b = POSITIVE if a >= 0 else NEGATIVE
        alpha = min(1.0, abs(a) / scale) * 0.85 if scale > 0 else 0.0
        tip = f"{' '.join(names)}: {a:+.4f}"
        parts.append(f'<span style="background-color: rgba({r}, {g}, {b}, {alpha:.3f}); border-radius: 3px; '
                     f'padding: 0 1px;" title="{html.escape(tip, quote=True)}">{html.escape(text[start:end])}</span>')
        cursor = end
    parts.append(html.escape(text[cursor:]))
    return "".join(parts)


def to_html(result: dict) -> str:
    """A self-contained HTML snippet (inline styles, no scripts): the original text with each token's
    background red (towards the label) or blue (against), opacity by magnitude, the value as a tooltip."""
    tokens = result.get("tokens") or []
    scale = max((abs(t["attribution"]) for t in tokens), default=0.0)
    label = "value" if result.get("label") is None else f"label {result['label']}"
    head = (f'<div style="font-size: 0.85em; color: #555; margin-bottom: 4px;">{html.escape(label)} '
            f'(score {result.get("score", 0.0):.4f}), {html.escape(str(result.get("method", "")))}: '
            f'<span style="background-color: rgba({", ".join(map(str, POSITIVE))}, 0.6);">towards</span> / '
            f'<span style="background-color: rgba({", ".join(map(str, NEGATIVE))}, 0.6);">against</span></div>')
    body = [_render(result.get("text") or "", [t for t in tokens if t.get("segment", 0) == 0], scale)]
    if result.get("text_pair") is not None:
        body.append(_render(result["text_pair"], [t for t in tokens if t.get("segment") == 1], scale))
    texts = '<hr style="border: none; border-top: 1px solid #ccc;">'.join(
        f'<div style="white-space: pre-wrap;">{b}</div>' for b in body)
    return f'<div style="font-family: sans-serif; line-height: 1.8;">{head}{texts}</div>'
