"""The starting points a fine-tuned generator is compared with, on the same test rows as it.

* zero-shot: the untuned model answering the same prompt through the same chat template, greedy - what the
  user has without training; also the perplexity of the reference replies under it;
* nearest neighbour: for each test prompt, the reply of the most similar *training* prompt (cosine of
  mean-pooled sentence embeddings from the catalog's embedding model: minilm-l6 for English, m3e-small for
  Chinese). Service replies are templated, so copying the closest known answer is strong; a generator that
  does not beat it on ROUGE-L or chrF is not worth serving, and the report says so either way.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger("domaintune")


def zero_shot_baseline(task, model_dir, splits, features, ctx) -> dict:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    scores = task.generation_scores(base, ctx.tokenizer, splits.test, name="zero-shot")
    total, count = task.reply_nll(base, features["test"], ctx)
    from domaintune.evaluation.text_metrics import perplexity

    scores.update(loss=total / max(count, 1), perplexity=perplexity(total, count))
    return scores


def embedding_model_for(texts: list[str], configured: str | None) -> str:
    """The configured embedding model, else the catalog's for the texts' language."""
    if configured:
        return configured
    from domaintune.evaluation.text_metrics import text_language

    return "m3e-small" if text_language(texts) == "zh" else "minilm-l6"


@torch.inference_mode()
def sentence_embeddings(model_name: str, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised mean-pooled embeddings (how both catalog sentence models were trained to be used)."""
    from transformers import AutoModel, AutoTokenizer

    from domaintune.models import resolve_model
    from domaintune.training.batching import inference_batches

    folder = resolve_model(model_name)
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = [tok(t, truncation=True, max_length=128)["input_ids"] for t in texts]
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    pad = tok.pad_token_id or 0
    for idx in inference_batches([len(i) for i in ids], batch_size):
        width = max(len(ids[i]) for i in idx)
        x = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            x[r, :len(ids[i])] = torch.tensor(ids[i])
            mask[r, :len(ids[i])] = 1
        hidden = model(input_ids=x, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def nearest_neighbour_replies(train, rows, model_name: str) -> list[str]:
    """The reply of each row's most similar training prompt (whole conversation text when multi-turn)."""
    def key(ex):
        from domaintune.tasks.generation import prompt_messages

        return "\n".join(m["content"] for m in prompt_messages(ex) if m["role"] != "system")

    train_x = sentence_embeddings(model_name, [key(ex) for ex in train])
    rows_x = sentence_embeddings(model_name, [key(ex) for ex in rows])
    best = (rows_x @ train_x.T).argmax(axis=1)
    return [train[int(j)].label or "" for j in best]


def nearest_neighbour_baseline(task, model_dir, splits, features, ctx) -> dict:
    from domaintune.tasks.generation import score_replies

    rows = task.eval_rows(splits.test)
    model_name = embedding_model_for([ex.text for ex in splits.train[:200]], task.generation.get("nearest_neighbour_model"))
    replies = nearest_neighbour_replies(splits.train, rows, model_name)
    scores = score_replies(None, rows, task.settings(), 1, "nearest neighbour", int(task.generation.get("report_samples", 8)),
                           replies=replies)
    scores["embedding_model"] = model_name
    return scores
