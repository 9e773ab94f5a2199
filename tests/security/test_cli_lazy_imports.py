"""Issue 13 item 6: `domaintune --help` and argument errors answer without importing torch.

Before the fix, `import domaintune.cli` imported torch (commands/merge.py imported it at module level), so
every `--help`, typo or missing argument paid 1-3 s before printing anything. The check runs in a fresh
interpreter, since this test process has long imported torch, and drives the real Typer app through
click's `main` in standalone mode (what the console script does), then inspects `sys.modules`.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["torch", "transformers", "pandas", "sklearn", "mlflow", "fastapi", "optuna", "peft", "onnxruntime",
         "uvicorn", "scipy", "pyarrow", "datasets"]

PROBE = r"""
import json, sys
from domaintune.cli import app
import typer.main

heavy, out_path = json.loads(sys.argv[1]), sys.argv[2]
cmd = typer.main.get_command(app)

def paths(c, prefix=()):
    yield prefix
    for name, sub in sorted(getattr(c, "commands", {}).items()):
        yield from paths(sub, prefix + (name,))

calls = [["--help"], ["--no-such-option"], ["no-such-command"], ["train", "--help"], ["serve", "--help"],
         ["train"], ["predict", "RUN", "--top-k", "many"], ["serve", "--port", "not-a-port"]]
calls += [[*p, "--help"] for p in paths(cmd) if p]
results = []
for args in calls:
    try:
        cmd.main(args=list(args), prog_name="domaintune", standalone_mode=True)
        code = 0
    except SystemExit as e:
        code = e.code
    results.append({"args": args, "code": code, "heavy": [m for m in heavy if m in sys.modules]})
with open(out_path, "w") as f:
    json.dump(results, f)
"""


def test_help_and_argument_errors_import_no_heavy_library(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), str(out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert len(results) > 20  # every command and sub-command's --help was asked for
    by_args = {" ".join(r["args"]): r for r in results}
    assert by_args["--help"]["code"] == 0 and "Usage" in proc.stdout and "train" in proc.stdout
    for bad in ("--no-such-option", "no-such-command", "train", "predict RUN --top-k many",
                "serve --port not-a-port"):
        assert by_args[bad]["code"] == 2, by_args[bad]  # click's usage error, answered by argument parsing alone
    assert "Invalid value" in proc.stderr and "Missing argument" in proc.stderr
    first_heavy = next((r for r in results if r["heavy"]), None)
    assert first_heavy is None, (f"`domaintune {' '.join(first_heavy['args'])}` imported {first_heavy['heavy']}; "
                                 f"move that import into the command body")
