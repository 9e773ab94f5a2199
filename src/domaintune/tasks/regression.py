"""Text regression: one numeric target, optionally fused with numeric feature columns.

Why it is built this way:

* Targets are standardised with the training mean and standard deviation, so
  the fresh head starts on the scale of the data whatever its unit (a 0-5
  similarity score or weekly sales in the thousands) and one learning rate fits
  all. The saved model therefore predicts *standardised* targets; `task.json`
  holds the mean/std and says so, and `predict` undoes the scaling.
* Without feature columns the model is a plain
  `AutoModelForSequenceClassification(num_labels=1, problem_type="regression")`
  that reloads with transformers alone.
* With `data.feature_columns` (price, week, store size beside a product
  description) a custom module concatenates the mean-pooled encoder output
  with the standardised features into a small MLP, plus a linear "wide" path
  over the features alone that starts from the least-squares fit on train
  (the regression analogue of the LP-FT probe init: the encoder only has to
  learn what the numbers cannot explain). It is saved as the encoder's own HF
  files plus `regression_head.safetensors` + `regression_head.json`, and loaded
  with safetensors only.
* Metrics (MAE, RMSE, R², Pearson, Spearman) come from scikit-learn and scipy.
  The Trainer maximises `metric_for_best`, so the default is `spearman`; use
  `r2`, `pearson` or `spearman` there, never `mae`/`rmse` (lower is better).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from domaintune.data.readers import Example, Problem
from domaintune.evaluation.markdown import md_code
from domaintune.tasks.base import EvalContext, Task
from domaintune.tasks.classification import encode_texts, pad_batch, sequence_model_kwargs
from domaintune.training.loop import predict_logits

log = logging.getLogger("domaintune")

HEAD_WEIGHTS = "regression_head.safetensors"
HEAD_CONFIG = "regression_head.json"
MODEL_OUTPUT_NOTE = ("the saved model outputs the standardised target: prediction = output * target_std + target_mean "
                     "(domaintune's Predictor undoes this)")


# ---- parsing and metrics ------------------------------------------------------------------
def parse_number(text: str | None) -> float | None:
    """A label cell as a finite float ('3.8', ' 1,234.5 '), or None when it is not a number."""
    if text is None:
        return None
    try:
        x = float(str(text).strip().replace(",", ""))
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def check_numeric_labels(examples: Sequence[Example], problems: list[Problem], role: str = "target") -> None:
    """One Problem (file:line, fix) per label that is not a finite number."""
    for ex in examples:
        if parse_number(ex.label) is None:
            problems.append(Problem(ex.source, ex.line, f"{role} {str(ex.label)[:40]!r} is not a number",
                                    "give a plain number such as 3.5 (no units or text), or remove the row"))


def _corr(fn, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Pearson/Spearman; 0.0 when undefined (a constant prediction ranks nothing)."""
    if len(y_true) < 2 or np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return 0.0
    value = float(fn(y_true, y_pred)[0])
    return value if math.isfinite(value) else 0.0


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict:
    """mae, rmse, r2, pearson, spearman and n (the metrics.json `test.*` contract)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if len(t) == 0:
        return {"mae": 0.0, "rmse": 0.0, "r2": 0.0, "pearson": 0.0, "spearman": 0.0, "n": 0}
    return {"mae": float(mean_absolute_error(t, p)), "rmse": float(math.sqrt(mean_squared_error(t, p))),
            "r2": float(r2_score(t, p)) if len(t) > 1 and np.ptp(t) > 0 else 0.0,
            "pearson": _corr(pearsonr, t, p), "spearman": _corr(spearmanr, t, p), "n": int(len(t))}


def _scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = values.mean(axis=0), values.std(axis=0)
    return mean, np.where(std > 1e-12, std, 1.0)  # a constant column is centred, not divided by zero


# ---- the feature-fusion model -------------------------------------------------------------
class FeatureRegressor(nn.Module):
    """Encoder mean-pooled output ++ standardised features -> MLP, plus a linear path over the features.

    Returns a `SequenceClassifierOutput` whose `logits` are (batch, 1), so the
    trainer, `predict_logits` and checkpoints treat it like any HF model.
    """

    def __init__(self, encoder: nn.Module, n_features: int, hidden: int = 256, dropout: float = 0.1, loss: str = "mse"):
        super().__init__()
        self.encoder = encoder
        self.n_features, self.hidden, self.dropout_p, self.loss_name = n_features, hidden, dropout, loss
        size = encoder.config.hidden_size
        self.mlp = nn.Sequential(nn.Linear(size + n_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.wide = nn.Linear(n_features, 1)
        nn.init.zeros_(self.mlp[-1].weight)  # start from the wide (least-squares) fit; the MLP learns the rest
        nn.init.zeros_(self.mlp[-1].bias)
        nn.init.zeros_(self.wide.weight)
        nn.init.zeros_(self.wide.bias)

    @property
    def config(self):  # the encoder's config (hidden size, ...) for code that inspects model.config
        return self.encoder.config

    def head_config(self) -> dict:
        return {"n_features": self.n_features, "hidden": self.hidden, "dropout": self.dropout_p, "pooling": "mean",
                "architecture": "domaintune FeatureRegressor: mean-pooled encoder ++ features -> MLP, + linear(features)",
                "output": MODEL_OUTPUT_NOTE}

    def head_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def forward(self, input_ids, attention_mask, token_type_ids=None, features=None, labels=None):
        if features is None:
            raise ValueError(f"this model needs {self.n_features} numeric feature(s) per input")
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        features = features.to(pooled.dtype)
        pred = self.mlp(torch.cat([pooled, features], dim=-1)).squeeze(-1) + self.wide(features).squeeze(-1)
        loss = regression_loss(pred, labels, self.loss_name) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=pred.unsqueeze(-1))


class _LossOverride(nn.Module):
    """Wraps a plain HF regressor to train with Huber instead of its built-in MSE; unwrapped on save."""

    def __init__(self, model: nn.Module, loss: str):
        super().__init__()
        self.model, self.loss_name = model, loss

    @property
    def config(self):
        return self.model.config

    def forward(self, labels=None, **batch):
        out = self.model(**batch)
        if labels is not None:
            out.loss = regression_loss(out.logits.squeeze(-1), labels, self.loss_name)
        return out


def regression_loss(pred: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    target = target.to(pred.dtype)
    if name == "huber":  # delta 1.0 on standardised targets: robust to outliers beyond one std
        return nn.functional.huber_loss(pred, target, delta=1.0)
    return nn.functional.mse_loss(pred, target)


# ---- the task -----------------------------------------------------------------------------
class RegressionTask(Task):
    name = "regression"
    auto_class = AutoModelForSequenceClassification
    default_metric = "spearman"
    headline = ("mae", "rmse", "r2", "pearson", "spearman")
    supports_probe_init = False
    pair_input = None  # a run trained with data.text_pair_column scores (text, text_pair) pairs
    output_kind = "value"
    output_activation = "identity"  # the (standardised) value itself; see value_from_output
    explain_refusal = None
    peft_task_type = "SEQ_CLS"  # a one-output sequence classification head
    pooled_head_problem = None
    k_shot_classes = None  # numbers are not classes
    augmentable = True  # a score of the text's content survives small edits as a class does
    prunable = True
    onnx_exportable = True
    labels_from_model_config = False
    supports_continual = False

    def __init__(self) -> None:
        super().__init__()
        self.loss = "mse"                   # train.loss (auto -> mse), set by configure()
        self.target_mean, self.target_std = 0.0, 1.0
        self.feature_columns: list[str] = []
        self.feature_mean: list[float] = []
        self.feature_std: list[float] = []
        self._wide_init: tuple[list[float], float] | None = None
        self.last_eval: dict | None = None  # y_true/y_pred of the latest evaluate(), for the scatter plot

    def configure(self, cfg) -> None:
        """Take the run's train.loss (auto -> mse) and the feature column names from the config."""
        loss = getattr(getattr(cfg, "train", None), "loss", "auto") or "auto"
        self.loss = "mse" if loss == "auto" else loss
        data = getattr(cfg, "data", None)
        if data is not None:
            self.feature_columns = [str(c) for c in (data.feature_columns or [])]

    # ---- data
    def read(self, path, data_cfg, problems: list[Problem]) -> list[Example]:
        self.feature_columns = [str(c) for c in (getattr(data_cfg, "feature_columns", None) or [])]
        examples = super().read(path, data_cfg, problems)
        check_numeric_labels(examples, problems)
        return examples

    def check(self, train, others, problems: list[Problem]) -> None:
        values = [parse_number(ex.label) for ex in train]
        values = [v for v in values if v is not None]
        if len(values) < 2:
            problems.append(Problem(train[0].source if train else "<train>", None,
                                    f"only {len(values)} training example(s) with a numeric target",
                                    "a regression needs at least a handful of labelled rows"))
        elif max(values) == min(values):
            problems.append(Problem(train[0].source, None, f"every training target is {values[0]:g}: nothing to learn",
                                    "check data.label_column points at the numeric target"))

    def check_known(self, examples, problems):
        check_numeric_labels(examples, problems)
        if self.feature_columns:
            for ex in examples:
                if ex.features is None or len(ex.features) != len(self.feature_columns):
                    problems.append(Problem(ex.source, ex.line, "missing numeric feature values",
                                            f"give columns {self.feature_columns} (data.feature_columns)"))

    def fit(self, train: list[Example]) -> None:
        y = np.asarray([parse_number(ex.label) for ex in train], dtype=np.float64)
        mean, std = _scale(y)
        self.target_mean, self.target_std = float(mean), float(std)
        self._wide_init = None
        if self.feature_columns and train and train[0].features is not None:
            x = np.asarray([ex.features for ex in train], dtype=np.float64)
            fm, fs = _scale(x)
            self.feature_mean, self.feature_std = fm.tolist(), fs.tolist()
            xs, ys = (x - fm) / fs, (y - mean) / std
            # Ridge (closed form, centred data, tiny alpha): the starting point of the wide path.
            w = np.linalg.solve(xs.T @ xs + 1e-3 * len(xs) * np.eye(xs.shape[1]), xs.T @ ys)
            self._wide_init = (w.tolist(), 0.0)
        else:
            self.feature_mean, self.feature_std = [], []

    def state(self) -> dict:
        return {"labels": [], "target": {"mean": self.target_mean, "std": self.target_std},
                "model_output": MODEL_OUTPUT_NOTE, "loss": self.loss,
                "feature_columns": list(self.feature_columns),
                "feature_scaling": {"mean": self.feature_mean, "std": self.feature_std}}

    def load_state(self, state: dict) -> None:
        self.labels = []
        target = state.get("target") or {}
        self.target_mean, self.target_std = float(target.get("mean", 0.0)), float(target.get("std", 1.0))
        self.loss = state.get("loss", "mse")
        self.feature_columns = list(state.get("feature_columns") or [])
        scaling = state.get("feature_scaling") or {}
        self.feature_mean, self.feature_std = list(scaling.get("mean") or []), list(scaling.get("std") or [])

    def value_from_output(self, output: float) -> float:
        """The model outputs the standardised target (MODEL_OUTPUT_NOTE): un-standardise it."""
        return float(output) * float(self.target_std) + float(self.target_mean)

    def targets(self, examples: Sequence[Example]) -> list[float]:
        """Standardised targets (what the model is trained to output)."""
        return [(parse_number(ex.label) - self.target_mean) / self.target_std for ex in examples]

    def scaled_features(self, examples: Sequence[Example]) -> list[list[float]]:
        mean, std = np.asarray(self.feature_mean), np.asarray(self.feature_std)
        out = []
        for ex in examples:
            if ex.features is None or len(ex.features) != len(self.feature_columns):
                where = f"{ex.source}:{ex.line}: " if ex.source else ""
                raise ValueError(f"{where}this model needs numeric features {self.feature_columns}; "
                                 f"got {ex.features!r} (give {{'text': ..., 'features': {{...}}}})")
            out.append(((np.asarray(ex.features, dtype=np.float64) - mean) / std).tolist())
        return out

    # ---- model
    @property
    def uses_features(self) -> bool:
        return bool(self.feature_columns)

    def build_model(self, model_dir, dropout=None):
        if not self.uses_features:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), num_labels=1, problem_type="regression", dtype=torch.float32,
                weights_only=True, **sequence_model_kwargs(dropout))
            return _LossOverride(model, self.loss) if self.loss != "mse" else model
        encoder = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, weights_only=True,
                                            **sequence_model_kwargs(dropout))
        model = FeatureRegressor(encoder, len(self.feature_columns), dropout=0.1 if dropout is None else dropout,
                                 loss=self.loss)
        if self._wide_init is not None:
            w, b = self._wide_init
            with torch.no_grad():
                model.wide.weight.copy_(torch.tensor([w], dtype=torch.float32))
                model.wide.bias.fill_(b)
        return model

    def save_model(self, model, tokenizer, out_dir: Path) -> None:
        from safetensors.torch import save_file

        from domaintune.training.checkpoint import atomic_write_json

        out_dir = Path(out_dir)
        if isinstance(model, _LossOverride):
            model = model.model
        if isinstance(model, FeatureRegressor):
            model.encoder.save_pretrained(str(out_dir))
            save_file(model.head_state(), str(out_dir / HEAD_WEIGHTS))
            atomic_write_json(out_dir / HEAD_CONFIG, {**model.head_config(), "feature_columns": self.feature_columns})
        else:
            # Plain-transformers users read config.json, not task.json: say there how to undo the scaling.
            model.config.domaintune_target_scaling = {"mean": self.target_mean, "std": self.target_std,
                                                      "note": MODEL_OUTPUT_NOTE}
            model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))

    def load_model(self, model_dir) -> torch.nn.Module:
        from safetensors.torch import load_file

        model_dir = Path(model_dir)
        head_cfg_path = model_dir / HEAD_CONFIG
        if not head_cfg_path.is_file():
            return AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        head_cfg = json.loads(head_cfg_path.read_text(encoding="utf-8"))
        encoder = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32)
        model = FeatureRegressor(encoder, int(head_cfg["n_features"]), int(head_cfg["hidden"]), float(head_cfg["dropout"]))
        missing, unexpected = model.load_state_dict(load_file(str(model_dir / HEAD_WEIGHTS)), strict=False)
        missing = [k for k in missing if not k.startswith("encoder.")]
        if missing or unexpected:
            raise ValueError(f"{model_dir / HEAD_WEIGHTS}: head weights do not match (missing {missing}, unexpected {unexpected})")
        if not self.feature_columns:
            self.feature_columns = list(head_cfg.get("feature_columns") or [])
        return model.eval()

    def encode(self, tokenizer, examples, max_length, with_targets=True):
        out = encode_texts(tokenizer, examples, max_length)
        if self.uses_features:
            for o, f in zip(out, self.scaled_features(examples)):
                o["features"] = f
        if with_targets:
            for o, t in zip(out, self.targets(examples)):
                o["labels"] = t
        return out

    def collate(self, features, pad_id):
        batch = pad_batch(features, pad_id)
        if "features" in features[0]:
            batch["features"] = torch.tensor([f["features"] for f in features], dtype=torch.float32)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.float32)
        return batch

    # ---- scoring and prediction
    def raw_predictions(self, model, features, ctx: EvalContext) -> np.ndarray:
        """Predictions on the target's own scale (standardisation undone)."""
        out = predict_logits(model, features, self.collate, ctx.pad_id, ctx.batch_size, ctx.bf16)
        if len(features) == 0:
            return np.zeros(0)
        return out.reshape(len(features), -1)[:, 0].double().numpy() * self.target_std + self.target_mean

    def evaluate(self, model, examples, features, ctx):
        y_true = np.asarray([parse_number(ex.label) for ex in examples], dtype=np.float64)
        y_pred = self.raw_predictions(model, features, ctx)
        self.last_eval = {"y_true": y_true.tolist(), "y_pred": y_pred.tolist()}
        return regression_metrics(y_true, y_pred)

    def baselines(self, model_dir, splits, features, ctx, seed):
        """`mean` (predict the train mean) and `frozen_ridge` (frozen mean-pooled encoder + ridge).

        With feature columns, `frozen_ridge` gets the standardised features
        appended, and two ablations show what each half contributes:
        `frozen_ridge_text_only` (same ridge, no features) and `features_only`
        (ridge on the features alone).
        """
        from domaintune.evaluation.baseline import embed
        from sklearn.linear_model import RidgeCV

        y_train = np.asarray([parse_number(ex.label) for ex in splits.train])
        y_test = np.asarray([parse_number(ex.label) for ex in splits.test])
        out = {"mean": regression_metrics(y_test, np.full(len(y_test), y_train.mean()))}
        train_f, test_f, y_fit = features["train"], features["test"], y_train
        if len(train_f) > 20000:  # bound the cost on very large sets; stated in the result
            keep = sorted(np.random.default_rng(seed).choice(len(train_f), 20000, replace=False).tolist())
            train_f, y_fit = [train_f[i] for i in keep], y_train[keep]
        x_train, x_test = embed(model_dir, train_f, ctx.pad_id), embed(model_dir, test_f, ctx.pad_id)
        alphas = np.logspace(-2, 3, 12)

        def ridge(a: np.ndarray, b: np.ndarray) -> dict:
            reg = RidgeCV(alphas=alphas).fit(a, y_fit)
            m = regression_metrics(y_test, reg.predict(b))
            m["train_examples"], m["alpha"] = len(y_fit), float(reg.alpha_)
            return m

        if self.uses_features and "features" in (train_f[0] if train_f else {}):
            f_train = np.asarray([f["features"] for f in train_f])
            f_test = np.asarray([f["features"] for f in test_f])
            out["features_only"] = ridge(f_train, f_test)
            out["frozen_ridge_text_only"] = ridge(x_train, x_test)
            out["frozen_ridge"] = ridge(np.hstack([x_train, f_train]), np.hstack([x_test, f_test]))
        else:
            out["frozen_ridge"] = ridge(x_train, x_test)
        return out

    def as_example(self, item: Any) -> Example:
        """A string, an Example, or a dict {"text": ..., "features": {column: value} | [values]}.

        A flat dict with the feature columns as keys ({"text": ..., "price": 9.5})
        works too, so a row of a CSV/JSONL file can be passed as it is.
        """
        if isinstance(item, dict) and "text" in item and self.uses_features:
            given = item.get("features", item)
            if isinstance(given, dict):
                missing = [c for c in self.feature_columns if c not in given]
                if missing:
                    raise ValueError(f"input lacks numeric feature(s) {missing}; this model was trained with "
                                     f"{self.feature_columns}: give {{'text': ..., 'features': {{{missing[0]!r}: 1.0, ...}}}}")
                values = [given[c] for c in self.feature_columns]
            else:
                values = list(given)
                if len(values) != len(self.feature_columns):
                    raise ValueError(f"got {len(values)} feature value(s); the model needs {self.feature_columns}")
            numbers = [parse_number(v) if not isinstance(v, (int, float)) else float(v) for v in values]
            bad = [c for c, v in zip(self.feature_columns, numbers) if v is None or not math.isfinite(v)]
            if bad:
                raise ValueError(f"feature(s) {bad} are not numbers: {values}")
            return Example(str(item["text"]), None, text_pair=item.get("text_pair"), features=tuple(numbers))
        ex = super().as_example(item)
        if self.uses_features and ex.features is None:
            where = f"{ex.source}:{ex.line}: " if ex.source else ""
            raise ValueError(f"{where}this model also needs numeric features {self.feature_columns}: "
                             f"predict on {{'text': ..., 'features': {{...}}}} (or a file with those columns)")
        return ex

    def predict(self, model, examples, features, ctx, top_k=1):
        return [{"prediction": float(v)} for v in self.raw_predictions(model, features, ctx)]

    def output_fields(self, prediction: dict) -> dict:
        return {"prediction": prediction.get("prediction")}

    def format_prediction(self, prediction: dict) -> str:
        value = prediction.get("prediction")
        return f"{value:.4f}" if isinstance(value, (int, float)) else str(value)

    # ---- report
    def plots(self, run_dir: Path, metrics: dict) -> dict[str, str]:
        test = metrics.get("test") or {}
        last = self.last_eval
        if not last or not test or len(last["y_true"]) != test.get("n"):
            return {}
        from domaintune.evaluation.regression_plots import scatter_png

        scatter_png(last["y_true"], last["y_pred"], Path(run_dir) / "plots" / "predicted_vs_true.png",
                    title=f"Predicted vs true (test, n={test.get('n')})",
                    subtitle=f"MAE {test.get('mae', 0):.3f} · R² {test.get('r2', 0):.3f} · Spearman {test.get('spearman', 0):.3f}")
        return {"Predicted vs true (test)": "plots/predicted_vs_true.png"}

    def report_lines(self, metrics: dict) -> list[str]:
        lines = ["## Regression target", "",
                 f"- target standardised with train mean {self.target_mean:.4g} and std {self.target_std:.4g}; "
                 f"{MODEL_OUTPUT_NOTE}", f"- loss: {self.loss}", ""]
        if self.feature_columns:
            lines += [f"- numeric features fused with the text: {', '.join(md_code(c, table=False) for c in self.feature_columns)} "
                      f"(standardised with train mean/std, saved in task.json)", ""]
            base = metrics.get("baseline") or {}
            rows = [(k, n) for k, n in (("features_only", "ridge on the numeric features alone"),
                                        ("frozen_ridge_text_only", "frozen encoder + ridge, text only"),
                                        ("frozen_ridge", "frozen encoder + ridge, text + features")) if k in base]
            if rows:
                lines += ["### What the text and the numeric features each contribute (test)", "",
                          "| model | MAE | R² | Spearman |", "|---|---|---|---|"]
                for k, n in rows:
                    m = base[k]
                    lines.append(f"| {n} | {m['mae']:.4f} | {m['r2']:.4f} | {m['spearman']:.4f} |")
                test = metrics.get("test") or {}
                if test:
                    lines.append(f"| **fine-tuned, text + features (this run)** | **{test['mae']:.4f}** | "
                                 f"**{test['r2']:.4f}** | **{test['spearman']:.4f}** |")
                lines.append("")
        return lines
