"""Generating replies with a causal LM on a CPU: prompts from chat messages, batched and streamed decoding.

One `ChatGenerator` wraps a model and its tokenizer and is what the generation task's evaluation, the
Predictor (CLI `predict`, the service) and bench/generation.py call, so every path renders prompts with the
same chat template the model was trained with (`tasks/generation_encoding.resolve_chat_format`: the model's
own, else our documented default) and decodes with the same settings.

Decoding itself is transformers' `generate` (greedy or sampling, repetition penalty, stop strings, KV cache);
what we add is what a service and an evaluation need around it:

* batches sorted by prompt length, left-padded, so a batch of 8 computes little padding;
* prompts that do not fit the context lose whole earlier exchanges (system message kept), like training
  data, and a prompt whose last turn alone does not fit raises `PromptTooLongError` (a 422, never a 5xx);
* the end-of-turn token and the tokenizer's EOS both stop a reply; stop strings are cut from the text, and a
  streamed reply holds back text that could still become a stop string, so a client never sees one;
* per reply: prompt and completion tokens, finish reason, time to first token.

The fast CPU path (`quantize_int8`) replaces every `nn.Linear` by torch's dynamically quantized int8 linear
(per-output-channel weights, activations quantized per batch on the fly): decoding one token reads every
weight once, so a quarter of the bytes is most of the gain on a memory-bound CPU, with no file to export
and no extra dependency. It is only used where its gate (`generation/fast_path.py`) passed.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator, Sequence

import torch

from domaintune.generation.settings import GenerationResult, PromptTooLongError, SamplingSettings
from domaintune.tasks.generation_encoding import ChatFormat, resolve_chat_format

#: Intra-op threads of the worker thread that decodes a streamed reply (see `ChatGenerator.stream`).
STREAM_THREADS = 1

#: Context cap on CPU even where the model allows 32k: prompt + reply tokens per request.
DEFAULT_CONTEXT = 2048


def quantize_int8(model: torch.nn.Module, maxima: dict | None = None) -> torch.nn.Module:
    """An int8 copy of the model: SmoothQuant-style smoothing (`generation/smoothing.py`) with the calibration
    `maxima` when given, then torch's dynamic int8 linear (per output channel) for every `nn.Linear`. The fp32
    model is left untouched."""
    import copy
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from domaintune.generation.smoothing import smooth

    model = copy.deepcopy(model.eval())
    if maxima:
        smooth(model, maxima)
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice: it is still the CPU int8 kernel
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` could be the start of a stop string (not yet safe to emit)."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return keep


class ChatGenerator:
    """Chat messages in, replies out, for one causal LM."""

    def __init__(self, model, tokenizer, chat_template: str | None = None, context_tokens: int | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.format: ChatFormat = resolve_chat_format(tokenizer, chat_template)
        config = getattr(model, "config", None)
        limit = getattr(config, "max_position_embeddings", None) or DEFAULT_CONTEXT
        self.context_tokens = min(context_tokens or DEFAULT_CONTEXT, limit)
        stop_ids = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        stop_ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        for marker in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"):
            tid = tokenizer.convert_tokens_to_ids(marker) if marker in tokenizer.get_vocab() else None
            if tid is not None and tid != tokenizer.unk_token_id:
                stop_ids.add(tid)
        self.stop_ids = sorted(i for i in stop_ids if i is not None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self._lock = threading.Lock()  # sampling seeds the global torch RNG: one seeded call at a time

    # ---- prompts -------------------------------------------------------------------------------
    def render(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.format.template, tokenize=False,
                                                  add_generation_prompt=True)

    def prompt_ids(self, messages: list[dict], max_new_tokens: int) -> list[int]:
        """Token ids of the prompt, dropping whole earlier exchanges while it does not fit; raises
        PromptTooLongError when even the system message and the last user turn do not."""
        room = self.context_tokens - max_new_tokens
        if room < 1:
            raise PromptTooLongError(0, self.context_tokens, max_new_tokens)
        head = messages[:1] if messages and messages[0]["role"] == "system" else []
        starts = [k for k, m in enumerate(messages) if m["role"] == "user" and k >= len(head)] or [len(head)]
        ids: list[int] = []
        for n, k in enumerate(starts):
            candidate = messages if n == 0 else head + messages[k:]
            ids = self.tokenizer(self.render(candidate), add_special_tokens=False)["input_ids"]
            if len(ids) <= room:
                return ids
        raise PromptTooLongError(len(ids), self.context_tokens, max_new_tokens)

    # ---- decoding ------------------------------------------------------------------------------
    def _template_stops(self, settings: SamplingSettings) -> SamplingSettings:
        """Our default template writes turn headers as plain text (`<|im_start|>user`); a base model that ends
        its reply by starting the next turn is stopped there, as a chat model is by its end-of-turn token."""
        if self.format.origin != "default" or "<|im_start|>" in settings.stop:
            return settings
        from dataclasses import replace

        return replace(settings, stop=(*settings.stop, "<|im_start|>"))

    def _generate_kwargs(self, settings: SamplingSettings) -> dict:
        kw = settings.hf_kwargs()
        # use_cache explicitly: a model fresh from training has config.use_cache=False (training forwards keep
        # no cache), and decoding without the KV cache recomputes the whole sequence at every token
        kw.update(eos_token_id=self.stop_ids, pad_token_id=self.pad_id, use_cache=True)
        if settings.stop:
            kw.update(stop_strings=list(settings.stop), tokenizer=self.tokenizer)
        return kw

    def _finish(self, new_ids: list[int], prompt_len: int, settings: SamplingSettings, first: float | None,
                started: float) -> GenerationResult:
        ended = bool(new_ids) and new_ids[-1] in self.stop_ids
        body = new_ids[:-1] if ended else new_ids
        text, stopped = cut_at_stop(self.tokenizer.decode(body, skip_special_tokens=True), settings.stop)
        reason = "stop" if ended or stopped or len(new_ids) < settings.max_new_tokens else "length"
        return GenerationResult(text.strip(), prompt_len, len(new_ids), reason, first, time.perf_counter() - started)

    @torch.inference_mode()
    def generate(self, conversations: Sequence[list[dict]], settings: SamplingSettings,
                 batch_size: int = 8) -> list[GenerationResult]:
        """One reply per conversation (its messages end with the user's turn), in input order."""
        settings = self._template_stops(settings)
        prompts = [self.prompt_ids(m, settings.max_new_tokens) for m in conversations]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[GenerationResult | None] = [None] * len(prompts)
        kwargs = self._generate_kwargs(settings)
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):  # left padding: every prompt ends where generation starts
                ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[r, width - len(prompts[i]):] = 1
            started = time.perf_counter()
            with self._seeded(settings):
                seqs = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            for r, i in enumerate(idx):
                new = seqs[r, width:].tolist()
                cut = next((k + 1 for k, t in enumerate(new) if t in self.stop_ids), len(new))
                out[i] = self._finish(new[:cut], len(prompts[i]), settings, None, started)
        return out  # type: ignore[return-value]

    def stream(self, messages: list[dict], settings: SamplingSettings) -> Iterator[str | GenerationResult]:
        """Text pieces as they are decoded, then one GenerationResult with the whole reply. Stopping the
        iteration early (a client went away) stops the decoding at its next token."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        settings = self._template_stops(settings)
        prompt = self.prompt_ids(messages, settings.max_new_tokens)
        new_ids: list[int] = []
        cancelled = threading.Event()
        pieces: list = []
        ready = threading.Condition()
        started = time.perf_counter()
        first: list[float] = []

        class Collect(StoppingCriteria):  # sees each new token; also how a cancelled stream stops decoding
            def __call__(self, input_ids, scores, **kw):
                with ready:
                    new_ids.append(int(input_ids[0, -1]))
                    if not first:
                        first.append(time.perf_counter() - started)
                    ready.notify()
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

        def run():
            try:
                # One intra-op thread in this worker: torch's OpenMP parallel regions started from a thread other
                # than the main one cost so much per call that int8 decoding (many tiny kernels) ran at about
                # half speed with 2 threads (SmolLM2-135M: 16-17 tokens/s vs 28.6 with 1; 36 in the main thread),
                # while fp32 decoding measured the same with 1 or 2 (11.3). It sets this thread's count only.
                torch.set_num_threads(STREAM_THREADS)
                with torch.inference_mode(), self._seeded(settings):
                    self.model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                        dtype=torch.long), stopping_criteria=StoppingCriteriaList([Collect()]),
                                        **self._generate_kwargs(settings))
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer's thread
                pieces.append(e)
            finally:
                with ready:
                    pieces.append(None)
                    ready.notify()

        worker = threading.Thread(target=run, name="domaintune-generate", daemon=True)
        worker.start()
        sent = 0
        try:
            while True:
                with ready:
                    ready.wait_for(lambda: pieces or len(new_ids) > 0)
                    done = bool(pieces)
                    ids = list(new_ids)
                if done and isinstance(pieces[0], BaseException):
                    raise pieces[0]
                body = [t for t in ids if t not in self.stop_ids]
                text = self.tokenizer.decode(body, skip_special_tokens=True)
                text, stopped = cut_at_stop(text, settings.stop)
                safe = len(text) if (done or stopped) else len(text) - _held_back(text, settings.stop)
                if not done and text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    safe = min(safe, len(text) - 1)
                if safe > sent:
                    yield text[sent:safe]
                    sent = safe
                if done or stopped:
                    break
                with ready:
                    new_ids_seen = len(ids)
                    ready.wait_for(lambda: pieces or len(new_ids) > new_ids_seen)
        finally:
            cancelled.set()
            worker.join()
        result = self._finish(list(new_ids), len(prompt), settings, first[0] if first else None, started)
        # the streamed text is what the client saw; the final text equals it up to surrounding whitespace
        yield result

    def _seeded(self, settings: SamplingSettings):
        """A context holding the lock and seeding torch's RNG when sampling with a seed; else nothing."""
        from contextlib import nullcontext

        if settings.greedy or settings.seed is None:
            return nullcontext()
        gen = self

        class _Seeded:
            def __enter__(self):
                gen._lock.acquire()
                torch.manual_seed(settings.seed)

            def __exit__(self, *exc):
                gen._lock.release()

        return _Seeded()
