"""What a generation request asks for and what it gets back; shared by the task, the Predictor, the CLI and the service.

Defaults are greedy decoding (temperature 0): evaluation must be reproducible, and for service replies the
most likely answer is what a support team wants. Sampling is opt-in per request, seedable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding options, named as in OpenAI's and Hugging Face's APIs. temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            problems.append(f"temperature must be 0 (greedy) or more (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            problems.append(f"top_k must be 0 (off) or more (got {self.top_k})")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be positive, 1.0 = off (got {self.repetition_penalty})")
        if any(not s for s in self.stop):
            problems.append("stop strings must not be empty")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["stop"] = list(self.stop)
        return out

    def hf_kwargs(self) -> dict:
        """Keyword arguments of transformers' `generate` (stop strings are cut by us: see engine.cut_at_stop)."""
        kw: dict = {"max_new_tokens": self.max_new_tokens, "do_sample": not self.greedy,
                    "repetition_penalty": self.repetition_penalty}
        if not self.greedy:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        else:  # silence "temperature is set but do_sample=False" from checkpoints' generation_config
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw


@dataclass
class GenerationResult:
    """One reply. finish_reason: "stop" (end-of-turn token or a stop string) or "length" (max_new_tokens)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    first_token_seconds: float | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"text": self.text, "finish_reason": self.finish_reason,
                "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                          "total_tokens": self.prompt_tokens + self.completion_tokens}}


class PromptTooLongError(ValueError):
    """The prompt does not fit the model's context with room for the reply."""

    def __init__(self, prompt_tokens: int, limit: int, max_new_tokens: int):
        self.prompt_tokens, self.limit, self.max_new_tokens = prompt_tokens, limit, max_new_tokens
        super().__init__(f"the prompt is {prompt_tokens} tokens but at most {limit - max_new_tokens} fit "
                         f"(context {limit} tokens minus max_new_tokens {max_new_tokens}); shorten the prompt or "
                         f"the conversation history, or lower max_new_tokens")
