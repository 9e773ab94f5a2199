"""Encoding conversations for supervised fine-tuning, checked on the real packaged SmolLM2 (fp32, eval mode):
loss only on the assistant's tokens of every turn, truncation that never cuts a reply and counts what it
dropped, and packing that gives every example exactly the loss it has alone - with negative controls that
show the comparison can fail."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from domaintune.data import DataError
from domaintune.data.chat import Conversation
from domaintune.tasks.generation_encoding import (IGNORE_INDEX, ChatTemplateError, collate, collate_packed,
                                                  encode_conversation, encode_conversations, pack,
                                                  resolve_chat_format)
from lm_support import smollm2_dir  # noqa: F401 - session fixture

SYSTEM = "You are the maintenance desk of a bottling plant."
CHAT = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Filler 2 stops every few minutes with alarm E04."},
    {"role": "assistant", "content": "E04 is low air pressure. Check that the compressor runs at 6 bar."},
    {"role": "user", "content": "It runs at 6 bar."},
    {"role": "assistant", "content": "a"},  # a one-letter reply must not be found inside "assistant"
    {"role": "user", "content": "三号灌装机还是报警，怎么办？"},
    {"role": "assistant", "content": "请检查气管是否漏气，并更换损坏的接头。"},
]
REPLIES = [m["content"] for m in CHAT if m["role"] == "assistant"]


def _runs(ids, labels):
    """Maximal runs of labelled tokens, as lists of ids."""
    runs, cur = [], []
    for t, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == t  # a labelled position is trained to predict its own token
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, smollm2_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, attn_implementation=request.param)
    assert m.config._attn_implementation == request.param
    return m.eval()


def test_only_assistant_tokens_carry_loss_every_turn(tok):
    fmt = resolve_chat_format(tok)
    assert fmt.origin == "model" and not fmt.generation_tags  # SmolLM2 ships plain ChatML, no {% generation %}
    ids, labels = encode_conversation(tok, CHAT, fmt)
    assert ids == tok.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]  # same tokens
    assert [tok.decode(r) for r in _runs(ids, labels)] == [r + "<|im_end|>" for r in REPLIES]
    # Everything else - system prompt, user turns, every template token (headers, the newline after
    # <|im_end|>) - is unlabelled: the text minus the replies is exactly what carries no loss.
    rest = tok.apply_chat_template(CHAT, tokenize=False)
    for r in REPLIES:
        assert "assistant\n" + r + "<|im_end|>" in rest
        rest = rest.replace("assistant\n" + r + "<|im_end|>", "assistant\n", 1)
    assert tok.decode([t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX]) == rest


def test_generation_tag_template_gives_the_same_labels(tok):
    """transformers' return_assistant_tokens_mask path, with SmolLM2's template marked up by hand, agrees
    with the incremental-rendering path on the original template."""
    tagged = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
              "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
              "{% endgeneration %}{{ '\n' }}{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
              "{% endfor %}")
    fmt = resolve_chat_format(tok, tagged)
    assert fmt.generation_tags and fmt.origin == "config"
    assert encode_conversation(tok, CHAT, fmt) == encode_conversation(tok, CHAT)


def test_default_template_and_templates_that_cannot_be_used(tok):
    fmt = resolve_chat_format(tok, "default")
    ids, labels = encode_conversation(tok, CHAT, fmt)
    text = tok.decode(ids)
    assert text.startswith(tok.bos_token + "<|im_start|>system\n" + SYSTEM + tok.eos_token + "\n")
    assert [tok.decode(r) for r in _runs(ids, labels)] == [r + tok.eos_token for r in REPLIES]
    # A template that renders a message differently once later turns follow would train on text never seen.
    rewriting = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "{% if loop.last %} (latest){% endif %}<|im_end|>\n{% endfor %}")
    with pytest.raises(ChatTemplateError, match="renders earlier turns differently"):
        encode_conversation(tok, CHAT, resolve_chat_format(tok, rewriting))
    with pytest.raises(ChatTemplateError, match="the config chat template does not compile"):
        resolve_chat_format(tok, "{% for m in messages %}{{ m['content'] }}")
    # A template that refuses a conversation (Gemma's "roles must alternate") -> DataError with file:line.
    strict = ("{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
              "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
              "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    convs = [Conversation(CHAT[1:3], "qa.jsonl", 1),
             Conversation([CHAT[1], CHAT[3], CHAT[2]], "qa.jsonl", 2)]
    with pytest.raises(DataError, match=r"qa.jsonl:2: the chat template refused this conversation: "
                                        r"Conversation roles must alternate"):
        encode_conversations(tok, convs, 512, chat_template=strict)


def test_truncation_drops_whole_turns_and_counts_them(tok):
    sub = lambda *idx: [CHAT[i] for i in idx]  # noqa: E731
    n_full = len(encode_conversation(tok, CHAT)[0])
    n_last_two = len(encode_conversation(tok, sub(0, 3, 4, 5, 6))[0])
    n_last = len(encode_conversation(tok, sub(0, 5, 6))[0])
    assert n_last < n_last_two < n_full
    short = Conversation(sub(0, 1, 2), "chat.jsonl", 7)
    for max_length, dropped, replies_left in [(n_full, 0, REPLIES), (n_full - 1, 2, REPLIES[1:]),
                                              (n_last_two, 2, REPLIES[1:]), (n_last_two - 1, 4, REPLIES[2:]),
                                              (n_last, 4, REPLIES[2:])]:
        out, stats = encode_conversations(tok, [Conversation(CHAT, "chat.jsonl", 3), short], max_length)
        assert stats.encoded == 2 and stats.dropped == 0
        assert (stats.truncated, stats.messages_dropped, stats.replies_dropped) == \
            ((1, dropped, dropped // 2) if dropped else (0, 0, 0))
        ex = out[0]
        assert len(ex.input_ids) <= max_length and ex.messages_dropped == dropped
        assert [tok.decode(r) for r in _runs(ex.input_ids, ex.labels)] == [r + "<|im_end|>" for r in replies_left]
        assert tok.decode(ex.input_ids).startswith("<|im_start|>system\n" + SYSTEM)  # the system message stays
    out, stats = encode_conversations(tok, [Conversation(CHAT, "chat.jsonl", 3), short], n_last - 1)
    assert stats.dropped == 1 and stats.encoded == 1 and [e.line for e in out] == [7]
    (w,) = stats.warnings
    assert w.warning and str(w).startswith(f"chat.jsonl:3: left out: its last exchange is {n_last} tokens")
    assert stats.as_dict()["dropped"] == 1 and "1 left out" in stats.summary()


def test_collate_pads_right_and_keeps_the_end_of_turn_label(tok):
    out, _ = encode_conversations(tok, [Conversation(CHAT, "a", 1), Conversation(CHAT[:3], "a", 2)], 512)
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2 pads with <|im_end|>: padding must go by length
    batch = collate(out, tok.pad_token_id)
    n0, n1 = len(out[0].input_ids), len(out[1].input_ids)
    assert batch["input_ids"].shape == (2, n0) and batch["attention_mask"][1].tolist() == [1] * n1 + [0] * (n0 - n1)
    assert batch["labels"][1, n1:].eq(IGNORE_INDEX).all() and batch["labels"][1, :n1].tolist() == out[1].labels
    assert batch["labels"][1, n1 - 2] == tok.eos_token_id  # the reply's <|im_end|> keeps its label


def _losses(logits, labels, lengths):
    """Mean next-token loss of each example laid side by side in a row (labels of its own positions only)."""
    out, o = [], 0
    for n in lengths:
        out.append(F.cross_entropy(logits[o:o + n - 1], labels[o + 1:o + n], ignore_index=IGNORE_INDEX).item())
        o += n
    return out


@pytest.fixture(scope="module")
def packed(tok):
    chats = [CHAT, CHAT[:3], [CHAT[0], CHAT[5], CHAT[6]], CHAT[1:5],
             [{"role": "user", "content": "Reset code?"}, {"role": "assistant", "content": "1234."}],
             [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "您好，请问有什么可以帮您？"}]]
    examples, stats = encode_conversations(tok, [Conversation(c, "p.jsonl", k + 1) for k, c in enumerate(chats)], 256)
    assert stats.encoded == len(chats)
    rows = pack(examples, 256)
    assert len(rows) < len(examples) and max(len(r.members) for r in rows) >= 3
    assert sorted(k for r in rows for k in r.members) == list(range(len(examples)))
    return examples, rows


@torch.no_grad()
def test_packed_loss_equals_loss_alone(model, packed, tok):
    examples, rows = packed
    alone = [_losses(model(torch.tensor([e.input_ids])).logits[0], torch.tensor(e.labels), [len(e.input_ids)])[0]
             for e in examples]
    for mode, call in (("4d", {}), ("position_ids", {"use_cache": False})):
        batch = collate_packed(rows, tok.pad_token_id, model.config, mask=mode)
        assert ("attention_mask" in batch) == (mode == "4d")
        out = model(**batch, **call)
        for r, row in enumerate(rows):
            got = _losses(out.logits[r], batch["labels"][r], row.lengths)
            want = [alone[k] for k in row.members]
            assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-4, (mode, got, want)
        # The model's own loss over the batch is the token-weighted mean of the examples' losses.
        n = [sum(lab != IGNORE_INDEX for lab in e.labels[1:]) for e in examples]
        weighted = sum(a * c for a, c in zip(alone, n)) / sum(n)
        assert abs(out.loss.item() - weighted) <= 1e-4


@torch.no_grad()
def test_without_the_block_mask_packed_losses_differ(model, packed, tok):
    """Negative controls: the comparison above can fail. A row with plain causal attention (no restarting
    position ids, no mask), and restarting position ids with the default cache (transformers then skips its
    packed-sequence detection), both let examples attend to the ones before them."""
    examples, rows = packed
    row = max(rows, key=lambda r: len(r.members))
    alone = [_losses(model(torch.tensor([examples[k].input_ids])).logits[0], torch.tensor(examples[k].labels),
                     [len(examples[k].input_ids)])[0] for k in row.members]
    ids, labels = torch.tensor([row.input_ids]), torch.tensor(row.labels)
    plain = _losses(model(ids).logits[0], labels, row.lengths)
    cached = _losses(model(ids, position_ids=torch.tensor([row.position_ids])).logits[0], labels, row.lengths)
    for got in (plain, cached):
        assert abs(got[0] - alone[0]) <= 1e-4  # the first example sees nothing before it either way
        assert max(abs(a - b) for a, b in zip(got[1:], alone[1:])) > 1e-2, (got, alone)
