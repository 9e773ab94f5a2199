"""FGM / PGD / R-Drop (domaintune.training.robust) on the real minilm-l6 weights."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from domaintune.config_methods import RobustSection
from domaintune.models import resolve_model
from domaintune.training.robust import RobustStep, _doubled, make_robust_step, symmetric_divergence, word_embedding

TEXTS = ["the pump is leaking oil", "replace the broken fuse", "worker slipped on the wet floor", "需要更换轴承"]


@pytest.fixture(scope="module")
def setup():
    path = resolve_model("minilm-l6")
    tok = AutoTokenizer.from_pretrained(str(path))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=3, dtype=torch.float32)
    batch = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([0, 1, 2, 0])
    return model, batch


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fgm_changes_gradients_and_restores_embeddings_exactly(setup):
    model, batch = setup
    model.eval()  # no dropout: the only difference between the two steps is the adversarial pass
    emb = word_embedding(model)
    assert emb is model.get_input_embeddings().weight
    before = emb.detach().clone()

    model.zero_grad(set_to_none=True)
    plain_loss = model(**batch).loss
    plain_loss.backward()
    plain = grads(model)

    model.zero_grad(set_to_none=True)
    step = make_robust_step(model, RobustSection(adversarial="fgm", epsilon=1.0))
    logged = step(batch, 1.0)
    adv = grads(model)

    assert torch.equal(emb.detach(), before)  # bit-for-bit restore
    assert logged == pytest.approx(plain_loss.item(), rel=1e-5)  # the clean loss is what is logged
    assert set(adv) == set(plain)
    changed = [n for n in plain if not torch.allclose(plain[n], adv[n], atol=1e-7)]
    assert len(changed) > len(plain) // 2  # the adversarial pass adds its own gradient everywhere

    # FGM's gradient is the clean gradient plus the gradient at embeddings + eps * g / ||g||.
    g = plain["bert.embeddings.word_embeddings.weight"]
    with torch.no_grad():
        emb.add_(g, alpha=1.0 / float(g.norm()))
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    with torch.no_grad():
        emb.copy_(before)
    expected = {n: plain[n] + p for n, p in grads(model).items()}
    for n in ("classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"):
        assert torch.allclose(adv[n], expected[n], atol=1e-6), n
    model.zero_grad(set_to_none=True)


def test_fgm_keeps_earlier_micro_batches_and_frozen_embeddings(setup):
    model, batch = setup
    model.eval()
    emb = word_embedding(model)
    before = emb.detach().clone()
    # Gradient accumulation: a first micro-batch's gradient must survive and must not steer the attack.
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    first = grads(model)
    step = RobustStep(model, RobustSection(adversarial="fgm"))
    step(batch, 0.5)
    assert torch.equal(emb.detach(), before)
    assert not torch.allclose(grads(model)["classifier.weight"], first["classifier.weight"])

    # Frozen embeddings (PEFT, freeze_embeddings): perturbed and restored, but never given a gradient.
    model.zero_grad(set_to_none=True)
    emb.requires_grad_(False)
    try:
        step(batch, 1.0)
        assert emb.grad is None and not emb.requires_grad
        assert torch.equal(emb.detach(), before)
        assert model.classifier.weight.grad is not None
    finally:
        emb.requires_grad_(True)
        model.zero_grad(set_to_none=True)


def test_pgd_restores_and_stays_in_the_ball(setup):
    model, batch = setup
    model.eval()
    emb = word_embedding(model)
    before = emb.detach().clone()
    cfg = RobustSection(adversarial="pgd", epsilon=0.5, pgd_steps=3, pgd_alpha=0.3)
    step = RobustStep(model, cfg)
    # the projection keeps the accumulated perturbation within epsilon
    with torch.no_grad():
        emb.add_(torch.ones_like(emb))
    step._project(before)
    assert float((emb.detach() - before).norm()) == pytest.approx(0.5, rel=2e-2)  # float32 cancellation
    with torch.no_grad():
        emb.copy_(before)
    model.zero_grad(set_to_none=True)
    step(batch, 1.0)
    assert torch.equal(emb.detach(), before)
    assert model.classifier.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_rdrop_loss_includes_the_kl_term(setup):
    model, batch = setup
    model.train()  # dropout on: the two passes differ
    step = RobustStep(model, RobustSection(rdrop_alpha=4.0))
    assert step.emb is None
    torch.manual_seed(1)
    loss = step.task_loss(batch, False)
    torch.manual_seed(1)
    out = model(**_doubled(batch))
    a, b = out.logits.chunk(2)
    kl = symmetric_divergence(a, b, batch["labels"])
    assert float(kl) > 0
    assert float(step.last_kl) == pytest.approx(float(kl), rel=1e-5)
    assert float(loss) == pytest.approx(float(out.loss + 4.0 * kl), rel=1e-5)
    assert float(loss) > float(out.loss)
    model.eval()  # without dropout the two passes agree: no consistency penalty
    with torch.no_grad():
        step.task_loss(batch, False)
    assert float(step.last_kl) == pytest.approx(0.0, abs=1e-6)
    model.zero_grad(set_to_none=True)


def test_divergence_per_task_shape():
    a = torch.tensor([[2.0, 0.0, -1.0]])
    b = torch.tensor([[0.0, 1.0, 0.5]])
    pa, pb = a.softmax(-1), b.softmax(-1)
    expected = 0.5 * ((pa * (pa / pb).log()).sum() + (pb * (pb / pa).log()).sum())
    assert float(symmetric_divergence(a, b, torch.tensor([0]))) == pytest.approx(float(expected), rel=1e-5)
    # NER: ignored positions (-100) do not count
    ta, tb = torch.stack([a, a]).transpose(0, 1), torch.stack([b, a]).transpose(0, 1)  # [1, 2, 3]
    assert float(symmetric_divergence(ta, tb, torch.tensor([[1, -100]]))) == pytest.approx(float(expected), rel=1e-5)
    # regression: squared difference; multi-label: Bernoulli KL, zero for equal logits
    assert float(symmetric_divergence(torch.tensor([[1.0]]), torch.tensor([[3.0]]), torch.tensor([[0.5]]))) == 4.0
    assert float(symmetric_divergence(a, a, torch.tensor([[1.0, 0.0, 1.0]]))) == pytest.approx(0.0, abs=1e-7)
    assert float(symmetric_divergence(a, b, torch.tensor([[1.0, 0.0, 1.0]]))) > 0


def test_train_run_with_fgm_and_rdrop(tmp_path, tiny_splits):
    from support import tiny_config_path

    from domaintune.config import load_config
    from domaintune.run import train_run

    out = tmp_path / "robust"
    cfg = load_config(tiny_config_path(tmp_path, tiny_splits, out, baseline_off=True, max_steps=3),
                      ["robust.adversarial=fgm", "robust.rdrop_alpha=1.0"])
    metrics = train_run(cfg)
    assert metrics["train"]["global_step"] == 3
    rows = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines() if '"loss"' in l]
    assert rows and all(r["loss"] > 0 for r in rows)
    assert (out / "model" / "config.json").is_file()


def test_no_embedding_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="robust.adversarial"):
        word_embedding(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("method,sets,warns", [
    ("zeroshot", [], True),
    ("fewshot", [], True),                          # head_epochs 0: no cross-entropy step to perturb
    ("fewshot", ["fewshot.head_epochs=1"], False),  # the end-to-end phase runs through the robust trainer
    ("full", [], False),
])
def test_methods_that_ignore_robust_say_so(method, sets, warns, caplog):
    import logging

    from domaintune.config import load_config
    from domaintune.methods import get_method

    cfg = load_config(None, [f"method={method}", "robust.adversarial=fgm", "data.train=x.csv", *sets])
    with caplog.at_level(logging.WARNING, "domaintune"):
        get_method(method).configure(cfg)
    assert ("no effect" in caplog.text) is warns, caplog.text
