"""Supervised fine-tuning of a causal LM (GPT-style) on the user's own request -> reply data.

The seeds' recipe for generative models: the decoder's next-token distribution trained with a negative
log-likelihood loss on "question and best reply" pairs collected from past service conversations. Here:

* data: a table with `data.prompt_column` / `data.response_column` (optional `context_column`,
  `system_prompt`) or chat JSONL (`{"messages": [...]}`, multi-turn), read and validated with file:line by
  `data/chat.py` before anything loads;
* encoding (`generation_encoding.py`): the model's own chat template (a documented default where it has
  none), loss only on the assistant's tokens of every turn, truncation that drops whole earlier exchanges and
  never cuts a reply (counted, reported), optional packing with no attention across examples;
* training: the same Trainer as every task (AdamW, warm-up, bf16 autocast where the CPU has it, dev
  evaluation, early stopping, kill -9 resume). The dev metric is `neg_loss` (minus the mean token NLL of the
  dev replies): cheap enough for every evaluation, and what over-fitting shows in first;
* evaluation on test: the token perplexity of the reference replies, and generated replies (greedy by
  default; settings recorded) scored with ROUGE-L, chrF and BLEU, per character for Chinese
  (`evaluation/text_metrics.py`), on the first `generation.eval_examples` test rows - the same rows for the
  starting points: the untuned model with the same prompt (zero-shot) and the nearest-neighbour reply (the
  response of the most similar training prompt by the catalog's embedding model, a strong baseline for
  templated service replies that a fine-tuned generator must beat, or honestly not).

An Example here is one conversation: `text` its last user turn (what the overlap check and the
nearest-neighbour baseline compare), `label` its last reply (the reference), `extra` all its messages.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoModelForCausalLM

from domaintune.data.readers import Example, Problem
from domaintune.evaluation.markdown import md_cell
from domaintune.tasks.base import EvalContext, Task
from domaintune.tasks.generation_encoding import (IGNORE_INDEX, EncodedExample, collate, collate_packed,
                                                  encode_conversations, pack, reply_logits_only, resolve_chat_format)
from domaintune.training.batching import inference_batches

log = logging.getLogger("domaintune")


def _messages_of(ex: Example) -> list[dict]:
    return list(ex.extra) if ex.extra else [{"role": "user", "content": ex.text}]


def prompt_messages(ex: Example) -> list[dict]:
    """The conversation up to (not including) its last reply: what the model answers at inference."""
    msgs = _messages_of(ex)
    return msgs[:-1] if msgs and msgs[-1]["role"] == "assistant" else msgs


def evenly_spaced(rows: Sequence, n: int | None) -> list:
    """`n` rows evenly spaced over `rows` (all of them when n is empty or not smaller)."""
    if not n or n >= len(rows):
        return list(rows)
    return [rows[i * len(rows) // n] for i in range(n)]


class GenerationTask(Task):
    name = "generation"
    auto_class = AutoModelForCausalLM
    default_metric = "neg_loss"
    headline = ("rougeL", "chrf", "bleu", "perplexity")
    supports_probe_init = False
    pair_input = False
    output_kind = "text"
    output_activation = None  # a reply is not a score per input: no ensembles, no token attributions
    explain_refusal = None
    peft_task_type = "CAUSAL_LM"
    pooled_head_problem = None
    k_shot_classes = None
    augmentable = False
    not_augmentable_reason = ("word and character edits of a prompt are not label-preserving for a reply, and "
                              "edited replies would teach the model to write typos")
    prunable = False
    onnx_exportable = False  # a decoding loop, not one forward pass; see `export --format gguf`
    labels_from_model_config = False
    supports_continual = False

    def __init__(self) -> None:
        super().__init__()
        self.chat_template: str | None = None
        self.system_prompt: str | None = None
        self.packing = False
        self.max_length = 512
        self.gradient_checkpointing = False
        self.generation: dict = {}
        self.encoding: dict[str, dict] = {}
        self._warnings: list[Problem] = []
        self._model_config = None
        self._sliced_logits = False  # whether the model takes logits_to_keep (see reply_logits_only)

    @property
    def described_as(self) -> str:
        return "task 'generation'"

    def configure(self, cfg) -> None:
        self.chat_template = cfg.data.chat_template
        self.system_prompt = cfg.data.system_prompt
        self.packing = cfg.generation.packing
        self.max_length = cfg.train.max_length
        self.gradient_checkpointing = cfg.generation.gradient_checkpointing
        self.generation = cfg.generation.model_dump(mode="json")

    # ---- data ---------------------------------------------------------------------------------
    def read(self, path, data_cfg, problems: list[Problem]) -> list[Example]:
        from domaintune.data.chat import ChatReadOptions, read_conversations

        fmt = data_cfg.format if data_cfg.format in ("csv", "tsv", "jsonl", "parquet", "xlsx") else "auto"
        opts = ChatReadOptions(prompt_column=data_cfg.prompt_column, response_column=data_cfg.response_column,
                               context_column=data_cfg.context_column, system_prompt=data_cfg.system_prompt,
                               format=fmt, delimiter=data_cfg.delimiter, encoding=data_cfg.encoding,
                               has_header=data_cfg.has_header)
        return [Example(c.messages[-2]["content"] if len(c.messages) > 1 else "", c.messages[-1]["content"],
                        c.source, c.line, extra=c.messages) for c in read_conversations(path, opts, problems)]

    def check(self, train, others, problems: list[Problem]) -> None:
        if len(train) < 2:
            problems.append(Problem(train[0].source if train else "<train>", None,
                                    f"only {len(train)} training conversation(s)",
                                    "give at least a few dozen request/reply pairs"))

    def state(self) -> dict:
        return {"labels": [], "chat_template": self.chat_template, "system_prompt": self.system_prompt,
                "generation": self.generation}

    def load_state(self, state: dict) -> None:
        self.labels = []
        self.chat_template = state.get("chat_template")
        self.system_prompt = state.get("system_prompt")
        self.generation = dict(state.get("generation") or {})

    def data_summary(self) -> dict:
        return {"encoding": self.encoding}

    # ---- model --------------------------------------------------------------------------------
    def build_model(self, model_dir, dropout: float | None = None) -> torch.nn.Module:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        if dropout is not None and hasattr(model.config, "attention_dropout"):
            model.config.attention_dropout = dropout
        model.config.use_cache = False  # training forwards never reuse a cache; generate() turns it back on
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._model_config = model.config
        import inspect

        self._sliced_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        return model

    def load_model(self, model_dir) -> torch.nn.Module:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self._model_config = model.config
        return model

    def save_model(self, model, tokenizer, out_dir: Path) -> None:
        model.config.use_cache = True  # a saved model is for generation
        if self.gradient_checkpointing:
            model.gradient_checkpointing_disable()
        super().save_model(model, tokenizer, out_dir)

    def _use_template(self, tokenizer) -> None:
        """Set the template in use on the tokenizer, so the saved model renders prompts exactly as trained."""
        fmt = resolve_chat_format(tokenizer, self.chat_template)
        tokenizer.chat_template = fmt.template
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def encode_split(self, split: str, tokenizer, examples, max_length: int) -> list[dict]:
        from domaintune.data.chat import Conversation

        self._use_template(tokenizer)
        convs = [Conversation(_messages_of(ex), ex.source, ex.line) for ex in examples]
        encoded, stats = encode_conversations(tokenizer, convs, max_length, self.chat_template)
        self.encoding[split] = stats.as_dict()
        if stats.dropped or stats.truncated:
            log.warning("%s: %s", split, stats.summary())
        for w in stats.warnings[:5]:
            log.warning("%s", w)
        return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]

    def encode(self, tokenizer, examples: Sequence[Example], max_length: int, with_targets: bool = True) -> list[dict]:
        if with_targets:
            return self.encode_split("predict", tokenizer, examples, max_length)
        template = resolve_chat_format(tokenizer, self.chat_template).template
        return [{"input_ids": tokenizer(tokenizer.apply_chat_template(prompt_messages(ex), chat_template=template,
                                                                      tokenize=False, add_generation_prompt=True),
                                        add_special_tokens=False)["input_ids"]} for ex in examples]

    def collate(self, features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        if "labels" not in features[0]:  # prompts only: the encoders' dynamic padding
            from domaintune.tasks.classification import pad_batch

            return pad_batch(features, pad_id)
        examples = [EncodedExample(f["input_ids"], f["labels"]) for f in features]
        if self.packing and len(examples) > 1 and self._model_config is not None:
            # rows of at most train.max_length tokens (every example already fits one)
            batch = collate_packed(pack(examples, self.max_length), pad_id, self._model_config)
        else:
            batch = collate(examples, pad_id)
        return reply_logits_only(batch) if self._sliced_logits else batch

    # ---- scoring ------------------------------------------------------------------------------
    @torch.inference_mode()
    def reply_nll(self, model, features: list[dict], ctx: EvalContext) -> tuple[float, int]:
        """Summed negative log-likelihood of the reply tokens and their count (loss only where labels are set)."""
        model.eval()
        import inspect

        sliced = "logits_to_keep" in inspect.signature(_forward_of(model)).parameters
        total, count = 0.0, 0
        lengths = [len(f["input_ids"]) for f in features]
        for idx in inference_batches(lengths, max(1, min(ctx.batch_size, 16))):
            batch = collate([EncodedExample(features[i]["input_ids"], features[i]["labels"]) for i in idx], ctx.pad_id)
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            if sliced:
                batch = reply_logits_only(batch)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ctx.bf16):
                loss = model(**batch, use_cache=False).loss.float()
            if n:
                total += float(loss) * n
                count += n
        return total, count

    def evaluate(self, model, examples, features: list[dict], ctx: EvalContext) -> dict:
        from domaintune.evaluation.text_metrics import perplexity

        total, count = self.reply_nll(model, features, ctx)
        loss = total / max(count, 1)
        return {"loss": loss, "neg_loss": -loss, "perplexity": perplexity(total, count), "reply_tokens": count,
                "n": len(features)}

    def evaluate_final(self, model, examples, features: list[dict], ctx: EvalContext, split: str) -> dict:
        out = self.evaluate(model, examples, features, ctx)
        if split == "test" and examples:
            out.update(self.generation_scores(model, ctx.tokenizer, examples))
        return out

    def settings(self):
        from domaintune.generation.settings import SamplingSettings

        g = self.generation
        return SamplingSettings(max_new_tokens=int(g.get("max_new_tokens", 256)), temperature=float(g.get("temperature", 0)),
                                top_p=float(g.get("top_p", 1.0)), top_k=int(g.get("top_k", 0)),
                                repetition_penalty=float(g.get("repetition_penalty", 1.0)), stop=tuple(g.get("stop") or ()),
                                seed=g.get("seed"))

    def eval_rows(self, examples: Sequence[Example]) -> list[Example]:
        """The test rows whose replies are generated: `generation.eval_examples` evenly spaced rows (files are
        often sorted by intent or dialogue, so the first N would test one kind of request), the same for every
        system compared."""
        return evenly_spaced(examples, self.generation.get("eval_examples"))

    def generation_scores(self, model, tokenizer, examples: Sequence[Example], name: str = "fine-tuned") -> dict:
        """Generate a reply for each evaluated row and score it against the reference."""
        from domaintune.generation.engine import ChatGenerator

        rows = self.eval_rows(examples)
        if hasattr(model, "merge_and_unload"):  # an adapter: decode with a merged copy (faster; the run keeps the adapter)
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        gen = ChatGenerator(model, tokenizer, self.chat_template, int(self.generation.get("context_tokens", 2048)))
        return score_replies(gen, rows, self.settings(), int(self.generation.get("eval_batch_size", 8)), name,
                             int(self.generation.get("report_samples", 8)))

    def baselines(self, model_dir, splits, features, ctx: EvalContext, seed: int) -> dict:
        from domaintune.tasks.generation_baselines import nearest_neighbour_baseline, zero_shot_baseline

        out = {}
        for name, fn in (("zero_shot", zero_shot_baseline), ("nearest_neighbour", nearest_neighbour_baseline)):
            try:
                out[name] = fn(self, model_dir, splits, features, ctx)
            except Exception as e:  # noqa: BLE001 - one failed baseline must not lose the other or the run
                log.warning("%s baseline failed: %s", name, e)
        return out

    # ---- prediction ---------------------------------------------------------------------------
    def as_example(self, item: Any) -> Example:
        if isinstance(item, Example):
            if item.extra:
                return item
            item = item.text  # a row of a prediction file: its prompt, with the run's system prompt
        if isinstance(item, dict) and "messages" in item:
            msgs = [dict(m) for m in item["messages"]]
        elif isinstance(item, (list, tuple)) and item and all(isinstance(m, dict) for m in item):
            msgs = [dict(m) for m in item]
        elif isinstance(item, str):
            msgs = [{"role": "user", "content": item}]
        elif isinstance(item, dict) and "text" in item:
            msgs = [{"role": "user", "content": str(item["text"])}]
        else:
            raise TypeError(f"cannot generate for {type(item).__name__}: give a prompt string or chat messages")
        if self.system_prompt and msgs[0].get("role") != "system":
            msgs = [{"role": "system", "content": self.system_prompt}] + msgs
        return Example(msgs[-1]["content"], None, extra=msgs)

    def predict(self, model, examples, features, ctx: EvalContext, top_k: int = 1) -> list[dict]:
        from domaintune.generation.engine import ChatGenerator

        gen = ChatGenerator(model, ctx.tokenizer, self.chat_template, int(self.generation.get("context_tokens", 2048)))
        results = gen.generate([prompt_messages(ex) for ex in examples], self.settings(),
                               int(self.generation.get("eval_batch_size", 8)))
        return [{"text": r.text, "finish_reason": r.finish_reason, "completion_tokens": r.completion_tokens}
                for r in results]

    def output_fields(self, prediction: dict) -> dict:
        return {"response": prediction.get("text"), "finish_reason": prediction.get("finish_reason")}

    def format_prediction(self, prediction: dict) -> str:
        return str(prediction.get("text", ""))

    # ---- report -------------------------------------------------------------------------------
    def report_lines(self, metrics: dict) -> list[str]:
        return generation_report_lines(metrics)


def _forward_of(model):
    """The causal LM's own forward (a PeftModel's forward takes **kwargs and passes them on)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.forward


def score_replies(gen, rows: Sequence[Example], settings, batch_size: int, name: str, samples: int = 8,
                  replies: list[str] | None = None) -> dict:
    """Generated (or given: nearest neighbour) replies for `rows`, scored against their references."""
    from domaintune.evaluation.text_metrics import generation_metrics
    from domaintune.generation.settings import PromptTooLongError

    fits, skipped = [], 0
    if replies is None:
        for ex in rows:
            try:
                gen.prompt_ids(prompt_messages(ex), settings.max_new_tokens)
                fits.append(ex)
            except PromptTooLongError:
                skipped += 1
        t0 = time.perf_counter()
        results = gen.generate([prompt_messages(ex) for ex in fits], settings, batch_size)
        seconds = time.perf_counter() - t0
        replies = [r.text for r in results]
        tokens = sum(r.completion_tokens for r in results)
        speed = {"generation_seconds": round(seconds, 2), "generated_tokens": tokens,
                 "tokens_per_second": round(tokens / max(seconds, 1e-9), 2),
                 "finished_by_length": sum(r.finish_reason == "length" for r in results)}
    else:
        fits, speed = list(rows), {}
    scores = generation_metrics(replies, [ex.label or "" for ex in fits])
    scores.update(speed, generated_rows=len(fits), skipped_too_long=skipped, decoding=settings.as_dict(), system=name)
    scores["samples"] = [{"prompt": ex.text, "reference": ex.label, "generated": r}
                         for ex, r in list(zip(fits, replies))[:samples]]
    return scores


def generation_report_lines(metrics: dict) -> list[str]:
    """How the replies were scored, what encoding did to the data, and a table of sample outputs."""
    test, base = metrics.get("test") or {}, metrics.get("baseline") or {}
    lines: list[str] = []
    if test.get("tokenization"):
        n, d = test.get("generated_rows"), test.get("decoding") or {}
        how = "greedy" if not d.get("temperature") else f"sampling (temperature {d.get('temperature')}, top_p {d.get('top_p')})"
        lines += ["## How the replies were scored", "",
                  f"- {n} test rows generated ({metrics.get('data', {}).get('test_examples')} in the test split), "
                  f"{how}, at most {d.get('max_new_tokens')} new tokens; {test.get('finished_by_length', 0)} replies "
                  f"hit that limit; {test.get('skipped_too_long', 0)} prompts did not fit the context",
                  f"- language `{test.get('language')}`: {test.get('tokenization')}; chrF and BLEU from sacreBLEU",
                  f"- perplexity: of the reference replies' tokens under each model (the zero-shot row: the untuned "
                  f"model); the nearest-neighbour baseline copies the reply of the most similar training prompt",
                  f"- generation speed of the evaluation (fp32, batched by prompt length): "
                  f"{test.get('tokens_per_second')} tokens/s", ""]
    enc = (metrics.get("data") or {}).get("encoding") or {}
    if enc:
        lines += ["## Encoding (chat template, truncation)", "",
                  "| split | conversations | encoded | shortened | replies dropped | left out | tokens | trained tokens |",
                  "|---|---|---|---|---|---|---|---|"]
        for split, s in enc.items():
            lines.append(f"| {split} | {s.get('conversations')} | {s.get('encoded')} | {s.get('truncated')} | "
                         f"{s.get('replies_dropped')} | {s.get('dropped')} | {s.get('tokens')} | {s.get('label_tokens')} |")
        lines += ["", f"Template: {next(iter(enc.values())).get('template')} (`model`: the tokenizer's own; "
                      "`default`: ChatML headers ended by the EOS token). Loss only on the assistant's tokens.", ""]
    samples = test.get("samples") or []
    if samples:
        others = {k: {s["prompt"]: s["generated"] for s in (v.get("samples") or [])} for k, v in base.items()}
        cols = ["prompt", "reference", "fine-tuned"] + [k.replace("_", "-") for k in others]
        lines += ["## Sample outputs (test)", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for s in samples:
            cells = [s["prompt"], s["reference"], s["generated"]] + [o.get(s["prompt"], "") for o in others.values()]
            lines.append("| " + " | ".join(md_cell(_short(c)) for c in cells) + " |")
        lines.append("")
    return lines


def _short(text, limit: int = 400) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[:limit] + " …"

