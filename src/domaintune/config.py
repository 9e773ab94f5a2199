"""Run configuration: one YAML file, validated by pydantic.

Every field has a default and a one-line description, so `domaintune init`
can write a commented template and the README's config reference can be
generated from this module (a test keeps the two in sync). Unknown keys are
errors that name the key and suggest the closest valid one: a typo such as
`learning_rate` must not silently train with the default.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from domaintune.errors import ConfigError  # noqa: F401 - re-exported; defined there so the CLI names it without pydantic
from domaintune.security.safe_yaml import YamlLimitError, load_yaml_file, load_yaml_text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    train: str | None = Field(None, description="Training file (csv, tsv, jsonl, parquet, xlsx); required for `train`.")
    dev: str | None = Field(None, description="Dev file for early stopping and best-checkpoint selection; split from train when empty.")
    test: str | None = Field(None, description="Test file for the final report; split from train when empty.")
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "xlsx", "conll"] = Field(
        "auto", description="File format; `auto` decides from the extension (.csv .tsv .txt .jsonl .parquet .xlsx; .conll .bmes .bio for NER). "
                            "`file.json#train,oos_train` reads named splits of one JSON object; `book.xlsx#Sheet2` reads one sheet (default: the first).")
    text_column: str | int = Field("text", description="Column holding the text: a header name, or a 0-based index when has_header is false.")
    label_column: str | int = Field("label", description="Column holding the label: a header name, or a 0-based index.")
    delimiter: str | None = Field(None, description="Field separator for delimited text files; default ',' for csv and tab for tsv/txt.")
    encoding: str = Field("utf-8", description="Text encoding of the files; a UTF-8 byte-order mark is always stripped.")
    has_header: bool = Field(True, description="Whether the first line of a delimited file is a header.")
    text_pair_column: str | int | None = Field(None, description="Second text column for `task: pair` (e.g. the other question).")
    symmetric_pairs: bool = Field(False, description="`task: pair` whose relation is symmetric (similarity, same question): also train on each pair in swapped order.")
    pair_encoder: Literal["cross", "bi"] = Field("cross", description="`task: pair` scoring model: `cross` reads both texts at once; `bi` fine-tunes the cosine of two sentence embeddings (keeps a sentence-embedding model's pretraining).")
    feature_columns: list[str | int] = Field(default_factory=list, description="Numeric columns fused with the text for `task: regression` (e.g. price, week).")
    label_separator: str = Field("|", description="Separator between labels in one cell for `task: multilabel` (a JSON list cell also works).")
    tag_scheme: Literal["auto", "BIO", "BIOES", "BMES"] = Field("auto", description="NER tag scheme of the files; `auto` detects it. Reports use the same scheme.")
    oos_label: str | None = Field(None, description="Label that marks out-of-scope examples (e.g. `oos`); tunes an abstain threshold on dev.")
    faq: str | None = Field(None, description="FAQ file (question, answer, optional id) that `task: retrieval` searches.")
    prompt_column: str | int = Field("prompt", description="`task: generation`: column holding the user's request (a chat JSONL file with `messages` needs no columns).")
    response_column: str | int = Field("response", description="`task: generation`: column holding the reply to learn.")
    context_column: str | int | None = Field(None, description="`task: generation`: optional column put before the prompt in the same user turn (dialogue history, a log excerpt).")
    system_prompt: str | None = Field(None, description="`task: generation`: a system message added to every conversation that has none.")
    chat_template: str | None = Field(None, description="`task: generation`: Jinja chat template; empty uses the model's own, or ChatML headers ended by the EOS token when it has none; `default` forces that one.")
    k_shot: int | None = Field(None, ge=1, description="Train on only k examples per class (seeded sample of train; few-shot experiments); empty uses all.")
    dev_fraction: float = Field(0.1, ge=0.0, lt=0.5, description="Share of train held out as dev when `dev` is empty (stratified, seeded).")
    test_fraction: float = Field(0.1, ge=0.0, lt=0.5, description="Share of train held out as test when `test` is empty (stratified, seeded).")


from domaintune.config_methods import (AugmentSection, FewShotSection, FreezeSection, GenerationSection,  # noqa: E402
                                       LabelsSection, PeftSection, PretrainSection, RobustSection, TuneSection, ZeroShotSection)


class TrainConfig(_Strict):
    epochs: float = Field(3.0, gt=0, description="Passes over the training data (fractions allowed).")
    batch_size: int = Field(32, ge=1, description="Examples per optimizer step before gradient accumulation.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (never applied to biases and LayerNorm weights).")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps with linear warm-up; then linear decay to zero.")
    max_grad_norm: float | None = Field(1.0, description="Gradient clipping norm; empty disables clipping.")
    max_length: int = Field(128, ge=8, le=8192, description="Token limit per text; longer texts are truncated.")
    dropout: float | None = Field(None, ge=0, lt=1, description="Override the model's hidden/attention dropout; empty keeps the pretrained value.")
    seed: int = Field(42, description="Seed for splitting, initialisation, data order and dropout.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Compute precision; `auto` uses bf16 autocast where the CPU supports it (fp32 master weights).")
    head_init: Literal["probe", "random"] = Field(
        "probe", description="Start the head from a linear probe on frozen features (LP-FT) or at random.")
    group_by_length: bool = Field(True, description="Batch texts of similar length together so less padding is computed.")
    eval_every: Literal["epoch"] | int = Field("epoch", description="Evaluate on dev every epoch, or every N optimizer steps.")
    metric_for_best: str | None = Field(None, description="Dev metric that selects the best checkpoint and drives early stopping; empty uses the task's default (macro_f1, f1, spearman, mrr...).")
    loss: Literal["auto", "mse", "huber"] = Field("auto", description="Regression loss (`auto` is MSE on standardised targets); other tasks use their natural loss.")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without improvement; empty disables.")
    save_every_steps: int | None = Field(None, ge=1, description="Also write the resumable checkpoint every N optimizer steps (always at every evaluation).")
    log_every: int = Field(20, ge=1, description="Optimizer steps between log lines in train_log.jsonl.")
    eval_batch_size: int = Field(128, ge=1, description="Batch size for evaluation and prediction.")
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads; empty uses one per physical core.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (for smoke tests); overrides epochs.")


class RunConfig(_Strict):
    task: str = Field("classification", description="Task type: classification, multilabel, ner, regression, pair, retrieval, generation.")
    method: str = Field("full", description="How weights adapt: full (fine-tune all weights).")
    model: str = Field("minilm-l6", description="Catalog name (see `domaintune models`) or a local Hugging Face folder.")
    output_dir: str = Field("runs/default", description="Run directory to write; an existing finished run is not overwritten without --overwrite.")
    baseline: bool = Field(True, description="Also score the starting point (majority class, frozen encoder + linear head).")
    data: DataConfig = Field(default_factory=DataConfig, description="Where the labelled text is and how to read it.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation settings.")
    peft: PeftSection = Field(default_factory=PeftSection, description="Options of method lora, adalora, ia3, prefix, prompt.")
    freeze: FreezeSection = Field(default_factory=FreezeSection, description="Which weights stay frozen (with method full).")
    fewshot: FewShotSection = Field(default_factory=FewShotSection, description="Options of method fewshot (SetFit-style).")
    zeroshot: ZeroShotSection = Field(default_factory=ZeroShotSection, description="Options of method zeroshot (no training).")
    labels: LabelsSection = Field(default_factory=LabelsSection, description="Label descriptions (zero-shot).")
    augment: AugmentSection = Field(default_factory=AugmentSection, description="Offline data augmentation of the training texts.")
    robust: RobustSection = Field(default_factory=RobustSection, description="Adversarial training and R-Drop.")
    tune: TuneSection = Field(default_factory=TuneSection, description="Hyper-parameter search (`domaintune tune`).")
    pretrain: PretrainSection = Field(default_factory=PretrainSection, description="Domain-adaptive masked-LM pre-training (`domaintune pretrain`).")
    generation: GenerationSection = Field(default_factory=GenerationSection, description="`task: generation`: packing, decoding and evaluation of the generated replies.")

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from domaintune.tasks import TASKS

        if v not in TASKS:
            raise ValueError(f"unknown task {v!r}; choose one of {sorted(TASKS)}")
        return v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from domaintune.methods import METHODS

        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; choose one of {sorted(METHODS)}")
        return v


SECTIONS: dict[str, type[BaseModel]] = {"": RunConfig, "data": DataConfig, "train": TrainConfig, "peft": PeftSection,
                                        "freeze": FreezeSection, "fewshot": FewShotSection, "zeroshot": ZeroShotSection,
                                        "labels": LabelsSection, "augment": AugmentSection, "robust": RobustSection,
                                        "tune": TuneSection, "pretrain": PretrainSection,
                                        "generation": GenerationSection}


def _fields_of(path: tuple[str | int, ...]) -> list[str]:
    section = str(path[0]) if len(path) > 1 else ""
    model = SECTIONS.get(section, RunConfig)
    return list(model.model_fields)


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            valid = _fields_of(loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else f"valid keys here: {', '.join(valid)}"
            lines.append(f"  - unknown key {key!r}: {hint}")
        else:
            lines.append(f"  - {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _parse_value(raw: str) -> Any:
    """`--set` values are YAML scalars: 3e-5 -> float, true -> bool, null -> None."""
    try:
        value = load_yaml_text(raw, "--set value") if raw.strip() else ""
    except YamlLimitError as e:
        raise ConfigError(str(e)) from None
    except yaml.YAMLError:
        return raw  # not YAML (e.g. "[1,"): keep the text; validation then names the key and the expected type
    if isinstance(raw, str) and isinstance(value, str):
        return raw
    return value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply `key.sub=value` overrides (the CLI's --set) to a raw config dict."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-5")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(raw)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults), apply overrides, validate.

    Relative data paths stay relative to the current directory, as a user
    typing the command expects (bench configs use paths from the repo root).
    """
    source = str(path) if path else "<defaults>"
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found; create one with `domaintune init {p}`")
        try:  # bounded: a 1.4 KB alias bomb would otherwise exhaust memory once pydantic walks it
            loaded = load_yaml_file(p)
        except YamlLimitError as e:
            raise ConfigError(f"{e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text ({e})") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        data = loaded
    apply_overrides(data, overrides)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e, source)) from None


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Every leaf that differs between two config dicts, as "section.key: old -> new" (tune, resume)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, str) and "\n" in v:  # one line, so templates and table rows stay single-line
        return json.dumps(v, ensure_ascii=False)
    return yaml.safe_dump(v, default_flow_style=True, allow_unicode=True).strip().removesuffix("\n...").strip()


def template() -> str:
    """A commented YAML template with every key, its default and description."""
    out = ["# domaintune run configuration. Every key is optional; shown values are defaults.",
           "# Override any key on the command line: domaintune train CONFIG --set train.lr=3e-5", ""]
    for name, field in RunConfig.model_fields.items():
        if name in SECTIONS:
            continue
        out.append(f"# {field.description}")
        out.append(f"{name}: {_yaml_scalar(field.get_default(call_default_factory=True))}")
    for section, model in SECTIONS.items():
        if not section:
            continue
        out.append("")
        out.append(f"{section}:  # {RunConfig.model_fields[section].description}")
        for name, field in model.model_fields.items():
            out.append(f"  # {field.description}")
            out.append(f"  {name}: {_yaml_scalar(field.get_default(call_default_factory=True))}")
    return "\n".join(out) + "\n"


def reference_markdown() -> str:
    """The README's config reference table, generated from the models above."""
    rows = ["| key | default | description |", "|---|---|---|"]
    for name, field in RunConfig.model_fields.items():
        if name not in SECTIONS:
            rows.append(f"| `{name}` | `{_yaml_scalar(field.get_default(call_default_factory=True))}` | {field.description} |")
    for section, model in SECTIONS.items():
        if not section:
            continue
        for name, field in model.model_fields.items():
            rows.append(f"| `{section}.{name}` | `{_yaml_scalar(field.get_default(call_default_factory=True))}` | {field.description} |")
    return "\n".join(rows) + "\n"
