"""`domaintune export RUN_DIR --format onnx [--quantize int8]`: ONNX + int8, checked before it ships.

Why not optimum: `optimum[onnxruntime]` pins transformers < 4.58 and we are on
5.x, so the chain is built from the maintained pieces directly:

1. the run's model through `model_io.load_run_model` (PEFT adapters are merged
   with peft's `merge_and_unload` first, so LoRA runs export as plain graphs);
2. `torch.onnx.export` with dynamic batch and sequence axes: the TorchScript
   exporter over eager attention (the graph ONNX Runtime's fusions know), or
   the dynamo exporter when that fails; either result must match PyTorch's
   logits on re-shaped probe batches (an earlier "TorchScript is off by 2e-2"
   finding was a train-mode wrapper tracing dropout, fixed 2026-11-26);
3. ONNX Runtime's transformer optimizer (Attention, EmbedLayerNorm, SkipLayerNorm, BiasGelu fusions) for
   BERT-family encoders;
4. `onnxruntime.quantization.quantize_dynamic`: int8 weights, per-channel, with
   activations quantized on the fly (VNNI on this CPU).

Then `export.check` scores torch, fp32 and int8 on the run's own test split and
applies the accuracy gate; a failing int8 model is removed unless `force`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from domaintune.export.onnx_model import BACKEND_FILES

log = logging.getLogger("domaintune")

#: HF model_type -> ONNX Runtime optimizer model_type (the encoders our catalog ships are BERT-family).
ORT_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert"}
#: Probe texts that fix the example batch for tracing (any real text would do: axes are dynamic).
TRACE_TEXTS = ["The conveyor motor stopped twice this morning.", "配电柜跳闸"]


class ExportError(ValueError):
    """The run cannot be exported (an unsupported model kind) or the export failed its accuracy gate."""


class _LogitsOnly(torch.nn.Module):
    """Positional inputs -> logits: the graph signature ONNX consumers expect (no output dataclass)."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs))).logits


def exportable_model(model: torch.nn.Module, run_dir: Path) -> torch.nn.Module:
    """The plain torch model to trace: adapters merged; unsupported kinds get a clear error."""
    model_dir = run_dir / "model"
    if (model_dir / "adapter_config.json").is_file():
        cfg = json.loads((model_dir / "adapter_config.json").read_text(encoding="utf-8"))
        if cfg.get("peft_type") in ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING"):
            raise ExportError(f"{run_dir}: {cfg['peft_type'].lower()} adds virtual tokens through past key values, "
                              f"which ONNX export does not support; retrain with method: lora (mergeable) to export")
        import copy

        # merge a copy: the caller still scores the adapter model itself as the reference
        model = copy.deepcopy(model).merge_and_unload()
    head = model_dir / "domaintune_head.json"
    kind = json.loads(head.read_text(encoding="utf-8")).get("kind") if head.is_file() else None
    if kind == "lm_scorer":
        raise ExportError(f"{run_dir}: zero-shot LM label scoring runs a causal LM per label; it is not exported "
                          f"to ONNX - serve it with the torch backend")
    return model.eval()


def trace_inputs(predictor) -> dict[str, torch.Tensor]:
    """An example batch with every input the task's collate produces (labels dropped)."""
    texts = TRACE_TEXTS
    if predictor.task.pair_input is True:  # a task whose every input is (text, text_pair)
        texts = [(TRACE_TEXTS[0], TRACE_TEXTS[1]), (TRACE_TEXTS[1], TRACE_TEXTS[0])]
    examples = predictor.examples(texts)
    n_feats = len((predictor.config.get("data") or {}).get("feature_columns") or ())
    if n_feats:
        from dataclasses import replace

        examples = [replace(e, features=tuple(0.0 for _ in range(n_feats))) for e in examples]
    batch = predictor.task.collate(predictor.features(examples), predictor.pad_id)
    batch.pop("labels", None)
    return batch


def export_onnx(model: torch.nn.Module, batch: dict[str, torch.Tensor], path: Path) -> tuple[list[str], str]:
    """Write `model` to `path` with dynamic batch (and sequence) axes; return (input names, exporter used).

    First choice: the TorchScript exporter over *eager* attention. Its graph is
    the shape ONNX Runtime's BERT optimizer recognises, so attention fuses into
    one Attention op (QAttention after int8) and the embeddings into
    EmbedLayerNormalization: on banking77 int8 went 1,216 -> 1,272 texts/s and
    fp32 gained more. The dynamo exporter's graph (SDPA with NaN guards) gets no
    attention fusion, so it is the fallback. Either graph is accepted only if it
    reproduces PyTorch's logits on batches of other shapes than the trace
    (`max_abs_diff`); a tracer that baked a shape in is caught here.
    """
    import copy

    names = list(batch)
    eager = copy.deepcopy(model)  # the caller keeps scoring its own model (SDPA) as the reference
    try:
        eager.set_attn_implementation("eager")
        _export_torchscript(eager, batch, path)
        diff = max_abs_diff(path, model, batch)
        if diff <= 1e-3:
            return names, "torchscript"
        log.info("TorchScript export differs from PyTorch by %.2e; using the dynamo exporter", diff)
    except Exception as e:  # an architecture the tracer cannot handle: the dynamo exporter usually can
        log.info("TorchScript export failed (%s); using the dynamo exporter", str(e)[:200])
    finally:
        del eager
    _export_dynamo(model, batch, path)
    diff = max_abs_diff(path, model, batch)
    if diff > 1e-3:
        raise ExportError(f"the exported graph's logits differ from PyTorch's by {diff:.2e} (> 1e-3); "
                          f"not exporting a model that answers differently")
    return names, "dynamo"


def _dynamic(t: torch.Tensor) -> bool:
    return t.dtype == torch.long and t.dim() == 2


def _export_torchscript(model: torch.nn.Module, batch: dict[str, torch.Tensor], path: Path) -> None:
    names = list(batch)
    wrapper = _LogitsOnly(model, names).eval()  # eval: a train-mode wrapper would trace dropout
    with torch.no_grad():
        out_dims = wrapper(*(batch[n] for n in names)).dim()
    axes = {n: ({0: "batch", 1: "sequence"} if _dynamic(batch[n]) else {0: "batch"}) for n in names}
    axes["logits"] = {0: "batch", 1: "sequence"} if out_dims == 3 else {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, tuple(batch[n] for n in names), str(path), dynamo=False, input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=17)


def _export_dynamo(model: torch.nn.Module, batch: dict[str, torch.Tensor], path: Path) -> None:
    names = list(batch)
    dyn_batch, dyn_seq = torch.export.Dim("batch", max=4096), torch.export.Dim("sequence", max=8192)
    shapes = tuple({0: dyn_batch, 1: dyn_seq} if _dynamic(batch[n]) else {0: dyn_batch} for n in names)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_LogitsOnly(model, names).eval(), tuple(batch[n] for n in names), str(path), dynamo=True,
                          input_names=names, output_names=["logits"], dynamic_shapes={"inputs": shapes},
                          external_data=False, verbose=False)


def shape_probes(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The trace batch, plus one with an extra padding column and one with a different number of rows."""
    wider = {n: (torch.cat([v, torch.zeros_like(v[:, :1])], dim=1) if _dynamic(v) else v) for n, v in batch.items()}
    taller = {n: torch.cat([v, v[:1]]) for n, v in batch.items()}
    return [batch, wider, taller]


def max_abs_diff(path: Path, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    from domaintune.export.onnx_model import OnnxModel

    onnx_model, worst = OnnxModel(path, num_threads=1), 0.0
    model.eval()
    with torch.no_grad():
        for probe in shape_probes(batch):
            ref = model(**probe).logits.float()
            worst = max(worst, float((onnx_model(**probe).logits - ref).abs().max()))
    return worst


def optimize_graph(src: Path, dst: Path, hf_config) -> dict:
    """ONNX Runtime transformer fusions for BERT-family encoders; other models are copied unchanged."""
    ort_type = ORT_MODEL_TYPES.get(getattr(hf_config, "model_type", None) or "")
    if ort_type is None:
        shutil.copyfile(src, dst)
        return {"optimized": False, "reason": f"no ONNX Runtime fusions for model_type {hf_config.model_type!r}"}
    from onnxruntime.transformers.optimizer import optimize_model

    logging.disable(logging.INFO)  # the optimizer logs every fusion step at INFO; benchmark.json keeps the summary
    try:
        opt = optimize_model(str(src), model_type=ort_type, num_heads=hf_config.num_attention_heads,
                             hidden_size=hf_config.hidden_size, opt_level=1)
        fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(str(dst))
        return {"optimized": True, "fused_operators": fused}
    except Exception as e:  # a fusion pass that does not understand a graph must not sink the export
        log.warning("ONNX Runtime optimizer skipped (%s); exporting the unfused graph", e)
        shutil.copyfile(src, dst)
        return {"optimized": False, "reason": str(e)[:200]}
    finally:
        logging.disable(logging.NOTSET)


def quantize_int8(src: Path, dst: Path, per_channel: bool = True) -> None:
    """Dynamic int8: weights quantized once (per output channel), activations per batch at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("root").setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" warning
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     # fused contrib ops (Attention...) defeat shape inference: their outputs are float
                     extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})


def hf_config_of(model: torch.nn.Module):
    """The HF config of the encoder inside (custom heads keep theirs on an inner model)."""
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "model_type"):
            return cfg
    return None


def export_run(run_dir: str | Path, quantize: str | None = "int8", gate: float = 1.0, force: bool = False,
               data: str | Path | None = None, per_channel: bool = True, max_examples: int | None = None,
               check: bool = True) -> dict:
    """Write RUN_DIR/export/{model.onnx, model.int8.onnx, benchmark.json}; return the benchmark record.

    Files are built in a temp folder inside export/ and renamed into place,
    so an interrupted export never leaves a half-written model beside a stale
    benchmark. Raises ExportError (after writing benchmark.json with the
    numbers) when int8 loses more than `gate` points and `force` is False.
    """
    from domaintune.export.check import check_export
    from domaintune.predictor import Predictor
    from domaintune.training.checkpoint import atomic_write_json

    run_dir = Path(run_dir)
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize!r}: only int8 is supported")
    predictor = Predictor(run_dir, backend="torch")
    if not predictor.task.onnx_exportable:  # declared by the task (tasks/base.py)
        raise ExportError(f"{run_dir}: task {predictor.task.name!r} does not support ONNX export; serve the run "
                          f"with the torch backend")
    model = exportable_model(predictor.model, run_dir)
    hf_config = hf_config_of(model)
    out = run_dir / "export"
    out.mkdir(exist_ok=True)
    record: dict = {"run_dir": str(run_dir), "task": predictor.task.name, "opset": None}
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        tmp = Path(tmp)
        batch = trace_inputs(predictor)
        names, record["exporter"] = export_onnx(model, batch, tmp / "raw.onnx")
        import onnx

        record["opset"] = max(o.version for o in onnx.load(str(tmp / "raw.onnx"), load_external_data=False).opset_import
                              if o.domain in ("", "ai.onnx"))
        record["inputs"], record["outputs"] = names, ["logits"]
        if hf_config is not None:
            record["graph"] = optimize_graph(tmp / "raw.onnx", tmp / BACKEND_FILES["onnx"], hf_config)
            diff = max_abs_diff(tmp / BACKEND_FILES["onnx"], model, batch) if record["graph"]["optimized"] else 0.0
            if diff > 1e-3:  # a fusion that changed the answers is not an optimisation
                log.warning("ONNX Runtime fusions changed the logits by %.2e; exporting the unfused graph", diff)
                shutil.copyfile(tmp / "raw.onnx", tmp / BACKEND_FILES["onnx"])
                record["graph"] = {"optimized": False, "reason": f"fused graph differed from PyTorch by {diff:.2e}"}
        else:
            shutil.copyfile(tmp / "raw.onnx", tmp / BACKEND_FILES["onnx"])
            record["graph"] = {"optimized": False, "reason": "no Hugging Face config found in the model"}
        files = [BACKEND_FILES["onnx"]]
        if quantize == "int8":
            quantize_int8(tmp / BACKEND_FILES["onnx"], tmp / BACKEND_FILES["onnx-int8"], per_channel)
            files.append(BACKEND_FILES["onnx-int8"])
        record["quantization"] = {"method": "dynamic", "weight_type": "int8", "per_channel": per_channel} if quantize else None
        record["files_mb"] = {f: round((tmp / f).stat().st_size / 2**20, 2) for f in files}
        record["files_mb"]["pytorch"] = round(sum(p.stat().st_size for p in (run_dir / "model").glob("*.safetensors"))
                                              / 2**20, 2)
        if check:
            record.update(check_export(predictor, {f: tmp / f for f in files}, data=data, gate=gate,
                                       max_examples=max_examples))
        failed = [name for name, b in record.get("backends", {}).items() if b.get("gate_passed") is False]
        for f in files:
            backend = next(k for k, v in BACKEND_FILES.items() if v == f)
            if backend in failed and not force:
                (out / f).unlink(missing_ok=True)  # never leave a model that failed its gate where auto could find it
                continue
            (tmp / f).replace(out / f)
        record["forced"] = bool(failed and force)
        atomic_write_json(out / "benchmark.json", record)
    if failed and not force:
        b = record["backends"]
        detail = "; ".join(f"{n}: {b[n]['metric']} {b[n]['value']:.4f} vs torch {record['torch']['value']:.4f} "
                           f"(drop {b[n]['drop_points']:.2f} pt > gate {gate:.2f})" for n in failed)
        raise ExportError(f"{run_dir}: export failed its accuracy gate - {detail}. The failing model was not kept; "
                          f"see {out / 'benchmark.json'}; pass --force to keep it anyway, or raise --gate")
    log.info("exported %s -> %s", run_dir, ", ".join(str(out / f) for f in files))
    return record
