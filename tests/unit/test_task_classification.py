import torch
from transformers import BertConfig, BertForSequenceClassification

from domaintune.methods import METHODS, get_method
from domaintune.methods.head_init import probe_init_head
from domaintune.tasks import TASKS, get_task


def tiny_model(num_labels=3):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, initializer_range=0.5,
                     num_labels=num_labels)
    return BertForSequenceClassification(cfg)


def test_registries():
    assert "classification" in TASKS and "full" in METHODS
    assert get_task("classification").name == "classification"


def test_collate_pads_to_longest_in_batch_and_decode_topk():
    task = get_task("classification")
    batch = task.collate([{"input_ids": [1, 2, 3], "labels": 0}, {"input_ids": [4], "labels": 2}], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]] and batch["labels"].tolist() == [0, 2]
    task.labels = ["正面", "负面", "中性"]
    out = task.decode(torch.tensor([[0.0, 2.0, 1.0]]), top_k=2)
    assert out[0]["label"] == "负面" and [t["label"] for t in out[0]["top_k"]] == ["负面", "中性"]
    assert abs(sum(torch.softmax(torch.tensor([0.0, 2.0, 1.0]), -1).tolist()) - 1) < 1e-6


def test_no_weight_decay_on_bias_and_layernorm():
    model = tiny_model()
    decay, no_decay = get_method("full").parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("LayerNorm" in names[id(p)] or names[id(p)].endswith("bias") or p.ndim < 2 for p in no_decay["params"])
    assert all(p.ndim == 2 for p in decay["params"]) and decay["weight_decay"] == 0.01


def test_probe_init_fits_head_on_frozen_features():
    model = tiny_model()
    feats, targets = [], []
    for i in range(90):  # the label is carried by a marker token
        label = i % 3
        feats.append({"input_ids": [2, 10 + label, 5 + i % 4, 3]})
        targets.append(label)
    before = [p.clone() for n, p in model.named_parameters() if not n.startswith("classifier")]
    task = get_task("classification")
    stats = probe_init_head(model, feats, targets, task.collate, 0, bf16=False)
    assert stats["train_accuracy"] >= 0.9
    after = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "the encoder must stay frozen during the probe"
    assert model.classifier.weight.abs().sum() > 0


def test_pair_examples_get_token_type_ids_and_collate_keeps_them():
    from transformers import AutoTokenizer

    from domaintune.data.readers import Example
    from domaintune.models import resolve_model
    from domaintune.tasks.classification import encode_texts

    tok = AutoTokenizer.from_pretrained(str(resolve_model("minilm-l6")))
    feats = encode_texts(tok, [Example("how do I reset my pin", "same", text_pair="forgot pin code")], 32)
    assert 1 in feats[0]["token_type_ids"] and len(feats[0]["token_type_ids"]) == len(feats[0]["input_ids"])
    batch = get_task("classification").collate(feats + [{"input_ids": [101, 102], "token_type_ids": [0, 0]}], 0)
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
