"""GGUF assembly/verification and the prepared state of the catalog LMs (real files, no model load)."""

import hashlib
import json

import pytest

from domaintune.llm_convert import GGUFError, assemble_gguf, prepare_lm
from domaintune.models import CATALOG, CatalogEntry, ModelNotFoundError, lm_cache_dir, list_models, resolve_model

CHUNKS = [b"GGUF" + bytes(range(256)) * 3, b"middle-chunk" * 50, b"tail"]


def _fake_packages(root, chunks, sums: str | None):
    """Installed-looking chunk packages (`dtfake_part{i}/data/...`) plus a meta package with SHA256SUMS."""
    for i, data in enumerate(chunks):
        pkg = root / f"dtfake_part{i + 1}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('chunk packages must never be imported')\n")
        (pkg / "data" / f"fake.gguf.part{i:02d}").write_bytes(data)
    meta = root / "dtfake_meta"
    (meta / "data").mkdir(parents=True)
    (meta / "__init__.py").write_text("raise ImportError('never imported')\n")
    if sums is not None:
        (meta / "data" / "SHA256SUMS").write_text(sums)
    return CatalogEntry(name="fake-lm", language="en", architecture="x", parameters="1", licence="Test-1.0",
                        package="dtfake-meta", module="dtfake_meta", subdir="data", pip="pip install dtfake-meta",
                        kind="causal_lm", gguf_name="fake.gguf",
                        gguf_chunks=tuple((f"dtfake_part{i + 1}", f"data/fake.gguf.part{i:02d}")
                                          for i in range(len(chunks))),
                        sha256sums=("dtfake_meta", "data/SHA256SUMS"))


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINTUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_chunks_are_concatenated_in_order_and_checked(tmp_path, monkeypatch):
    whole = b"".join(CHUNKS)
    sha = hashlib.sha256(whole).hexdigest()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = _fake_packages(tmp_path / "site", CHUNKS, f"{sha}  fake.gguf\n")
    work = tmp_path / "work"
    work.mkdir()
    path, got = assemble_gguf(entry, work)
    assert got == sha and path.read_bytes() == whole and path.parent == work
    assert entry.installed() and entry.location() is None  # installed, not prepared


def test_damaged_chunk_is_refused(tmp_path, monkeypatch):
    sha = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = _fake_packages(tmp_path / "site", [CHUNKS[0], CHUNKS[1][:-1] + b"X", CHUNKS[2]], f"{sha}  fake.gguf\n")
    (tmp_path / "work").mkdir()
    with pytest.raises(GGUFError, match="sha256") as e:
        assemble_gguf(entry, tmp_path / "work")
    assert "pip install dtfake-meta" in str(e.value)


def test_missing_chunk_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = _fake_packages(tmp_path / "site", CHUNKS, None)
    (tmp_path / "site" / "dtfake_part2" / "data" / "fake.gguf.part01").unlink()
    assert not entry.installed()
    with pytest.raises(ModelNotFoundError, match="pip install dtfake-meta"):
        assemble_gguf(entry, tmp_path)


def test_gemma_checksum_file_lists_the_assembled_gguf():
    from domaintune.llm_convert import expected_sha256

    entry = CATALOG["gemma3-270m"]
    assert entry.installed() and len(entry.package_files()) == 4
    assert expected_sha256(entry) == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_unprepared_lm_error_names_the_prepare_command(home):
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("smollm2-135m")
    assert "domaintune models prepare smollm2-135m" in str(e.value)
    rows = {r["name"]: r for r in list_models()}
    assert rows["smollm2-135m"]["installed"] and rows["smollm2-135m"]["prepared"] is False
    assert rows["smollm2-135m"]["licence"] == "Apache-2.0"
    assert "Gemma" in rows["gemma3-270m"]["licence"] and rows["gemma3-270m"]["language"] == "multilingual"
    assert rows["minilm-l6"]["prepared"] is None  # encoders need no preparation


def test_prepared_folder_is_found_under_domaintune_home(home):
    folder = lm_cache_dir("smollm2-135m")
    assert folder == home / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert resolve_model("smollm2-135m") == folder
    assert {r["name"]: r for r in list_models()}["smollm2-135m"]["prepared"] is True


def test_prepare_refuses_an_encoder(home):
    with pytest.raises(ModelNotFoundError, match="smollm2-135m, gemma3-270m"):
        prepare_lm("minilm-l6")
    assert not (home / "models").exists()
