from pathlib import Path


def tiny_config_path(tmp_path: Path, splits: dict, out: Path, baseline_off: bool = False, **train) -> Path:
    settings = {"batch_size": 8, "lr": 1e-4, "max_length": 48, "log_every": 1, **train}
    lines = ["model: minilm-l6", f"output_dir: {out}", f"baseline: {'false' if baseline_off else 'true'}", "data:",
             f"  train: {splits['train']}", f"  dev: {splits['dev']}", f"  test: {splits['test']}", "train:"]
    lines += [f"  {k}: {v}" for k, v in settings.items()]
    p = tmp_path / f"{out.name}.yaml"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p
