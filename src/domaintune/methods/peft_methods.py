"""Parameter-efficient fine-tuning through the `peft` library: lora, adalora, ia3, prefix, prompt.

The pretrained weights stay frozen; peft adds a few small trainable tensors
(low-rank updates, scaling vectors or virtual tokens) and the task head trains
in full. peft does the adapting; this module adds what a user of Trainer+PEFT
otherwise gets wrong:

* the task head is *always* trained and saved (`modules_to_save`), so a reloaded
  adapter predicts exactly what the trained model predicted (peft #310, #577,
  #1070: heads silently re-initialised at random on reload);
* the run directory names its base model by catalog name *and* resolved path,
  so `model/` reloads after the venv moves;
* AdaLoRA gets its step budget from the real training length and its rank
  re-allocation after every optimizer step (`on_step`);
* the adapter's size is reported next to the full model's.

`load_adapter_model` is what `domaintune.model_io` calls for an adapter run;
`domaintune.commands.merge` folds an adapter back into a plain HF model.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from domaintune.methods.base import Method

log = logging.getLogger("domaintune")

ADAPTER_INFO = "domaintune_adapter.json"

#: Model type -> linear layers LoRA/AdaLoRA adapt by default: every attention projection and both
#: feed-forward layers. Adapting all linear layers (not only query/value, peft's default) closes
#: most of the gap to full fine-tuning at a few hundred KB more (QLoRA, Dettmers et al. 2023).
LORA_TARGETS: dict[str, list[str]] = {
    **{t: ["query", "key", "value", "dense"] for t in ("bert", "roberta", "xlm-roberta", "camembert", "ernie",
                                                       "electra", "nezha", "megatron-bert", "data2vec-text")},
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "deberta": ["in_proj", "dense"],
    "mpnet": ["q", "k", "v", "o", "dense"],
    "albert": ["query", "key", "value", "dense", "ffn", "ffn_output"],
    # causal LMs: every attention projection and the gated feed-forward (QLoRA's "all linear layers")
    **{t: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
       for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3", "olmo2")},
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
#: Never adapted by LoRA/IA3: the pooler is trained in full through modules_to_save instead.
EXCLUDE = ["pooler.dense"]


class PeftMethod(Method):
    """One peft tuner; subclasses name it and build its config in `peft_config`."""

    name = ""
    mergeable = True  # whether `domaintune merge` can fold the adapter into the weights

    def configure(self, cfg) -> None:
        self.cfg = cfg
        self.section = cfg.peft
        self.info: dict = {}

    # ---- build and wrap -------------------------------------------------------------------
    def build(self, task, model_dir: Path, cfg):
        # The task's peft TaskType (Task.peft_task_type) picks the PeftModel subclass that forwards
        # `labels` and adds the task head to `modules_to_save`; None: peft cannot adapt the task.
        if task.peft_task_type is None:
            from domaintune.tasks import task_names_where

            raise ValueError(f"method {self.name!r} does not support task {task.name!r} (supported: "
                             f"{', '.join(task_names_where(lambda t: t.peft_task_type is not None))}); "
                             f"use method: full for {task.name}")
        self.task_type = task.peft_task_type
        self.base_model_dir = Path(model_dir).resolve()
        model = super().build(task, model_dir, cfg)
        _check_wrappable(_inner(model), self.name)
        return model

    def peft_config(self, model, task_type: str):
        raise NotImplementedError

    def prepare(self, model, task=None):
        from peft import get_peft_model

        inner = _inner(model)
        task_type = getattr(self, "task_type", None) or (task.peft_task_type if task is not None else None) or "SEQ_CLS"
        config = self.peft_config(inner, task_type)
        wrapped = get_peft_model(inner, config)
        if isinstance(model, torch.nn.Module) and model is not inner:  # a loss wrapper (regression with Huber)
            model.model = wrapped
            return model
        return wrapped

    def _common(self, inner, task_type: str) -> dict:
        """task type and the head modules every tuner trains in full and saves."""
        # A causal LM's head is its (usually tied) LM head: adapted through the LoRA updates of the layers
        # below it, never trained and saved in full (that would be a 28M-parameter copy of the embeddings).
        heads = [] if task_type == "CAUSAL_LM" else head_modules(inner)
        return {"task_type": task_type, "modules_to_save": heads}

    def _targets(self, inner) -> list[str]:
        if self.section.target_modules:
            return list(self.section.target_modules)
        mtype = getattr(inner.config, "model_type", "")
        if mtype not in LORA_TARGETS:
            raise ValueError(f"method {self.name}: no default target modules for model type {mtype!r}; set "
                             f"peft.target_modules to the names of its linear layers, e.g. [query, value]")
        return LORA_TARGETS[mtype]

    # ---- save and report ------------------------------------------------------------------
    def export(self, model):
        return peft_model_of(model)

    def save(self, model, task, tokenizer, out_dir: Path) -> None:
        from domaintune.training.checkpoint import atomic_write_json

        out_dir = Path(out_dir)
        pm = peft_model_of(model)
        pm.save_pretrained(str(out_dir))  # adapter_config.json + adapter_model.safetensors (modules_to_save included)
        tokenizer.save_pretrained(str(out_dir))
        adapter_bytes = sum(f.stat().st_size for f in out_dir.glob("adapter_*") if f.is_file())
        self.info = {"adapter_bytes": adapter_bytes, "full_model_bytes": full_model_bytes(pm),
                     "adapter_files": sorted(f.name for f in out_dir.glob("adapter_*"))}
        self.info["adapter_share"] = round(adapter_bytes / max(self.info["full_model_bytes"], 1), 5)
        atomic_write_json(out_dir / ADAPTER_INFO, {
            "method": self.name, "peft_type": str(pm.peft_config["default"].peft_type.value),
            "base_model": self.cfg.model, "base_model_path": str(self.base_model_dir),
            "task": task.name, "task_state": task.state(), "mergeable": self.mergeable,
            "modules_to_save": getattr(self, "_used_heads", None), **self.info})

    def settings(self) -> dict:
        s = self.section
        out = {"peft_method": self.name, **self._settings(s)}
        out["target_modules"] = getattr(self, "_used_targets", None)
        out["modules_to_save"] = getattr(self, "_used_heads", None)
        return {**out, **self.info}

    def _settings(self, s) -> dict:
        return {}


class LoRA(PeftMethod):
    """Low-rank updates W + (alpha/r)·B·A on the chosen linear layers (Hu et al. 2021)."""

    name = "lora"

    def peft_config(self, inner, task_type):
        from peft import LoraConfig

        common = self._common(inner, task_type)
        self._used_targets, self._used_heads = self._targets(inner), list(common["modules_to_save"])
        return LoraConfig(r=self.section.r, lora_alpha=self.section.alpha, lora_dropout=self.section.dropout,
                          target_modules=self._used_targets, exclude_modules=EXCLUDE, **common)

    def _settings(self, s):
        return {"r": s.r, "alpha": s.alpha, "dropout": s.dropout}

    def default_search_space(self, cfg) -> dict[str, dict]:
        """LoRA (and AdaLoRA): a higher learning rate than full fine-tuning, and the adapter's rank, alpha, dropout."""
        return {"train.lr": {"low": 5e-5, "high": 3e-3, "log": True},
                "peft.r": {"choices": [4, 8, 16, 32]},
                "peft.alpha": {"choices": [8, 16, 32, 64]},
                "peft.dropout": {"low": 0.0, "high": 0.3}}


class AdaLoRA(PeftMethod):
    """LoRA whose rank budget is re-allocated during training by importance (Zhang et al. 2023).

    Ranks start at `peft.r`, shrink to an average of `peft.target_r` between 10 % and 80 %
    of the steps, and stay fixed for the last 20 %. peft needs the total step count up
    front and `update_and_allocate` after every optimizer step; both come from here.
    """

    name = "adalora"
    default_search_space = LoRA.default_search_space

    def configure(self, cfg) -> None:
        super().configure(cfg)
        if self.section.target_r >= self.section.r:
            raise ValueError(f"method adalora prunes ranks from peft.r={self.section.r} down to an average of "
                             f"peft.target_r={self.section.target_r}: set target_r below r (e.g. r: 8, target_r: 4)")

    def peft_config(self, inner, task_type):
        from peft import AdaLoraConfig

        common = self._common(inner, task_type)
        self._used_targets, self._used_heads = self._targets(inner), list(common["modules_to_save"])
        total = self.cfg.train.max_steps or 1000  # provisional; `fit` sets the real count before step 1
        return AdaLoraConfig(init_r=self.section.r, target_r=self.section.target_r,
                             lora_alpha=self.section.alpha, lora_dropout=self.section.dropout,
                             target_modules=self._used_targets, exclude_modules=EXCLUDE,
                             total_step=max(total, 3), **_schedule(max(total, 3)), **common)

    def fit(self, model, run):
        pm = peft_model_of(model)
        cfg = run.train_cfg
        steps_per_epoch = math.ceil(math.ceil(len(run.features["train"]) / cfg.batch_size) / cfg.grad_accum)
        total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        if total < 3:
            raise ValueError(f"method adalora needs at least 3 optimizer steps to allocate ranks; training has {total} "
                             f"(raise train.epochs or train.max_steps, or use method: lora)")
        conf = pm.peft_config["default"]
        conf.total_step = total
        for k, v in _schedule(total).items():
            setattr(conf, k, v)
        pm.base_model.rankallocator.peft_config = conf
        result = super().fit(model, run)
        # The best checkpoint may predate the final allocation: apply the final rank pattern so
        # the evaluated model is exactly what save_pretrained writes (it drops masked ranks).
        if conf.rank_pattern:
            pm.base_model.rankallocator.mask_using_rank_pattern(pm.base_model.model, conf.rank_pattern)
        return result

    def on_step(self, model, global_step: int) -> None:
        peft_model_of(model).base_model.update_and_allocate(global_step)

    # The rank allocator's importance averages and the rank pattern live outside the weights and the
    # optimizer; without them a resumed run would restart the importance estimate (other ranks pruned) or,
    # past the final allocation, have no pattern to mask with. Checkpointed as tensors (safetensors).
    _ALLOCATOR = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def training_state(self, model) -> dict:
        base = peft_model_of(model).base_model
        out = {f"{kind}/{n}": t for kind in self._ALLOCATOR for n, t in getattr(base.rankallocator, kind).items()}
        pattern = base.peft_config[base.trainable_adapter_name].rank_pattern or {}
        out.update({f"rank_pattern/{n}": torch.tensor(mask, dtype=torch.uint8) for n, mask in pattern.items()})
        return out

    def load_training_state(self, model, state: dict) -> None:
        base = peft_model_of(model).base_model
        for kind in self._ALLOCATOR:
            getattr(base.rankallocator, kind).clear()
        pattern = {}
        for key, t in state.items():
            kind, _, n = key.partition("/")
            if kind == "rank_pattern":
                pattern[n] = [bool(x) for x in t.tolist()]
            elif kind in self._ALLOCATOR:
                getattr(base.rankallocator, kind)[n] = t
        base.peft_config[base.trainable_adapter_name].rank_pattern = pattern or None

    def _settings(self, s):
        return {"init_r": s.r, "target_r": s.target_r, "alpha": s.alpha, "dropout": s.dropout}


def _schedule(total: int) -> dict:
    tinit = max(0, int(0.1 * total))
    tfinal = max(0, int(0.2 * total))
    if tinit >= total - tfinal:
        tinit, tfinal = 0, 0
    return {"tinit": tinit, "tfinal": tfinal, "deltaT": max(1, total // 100)}


class IA3(PeftMethod):
    """Learned scaling vectors on keys, values and feed-forward activations (Liu et al. 2022): the smallest adapter."""

    name = "ia3"

    def peft_config(self, inner, task_type):
        from peft import IA3Config
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

        common = self._common(inner, task_type)
        mtype = getattr(inner.config, "model_type", "")
        if self.section.target_modules:
            targets = list(self.section.target_modules)
            ff = [m for m in targets if m in ("dense", "output.dense", "lin2", "fc2", "intermediate.dense")]
        elif mtype in TARGETS:
            targets, ff = list(TARGETS[mtype]), list(FF.get(mtype, []))
        else:
            raise ValueError(f"method ia3: no default target modules for model type {mtype!r}; set "
                             f"peft.target_modules (e.g. [key, value, output.dense])")
        self._used_targets, self._used_heads = targets, list(common["modules_to_save"])
        return IA3Config(target_modules=targets, feedforward_modules=ff, exclude_modules=EXCLUDE, **common)

    def default_search_space(self, cfg) -> dict[str, dict]:
        """IA3 has no rank to search: its learning rate (higher than LoRA's) and the batch size."""
        return {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                "train.batch_size": {"choices": [8, 16, 32]}}


class _VirtualTokens(PeftMethod):
    """Prefix and prompt tuning: peft keeps the base model's word embeddings a second time as
    `PeftModel.word_embeddings`, so the state dict holds one tensor under two names, which
    safetensors refuses to write (the Trainer's checkpoints). The module stays reachable as a
    plain attribute (peft's forward reads it) but is no longer registered as a sub-module."""

    mergeable = False

    def default_search_space(self, cfg) -> dict[str, dict]:
        """Virtual tokens: a much higher learning rate than weight updates, and how many tokens."""
        return {"train.lr": {"low": 1e-3, "high": 5e-2, "log": True},
                "peft.num_virtual_tokens": {"choices": [10, 20, 40]}}

    def prepare(self, model, task=None):
        model = super().prepare(model, task)
        pm = peft_model_of(model)
        emb = pm._modules.pop("word_embeddings", None)
        if emb is not None:
            object.__setattr__(pm, "word_embeddings", emb)
        return model


class PrefixTuning(_VirtualTokens):
    """Trainable key/value prefixes in every attention layer (Li & Liang 2021). Cannot be merged."""

    name = "prefix"

    def peft_config(self, inner, task_type):
        from peft import PrefixTuningConfig

        common = self._common(inner, task_type)
        self._used_heads = list(common["modules_to_save"])
        return PrefixTuningConfig(num_virtual_tokens=self.section.num_virtual_tokens, **common)

    def _settings(self, s):
        return {"num_virtual_tokens": s.num_virtual_tokens}


class PromptTuning(_VirtualTokens):
    """Trainable virtual tokens prepended to the input embeddings (Lester et al. 2021). Cannot be merged.

    Virtual tokens start as the embeddings of `peft.init_text` or, without it, of random
    vocabulary tokens (peft's RANDOM init draws N(0, 1) vectors, far larger than word
    embeddings, which swamps a small encoder's [CLS] at the start).
    """

    name = "prompt"

    def build(self, task, model_dir, cfg):
        # peft's token-classification prompt tuning returns logits for the virtual tokens too, so
        # they no longer line up with the word labels: token tasks (NER) use lora, adalora, ia3 or prefix.
        if task.peft_task_type == "TOKEN_CLS":
            raise ValueError(f"method prompt does not support task {task.name} (peft's virtual tokens shift the token "
                             f"labels); use method: prefix or lora for {task.name.upper()}")
        return super().build(task, model_dir, cfg)

    def peft_config(self, inner, task_type):
        from peft import PromptTuningConfig, PromptTuningInit

        common = self._common(inner, task_type)
        self._used_heads = list(common["modules_to_save"])
        extra: dict = {"prompt_tuning_init": PromptTuningInit.SAMPLE_VOCAB}
        if self.section.init_text:
            extra = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": self.section.init_text,
                     "tokenizer_name_or_path": str(getattr(self, "base_model_dir", inner.config._name_or_path))}
        return PromptTuningConfig(num_virtual_tokens=self.section.num_virtual_tokens, **extra, **common)

    def _settings(self, s):
        return {"num_virtual_tokens": s.num_virtual_tokens, "init_text": s.init_text}


# ---- helpers -----------------------------------------------------------------------------
def _inner(model):
    """The model inside regression's Huber-loss wrapper (`_LossOverride` keeps it in `.model`); else `model`."""
    from domaintune.tasks.regression import _LossOverride

    return model.model if isinstance(model, _LossOverride) else model


def peft_model_of(model):
    from peft import PeftModel

    inner = _inner(model)
    if not isinstance(inner, PeftModel):
        raise TypeError(f"expected a peft-wrapped model, got {type(inner).__name__}")
    return inner


def _check_wrappable(model, method: str) -> None:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"method {method} adapts Hugging Face task models; this task built a custom "
                         f"{type(model).__name__} (regression with data.feature_columns). Use method: full, "
                         f"or drop data.feature_columns to regress on the text alone")


def head_modules(model) -> list[str]:
    """The modules trained in full and saved with the adapter.

    Always the task head (`classifier`). Also the `pooler` when the model has one: BERT's
    classifier reads pooler_output = tanh(dense([CLS])), a layer pretrained for next-sentence
    prediction (or never trained: sentence-transformers checkpoints such as MiniLM leave it as
    it was, and checkpoints without pooler weights get it *randomly initialised* at load). A
    frozen pooler therefore either limits the head or - when random - is rebuilt differently
    on reload and the predictions change (the peft #1070 family of bugs). Training and saving
    it costs hidden_size² parameters (~150k for MiniLM) and keeps reload exact.
    """
    if not isinstance(getattr(model, "classifier", None), torch.nn.Module):
        raise ValueError(f"{type(model).__name__} has no `classifier` head module; PEFT methods here need a "
                         f"Hugging Face *ForSequenceClassification / *ForTokenClassification model; use method: full")
    heads = ["classifier"]
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    pooler = getattr(body, "pooler", None)
    if isinstance(pooler, torch.nn.Module) and any(True for _ in pooler.parameters()):
        heads.append("pooler")
    return heads


def full_model_bytes(pm) -> int:
    """Bytes of the weights the same model takes as a full fine-tuned model (what method full saves)."""
    peft_marks = ("lora_", "ia3_", "modules_to_save.", "prompt_encoder", "ranknum")
    total = 0
    for name, t in pm.state_dict().items():
        if any(m in name for m in peft_marks):
            continue
        total += t.numel() * t.element_size()
    return total


def _resolve_base(info: dict, model_dir: Path) -> Path:
    """The base model folder: by catalog name first (survives a moved venv), then the recorded path."""
    from domaintune.models import resolve_adapter_base

    return resolve_adapter_base(info, model_dir)


def load_adapter_model(task, model_dir) -> torch.nn.Module:
    """An adapter run's model (base rebuilt from `domaintune_adapter.json` + the adapter), eval mode."""
    from peft import PeftModel

    from domaintune.models import adapter_info

    model_dir = Path(model_dir)
    info = adapter_info(model_dir)  # domaintune_adapter.json, else plain peft's adapter_config.json
    if not getattr(task, "labels", None) and info.get("task_state"):
        task.load_state(info["task_state"])
    base = _inner(task.build_model(_resolve_base(info, model_dir)))
    model = PeftModel.from_pretrained(base, str(model_dir), is_trainable=False)
    return model.eval()
