"""The FAQ index of a retrieval run: embedded knowledge-base entries kept as plain files in `run/index/`.

Layout (all written together into a temp folder that is renamed into place,
so a crash or Ctrl-C mid-build leaves the previous index fully usable):

    index/embeddings.npy   float32 (entries x dim), L2-normalised, row i = entries.jsonl line i
    index/entries.jsonl    {"id", "question", "answer", "key", "question_sha256"} per entry, in FAQ file order
    index/manifest.json    FAQ file path and sha256, sha256 of the model weights, per-entry hashes,
                           and what the last build changed (added / changed / removed, embedded / reused)

Rebuilds are incremental: a vector is reused whenever the same question text
was embedded before by the same model weights (keyed by the question's
sha256), so editing one answer re-embeds nothing and adding one row embeds one
question. A retrained model (different weights sha256) forces a full rebuild.

Search is exact: one matrix product of normalised vectors. Below ~100k entries
that is a few milliseconds per query on one CPU core (100k x 384 floats =
150 MB, ~40 MFLOP per query), exact (no recall loss to tune away) and needs no
extra dependency; an approximate index (faiss) only pays beyond that.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from domaintune.data.readers import Problem, ReadOptions, detect_format, read_examples
from domaintune.data.splits import MAX_LISTED, DataError
from domaintune.training.checkpoint import atomic_dir, sha256_file

log = logging.getLogger("domaintune")

INDEX_DIR = "index"
FORMAT_VERSION = 1
#: How many ids per kind of change the manifest lists (the counts are always complete).
MAX_LISTED_IDS = 1000


class FaqIndexMissingError(FileNotFoundError):
    """No usable index for a retrieval run.

    A FileNotFoundError so that every CLI command reports it as a user error
    with its fix (run `domaintune index`), not as a crash.
    """


class FaqDataError(DataError):
    """Problems in an FAQ file, all listed with file:line and a fix; the existing index is left unchanged."""

    def __init__(self, problems: list[Problem]):
        super().__init__(problems)
        errors = [p for p in problems if not p.warning]
        lines = [f"{len(errors)} problem{'s' if len(errors) != 1 else ''} in the FAQ file; the index was not changed:"]
        lines += [f"  - {p}" for p in errors[:MAX_LISTED]]
        if len(errors) > MAX_LISTED:
            lines.append(f"  ... and {len(errors) - MAX_LISTED} more of the same kinds")
        self.args = ("\n".join(lines),)


@dataclass(frozen=True)
class FaqEntry:
    id: str
    question: str
    answer: str
    line: int = 0

    @property
    def question_hash(self) -> str:
        return sha256_text(self.question)

    @property
    def hash(self) -> str:
        """Content hash of the whole entry: changes when the id, question or answer changes."""
        return sha256_text(json.dumps([self.id, self.question, self.answer], ensure_ascii=False))

    def content_hash(self, keyed_by: str) -> str:
        """The hash the manifest compares; without ids the row number is left out (inserting a row changes no other entry)."""
        return self.hash if keyed_by == "id" else sha256_text(json.dumps([self.question, self.answer], ensure_ascii=False))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()



# ---- reading ----------------------------------------------------------------------------------
def file_columns(path: str | Path, opts: ReadOptions) -> list[str] | None:
    """The column names of a CSV/TSV/JSONL/Parquet file (indices as strings without a header); None if unreadable.

    Lets optional columns (an FAQ id, a pair file's 0/1 label) be used when
    present without the reader reporting them missing when they are not.
    """
    p = Path(path)
    fmt = detect_format(p, opts.format)
    if fmt == "xlsx":
        return _sheet_columns(path, opts)
    if not p.is_file():
        return None
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(p).names)
        with open(p, encoding=opts.encoding, errors="replace", newline="") as f:
            first = ""
            for line in f:
                if line.strip():
                    first = line.lstrip("\ufeff")
                    break
        if fmt == "jsonl":
            obj = json.loads(first) if first else {}
            return [str(k) for k in obj] if isinstance(obj, dict) else None
        if fmt not in ("csv", "tsv"):
            return None
        delimiter = opts.delimiter or ("," if fmt == "csv" else "\t")
        row = next(csv.reader(io.StringIO(first), delimiter=delimiter,
                              quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE), [])
    except (OSError, ValueError, LookupError):
        return None
    return [c.strip() for c in row] if opts.has_header else [str(i) for i in range(len(row))]


def _sheet_columns(path: str | Path, opts: ReadOptions) -> list[str] | None:
    """The header (first non-blank row) of a workbook's sheet, like `file_columns`; None if unreadable."""
    from domaintune.data import excel

    file, sheet = excel.split_sheet(path)
    try:
        _title, rows = excel.iter_sheet(file, sheet)
        try:
            row = next((r for _n, r in rows if any(excel.filled(c) for c in r)), None)
        finally:
            rows.close()
    except (excel.ExcelReadError, *excel.EXCEL_ERRORS):
        return None
    if row is None:
        return None
    return [str(c).strip() if c is not None else "" for c in row] if opts.has_header else [str(i) for i in range(len(row))]


def has_column(columns: list[str] | None, column: str | int | None) -> bool:
    """Same resolution as the readers: a header name, else a 0-based index."""
    if column is None or columns is None:
        return False
    if str(column) in columns:
        return True
    return str(column).isdigit() and int(column) < len(columns)


def read_faq(path: str | Path, opts: ReadOptions | None = None, question_column: str | int = "question",
             answer_column: str | int = "answer", id_column: str | int | None = None) -> list[FaqEntry]:
    """Read a knowledge base (CSV/TSV/JSONL/Parquet) with the project's readers; raise FaqDataError listing every problem.

    `id_column=None` uses a column named `id` when the file has one and
    otherwise numbers entries 1, 2, 3... in file order; a named id column must
    exist. Ids must be unique, since predictions and the manifest refer to them.
    """
    opts = opts or ReadOptions()
    problems: list[Problem] = []
    columns = file_columns(path, opts)
    if id_column is None and has_column(columns, "id") and "id" not in (str(question_column), str(answer_column)):
        id_column = "id"
    read_opts = replace(opts, text_column=question_column, text_pair_column=answer_column, label_column=id_column,
                        feature_columns=())
    raw: list[Problem] = []
    examples = read_examples(path, read_opts, raw)
    problems += [_faq_wording(p) for p in raw]
    entries = [FaqEntry(ex.label if id_column is not None else str(n), ex.text.strip(), ex.text_pair.strip(), ex.line)
               for n, ex in enumerate(examples, start=1)]
    first_line: dict[str, int] = {}
    for e in entries:
        if e.id in first_line:
            problems.append(Problem(str(path), e.line, f"FAQ id {e.id!r} already used on line {first_line[e.id]}",
                                    "give every FAQ entry its own id (or drop the id column to number entries by row)"))
        else:
            first_line[e.id] = e.line
    if not entries and not problems:
        problems.append(Problem(str(path), None, "FAQ file has no entries", "add rows with a question and an answer"))
    if [p for p in problems if not p.warning]:
        raise FaqDataError(problems)
    return entries


_ROLES = [("second text (text_pair_column)", "answer"), ("text_pair column", "answer column"),
          ("data.text_pair_column", "--answer-column"), ("data.text_column", "--question-column"),
          ("data.label_column", "--id-column"), ("label column", "id column"), ("empty text", "empty question"),
          ("empty label", "empty id"), ("text column", "question column"), ("fill in the text", "fill in the question"),
          ("fill in the label", "fill in the id"), ("with has_header: false", "with --no-header")]


def _faq_wording(p: Problem) -> Problem:
    """The shared readers speak of text / text_pair / label; an FAQ has question / answer / id."""
    msg, fix = p.message, p.fix
    for a, b in _ROLES:
        msg, fix = msg.replace(a, b), fix.replace(a, b)
    return replace(p, message=msg, fix=fix)


# ---- the index ----------------------------------------------------------------------------------
class FaqIndex:
    """Loaded index: entries, their normalised vectors and the manifest; exact top-k search."""

    def __init__(self, entries: list[dict], embeddings: np.ndarray, manifest: dict, folder: Path | None = None):
        self.entries = entries
        self.embeddings = embeddings
        self.manifest = manifest
        self.folder = folder

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def load(cls, folder: str | Path) -> "FaqIndex":
        folder = Path(folder)
        man_path = folder / "manifest.json"
        if not man_path.is_file():
            raise FaqIndexMissingError(f"no FAQ index in {folder}")
        manifest = json.loads(man_path.read_text(encoding="utf-8"))
        embeddings = np.load(folder / "embeddings.npy", allow_pickle=False)
        with open(folder / "entries.jsonl", encoding="utf-8") as f:
            entries = [json.loads(line) for line in f if line.strip()]
        if len(entries) != embeddings.shape[0] or len(entries) != manifest.get("count"):
            raise FaqIndexMissingError(f"{folder}: index files disagree ({len(entries)} entries, "
                                       f"{embeddings.shape[0]} vectors); rebuild it with `domaintune index`")
        return cls(entries, embeddings.astype(np.float32, copy=False), manifest, folder)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices), each (n_queries, k), best first; scores are cosine similarities."""
        k = max(1, min(int(k), len(self.entries)))
        return top_k(np.asarray(queries, dtype=np.float32), self.embeddings, k)


def top_k(queries: np.ndarray, candidates: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (cosine for normalised rows), best first; ties keep file order."""
    n, m = queries.shape[0], candidates.shape[0]
    k = min(k, m)
    scores_out = np.zeros((n, k), dtype=np.float32)
    idx_out = np.zeros((n, k), dtype=np.int64)
    for start in range(0, n, chunk):  # bounded memory: chunk x m scores at a time
        s = queries[start:start + chunk] @ candidates.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < m else np.tile(np.arange(m), (s.shape[0], 1))
        ps = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -ps), axis=1)  # by score descending, then by entry position
        idx_out[start:start + chunk] = np.take_along_axis(part, order, axis=1)
        scores_out[start:start + chunk] = np.take_along_axis(ps, order, axis=1)
    return scores_out, idx_out


def _keys(entries: Sequence[FaqEntry], keyed_by: str) -> list[str]:
    """Stable identity of each entry across FAQ versions: its id, or (without ids) its question (+ occurrence)."""
    if keyed_by == "id":
        return [e.id for e in entries]
    seen: dict[str, int] = {}
    out = []
    for e in entries:
        h = e.question_hash
        seen[h] = seen.get(h, 0) + 1
        out.append(h if seen[h] == 1 else f"{h}#{seen[h]}")
    return out


def _listed(ids: list[str]) -> list[str]:
    return ids[:MAX_LISTED_IDS]


def build_index(folder: str | Path, entries: Sequence[FaqEntry], embed: Callable[[list[str]], np.ndarray], *,
                model_sha256: str, faq_file: str = "", faq_sha256: str = "", keyed_by: str = "id",
                settings: dict | None = None) -> dict:
    """Write (or incrementally update) the index in `folder`; return the new manifest.

    `embed(texts)` returns L2-normalised float vectors, one row per text; it is
    called once, with only the questions no previous build embedded with these
    model weights (an empty call is skipped).
    """
    folder = Path(folder)
    previous: FaqIndex | None = None
    reason = "first build"
    if (folder / "manifest.json").is_file():
        try:
            previous = FaqIndex.load(folder)
            if previous.manifest.get("model_sha256") != model_sha256:
                reason, previous = "model weights changed since the last build: every entry re-embedded", None
            elif previous.manifest.get("format") != FORMAT_VERSION:
                reason, previous = "index format changed: every entry re-embedded", None
            else:
                reason = "incremental"
        except (OSError, ValueError, KeyError) as e:  # a damaged index is rebuilt, not trusted
            reason, previous = f"previous index unreadable ({e}): every entry re-embedded", None

    reuse: dict[str, np.ndarray] = {}
    old_hashes: dict[str, str] = {}
    old_ids: dict[str, str] = {}
    if previous is not None:
        for row, vec in zip(previous.entries, previous.embeddings):
            reuse.setdefault(row["question_sha256"], vec)
            old_ids[row["key"]] = row["id"]
        if previous.manifest.get("keyed_by") == keyed_by:
            old_hashes = dict(previous.manifest.get("entry_hashes", {}))
    keys = _keys(entries, keyed_by)
    qhash = [e.question_hash for e in entries]
    todo: dict[str, str] = {}
    for e, h in zip(entries, qhash):
        if h not in reuse and h not in todo:
            todo[h] = e.question
    t0 = time.perf_counter()
    if todo:
        fresh = np.asarray(embed(list(todo.values())), dtype=np.float32)
        if fresh.shape[0] != len(todo):
            raise ValueError(f"embed returned {fresh.shape[0]} vectors for {len(todo)} texts")
        reuse.update(zip(todo.keys(), fresh))
    embed_seconds = time.perf_counter() - t0
    dims = {v.shape[-1] for v in reuse.values()}
    if len(dims) > 1:
        raise ValueError(f"index vectors have different sizes {sorted(dims)}; rebuild from scratch (delete {folder})")
    dim = dims.pop() if dims else 0
    matrix = np.stack([reuse[h] for h in qhash]).astype(np.float32) if entries else np.zeros((0, dim), np.float32)

    new_hashes = {k: e.content_hash(keyed_by) for k, e in zip(keys, entries)}
    added = [k for k in keys if k not in old_hashes]
    changed = [k for k in keys if k in old_hashes and old_hashes[k] != new_hashes[k]]
    removed = [k for k in old_hashes if k not in new_hashes]
    id_of = {k: e.id for k, e in zip(keys, entries)}  # without ids: row numbers (removed: in the previous version)
    show = id_of.get
    manifest = {
        "format": FORMAT_VERSION, "count": len(entries), "dim": int(dim), "keyed_by": keyed_by,
        "faq_file": faq_file, "faq_sha256": faq_sha256, "model_sha256": model_sha256,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build": reason,
        "embedded": len(todo), "reused": sum(1 for h in qhash if h not in todo),
        "embed_seconds": round(embed_seconds, 3),
        "changes": {"added": len(added), "changed": len(changed), "removed": len(removed),
                    "unchanged": len(keys) - len(added) - len(changed),
                    "added_ids": _listed([show(k) for k in added]), "changed_ids": _listed([show(k) for k in changed]),
                    "removed_ids": _listed([old_ids.get(k, k) for k in removed])},
        "settings": settings or {},
        "files": {"embeddings": "embeddings.npy", "entries": "entries.jsonl"},
        "entry_hashes": new_hashes,
    }

    def write(tmp: Path) -> None:
        with open(tmp / "embeddings.npy", "wb") as f:
            np.save(f, matrix, allow_pickle=False)
        _write_entries(tmp / "entries.jsonl", entries, keys, qhash)
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    atomic_dir(folder, write)
    return manifest


def _write_entries(path: Path, entries: Sequence[FaqEntry], keys: list[str], qhash: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for e, k, h in zip(entries, keys, qhash):
            f.write(json.dumps({"id": e.id, "question": e.question, "answer": e.answer, "key": k,
                                "question_sha256": h}, ensure_ascii=False) + "\n")


# ---- for a run directory --------------------------------------------------------------------------
def model_weights_sha256(model_dir: str | Path) -> str:
    """sha256 of the saved weights: an index is only valid for the exact weights that embedded it."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no model weights")
    h = hashlib.sha256()
    for p in files:
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def index_run(run_dir: str | Path, faq: str | Path | None = None, opts: ReadOptions | None = None,
              question_column: str | int = "question", answer_column: str | int = "answer",
              id_column: str | int | None = None, predictor=None) -> dict:
    """Embed an FAQ file with a retrieval run's encoder into `run/index/`; return the manifest.

    `faq=None` uses the run's `data.faq`. Reader options default to the FAQ
    file's extension (CSV, TSV, JSONL, Parquet) with a header row.
    """
    from domaintune.predictor import Predictor

    predictor = predictor or Predictor(run_dir)
    run_dir = Path(run_dir)
    if predictor.task.output_kind != "ranking":  # a task that ranks FAQ entries embeds them (embed_texts)
        raise ValueError(f"{run_dir} is a `{predictor.task.name}` run; `domaintune index` needs a `task: retrieval` run")
    if faq is None:
        faq = (predictor.config.get("data") or {}).get("faq")
        if not faq:
            raise ValueError("give the knowledge base with --faq FILE (the run's config has no data.faq)")
    faq = Path(faq)
    if not faq.is_file():
        raise FileNotFoundError(f"{faq}: FAQ file not found")
    faq_sha = sha256_file(faq)
    entries = read_faq(faq, opts, question_column, answer_column, id_column)
    columns = file_columns(faq, opts or ReadOptions())
    has_ids = id_column is not None or (has_column(columns, "id") and "id" not in (str(question_column), str(answer_column)))
    ctx = predictor.context()
    manifest = build_index(
        run_dir / INDEX_DIR, entries, lambda texts: predictor.task.embed_texts(predictor.model, texts, ctx),
        model_sha256=model_weights_sha256(run_dir / "model"), faq_file=str(faq.resolve()), faq_sha256=faq_sha,
        keyed_by="id" if has_ids else "question",
        settings={"question_column": question_column, "answer_column": answer_column, "id_column": id_column,
                  "max_length": ctx.max_length})
    log.info("FAQ index: %d entries (%d embedded, %d reused) in %s", manifest["count"], manifest["embedded"],
             manifest["reused"], run_dir / INDEX_DIR)
    return manifest


def load_run_index(run_dir: str | Path) -> FaqIndex:
    """The run's index, checked against the run's current weights; a clear error says how to (re)build it."""
    run_dir = Path(run_dir)
    folder = run_dir / INDEX_DIR
    fix = f"build it with `domaintune index {run_dir} --faq FILE` (FILE: CSV/TSV/JSONL with question, answer, optional id)"
    if not (folder / "manifest.json").is_file():
        raise FaqIndexMissingError(f"{run_dir} has no FAQ index (no {folder}/manifest.json); {fix}")
    index = FaqIndex.load(folder)
    if index.manifest.get("model_sha256") != model_weights_sha256(run_dir / "model"):
        raise FaqIndexMissingError(f"the FAQ index in {folder} was built with other model weights (the run was retrained); "
                                   f"re-{fix.removeprefix('build it')}")
    faq_file = index.manifest.get("faq_file")
    if faq_file and Path(faq_file).is_file() and sha256_file(faq_file) != index.manifest.get("faq_sha256"):
        log.warning("%s changed since the FAQ index was built; run `domaintune index %s --faq %s` to update it",
                    faq_file, run_dir, faq_file)
    return index
