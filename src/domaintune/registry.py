"""Model registry: named models, auto-numbered versions with lineage, and aliases (production, staging...).

`register(run_dir, name)` records a finished run directory as the next version
of NAME, with its lineage: the parent (a registered version or a run directory),
the SHA-256 of every data file its config.yaml names, the resolved config, a
summary of metrics.json and, for continual-learning runs, RUN_DIR/continual/gate.json;
and it binds the version to the SHA-256 of every weight, tokenizer and config file
a Predictor loads (`domaintune.registry_files`).
`promote(name, version, alias)` points an alias at a version and keeps the
alias's history, so `rollback(name, alias)` returns to the previously promoted
version. Both, and the server, refuse a version whose files no longer match.
`domaintune serve --registry NAME[@alias]` watches the aliases and swaps a
promotion in between two batches (`domaintune.serving.registry_watch`).

Backend: MLflow's model registry (`mlflow-skinny`, SQLAlchemy store) on a local
SQLite file - no tracking server, no network. Why MLflow rather than our own
tables: it already gives registered models, versions numbered atomically in the
database, aliases with lookups by alias, tags, name validation and schema
migrations (alembic), and the same file opens in the MLflow UI or client for
teams that already use it. What it lacks we keep in its tags: lineage as
`domaintune.*` version tags, and the alias history (MLflow keeps only the
current target of an alias) as a JSON stack per alias on the registered model.
Alias changes read, then rewrite, that history: for a SQLite registry they
hold a file lock (`registry.db.lock`), so two `promote`s from two processes
cannot drop each other's history entry. (A server database shared between
machines has no such lock: run promotions from one place.)
`mlflow-skinny` imports in about a second, pulls no torch/CUDA and changes no
pinned package; MLflow's usage telemetry is switched off here (offline boxes).

Runs are referenced by absolute path, never copied: the registry says which run
directory is which version; the run directory stays the artefact.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("domaintune.registry")

TAG = "domaintune."           # prefix of every tag we write
DEFAULT_ALIAS = "production"
_HISTORY_KEEP = 200            # alias events kept per alias (the stack itself is never trimmed below what rollback needs)


class RegistryError(ValueError):
    """A registry operation cannot be done as asked; the message says what, where and how to fix it."""


def default_registry_db() -> Path:
    """$DOMAINTUNE_HOME/registry.db (default ~/.domaintune), beside the API key store."""
    from domaintune.serving.keys import state_home

    return state_home() / "registry.db"


def registry_uri(db: str | Path | None = None) -> str:
    """An SQLAlchemy URL for MLflow: a plain path becomes sqlite:///ABSOLUTE_PATH.

    The SQLite file is created owner-only (0600, its folder 0700 if created here) before MLflow opens it:
    the registry records run paths, metrics and descriptions, which other users of the machine have no
    business reading."""
    from domaintune.security import sqlite_url_private

    db = db if db is not None else default_registry_db()
    if "://" in str(db):
        return sqlite_url_private(str(db))
    return sqlite_url_private(Path(db).expanduser().resolve())


@dataclass
class Version:
    """One registered version, as `show` and the server see it."""

    name: str
    version: int
    run_dir: str
    aliases: list[str] = field(default_factory=list)
    created: str = ""
    description: str = ""
    parent: dict | None = None
    data: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    gate: dict | None = None
    files: dict | None = None  # hashes of the served files (registry_files); None: registered before binding

    def to_dict(self) -> dict:
        return asdict(self)


def read_gate(run_dir: Path) -> dict | None:
    """RUN_DIR/continual/gate.json ({"promotable": bool, ...}, written by continual learning), or None."""
    p = Path(run_dir) / "continual" / "gate.json"
    if not p.is_file():
        return None
    try:
        gate = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RegistryError(f"{p}: unreadable gate file ({e}); fix or delete it, then retry") from None
    if not isinstance(gate, dict) or not isinstance(gate.get("promotable"), bool):
        raise RegistryError(f"{p}: expected a JSON object with a boolean 'promotable'; fix or delete it")
    return gate


def check_run_dir(run_dir: str | Path, load: bool = True) -> Path:
    """The absolute run directory after checking it is a finished run (and, with `load`, that it loads)."""
    p = Path(run_dir).expanduser().resolve()
    if not p.is_dir():
        raise RegistryError(f"run directory {p} does not exist; give the folder `domaintune train` wrote "
                            f"(its output_dir)")
    missing = [n for n in ("config.yaml", "model") if not (p / n).exists()]
    if missing:
        raise RegistryError(f"{p} is not a finished run directory (missing {', '.join(missing)}); train it to the "
                            f"end first, or pass the run's folder rather than a file inside it")
    if load:
        from transformers.utils import logging as hf_logging

        from domaintune.predictor import Predictor

        hf_logging.disable_progress_bar()  # a validation load needs no "Loading weights" bar

        try:
            Predictor(p, backend="torch")
        except Exception as e:  # noqa: BLE001 - any load failure is one user-facing message
            raise RegistryError(f"{p}: the run does not load ({type(e).__name__}: {e}); re-train or re-export it")
    return p


def data_hashes(run_dir: Path, config: dict) -> dict:
    """{split: {"path", "sha256", "bytes"}} for every data file config.yaml names.

    Relative paths were relative to the directory training ran in, which is not
    recorded; they are looked up from the current directory and the run's parent,
    and a file not found is recorded as such instead of failing the registration."""
    from domaintune.security.digest import sha256_file  # not training.checkpoint's re-export: that pulls in torch

    out = {}
    data = config.get("data") or {}
    for split in ("train", "dev", "test", "faq"):
        value = data.get(split)
        if not value:
            continue
        raw = str(value).split("#", 1)[0]  # file.json#train,oos_train names splits inside one file
        cand = [Path(raw)] if Path(raw).is_absolute() else [Path.cwd() / raw, run_dir.parent / raw, run_dir / raw]
        found = next((c for c in cand if c.is_file()), None)
        if found is None:
            out[split] = {"path": raw, "sha256": None, "error": "file not found when registering"}
        else:
            out[split] = {"path": str(found.resolve()), "sha256": sha256_file(found), "bytes": found.stat().st_size}
    return out


def metrics_summary(run_dir: Path) -> dict:
    """The numbers worth comparing versions by: task, headline, dev/test scalars, training time."""
    p = run_dir / "metrics.json"
    if not p.is_file():
        return {}
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        return {"error": f"metrics.json unreadable: {e}"}
    scalars = lambda d: {k: v for k, v in (d or {}).items() if isinstance(v, (int, float))}  # noqa: E731
    t = m.get("train") or {}
    return {"task": m.get("task"), "method": m.get("method"), "model": m.get("model"),
            "headline": m.get("headline"), "test": scalars(m.get("test")), "dev": scalars(m.get("dev")),
            "train_seconds": t.get("seconds")}


class Registry:
    """The registry in one SQLite file (or any SQLAlchemy URL MLflow supports)."""

    def __init__(self, db: str | Path | None = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # never phone home from an offline box
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "creating tables" is noise
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self.where = str(db if db is not None else default_registry_db())
        self._exc = MlflowException
        try:
            self.uri = registry_uri(db)
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self.client.search_registered_models(max_results=1)  # opens the database and migrates its schema now
        except Exception as e:  # noqa: BLE001 - unwritable path, bad URL, missing driver: one message
            msg = e.message if isinstance(e, MlflowException) else f"{type(e).__name__}: {e}"
            raise RegistryError(f"cannot open the registry at {self.where}: {msg}; check the path or "
                                f"--registry-db URL") from None

    @contextmanager
    def _alias_lock(self):
        """Serialise alias read-modify-write between processes sharing a SQLite registry file."""
        if not self.uri.startswith("sqlite:///"):
            yield
            return
        from filelock import FileLock, Timeout

        path = self.uri[len("sqlite:///"):] + ".lock"
        try:
            with FileLock(path, timeout=60):
                yield
        except Timeout:
            raise RegistryError(f"another process has held {path} for 60 s; if none is running "
                                f"(a crashed promote), delete that file and retry") from None

    # ---- reading -----------------------------------------------------------------------------------------------

    def _model(self, name: str):
        try:
            return self.client.get_registered_model(name)
        except self._exc as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                known = ", ".join(m.name for m in self.client.search_registered_models()) or "none yet"
                raise RegistryError(f"no registered model {name!r} in {self.where} (registered: {known}); "
                                    f"register a run with `domaintune registry register RUN_DIR --name {name}`") from None
            raise RegistryError(f"{name!r}: {e.message}") from None

    def _mv(self, name: str, version: int | str):
        self._model(name)
        try:
            return self.client.get_model_version(name, str(int(version)))
        except (ValueError, TypeError):
            raise RegistryError(f"version must be a number such as 3, not {version!r}") from None
        except self._exc:
            have = sorted(int(v.version) for v in self.client.search_model_versions(f"name='{name}'"))
            raise RegistryError(f"{name} has no version {version} (versions: {have or 'none'})") from None

    def _version(self, mv, model=None) -> Version:
        t = mv.tags or {}
        model = model or self.client.get_registered_model(mv.name)  # search results carry no aliases
        aliases = [a for a, v in (model.aliases or {}).items() if str(v) == str(mv.version)]
        js = lambda k, d=None: json.loads(t[TAG + k]) if TAG + k in t else d  # noqa: E731
        return Version(name=mv.name, version=int(mv.version), run_dir=mv.source, aliases=sorted(aliases),
                       created=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(mv.creation_timestamp / 1000)),
                       description=mv.description or "", parent=js("parent"), data=js("data", {}),
                       metrics=js("metrics", {}), config=js("config", {}), gate=js("gate"), files=js("files"))

    def get(self, name: str, version: int | str) -> Version:
        return self._version(self._mv(name, version))

    def verify(self, name: str, version: int | str) -> Version:
        """The version after checking its run directory still holds the files it was registered with.

        Raises `registry_files.BindingError` naming each changed, missing or new file (or saying the version
        predates the binding). Hashes the files: call it at promote/rollback/load time, not on every poll."""
        return _verified(self.get(name, version))

    def alias_version(self, name: str, alias: str = DEFAULT_ALIAS) -> int | None:
        """The version ALIAS points at, or None: one indexed query, cheap enough to poll twice a second."""
        try:
            return int(self.client.get_model_version_by_alias(name, alias).version)
        except self._exc as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def resolve(self, name: str, alias: str = DEFAULT_ALIAS) -> Version:
        """The version an alias points at; a clear error when the model or alias does not exist."""
        model = self._model(name)
        v = self.alias_version(name, alias)
        if v is None:
            have = ", ".join(f"{a}->v{n}" for a, n in sorted(model.aliases.items())) or "none"
            raise RegistryError(f"{name} has no alias {alias!r} (aliases: {have}); "
                                f"set it with `domaintune registry promote {name} VERSION --alias {alias}`")
        return self.get(name, v)

    def versions(self, name: str) -> list[Version]:
        model = self._model(name)
        mvs = self.client.search_model_versions(f"name='{name}'")
        return sorted((self._version(mv, model) for mv in mvs), key=lambda v: v.version)

    def list(self) -> list[dict]:
        """One row per registered model: versions, latest, aliases."""
        rows = []
        for m in sorted(self.client.search_registered_models(), key=lambda m: m.name):
            versions = [int(v.version) for v in self.client.search_model_versions(f"name='{m.name}'")]
            rows.append({"name": m.name, "versions": len(versions), "latest": max(versions, default=None),
                         "aliases": dict(sorted((a, int(v)) for a, v in m.aliases.items())),
                         "description": m.description or ""})
        return rows

    def history(self, name: str, alias: str = DEFAULT_ALIAS) -> list[dict]:
        """Promotions and rollbacks of ALIAS, oldest first: {"action", "version", "from", "at"}."""
        return self._json_tag(self._model(name), f"alias_log.{alias}")

    def show(self, name: str, version: int | str | None = None) -> dict:
        """A version with its lineage, or the model with every version and each alias's history."""
        if version is not None:
            return self.get(name, version).to_dict()
        model = self._model(name)
        aliases = {a: int(v) for a, v in model.aliases.items()}
        return {"name": name, "description": model.description or "", "aliases": aliases,
                "history": {a: self.history(name, a) for a in self._aliases_with_history(model) | set(aliases)},
                "versions": [{"version": v.version, "run_dir": v.run_dir, "aliases": v.aliases, "created": v.created,
                              "parent": v.parent, "headline": _headline(v.metrics),
                              "promotable": None if v.gate is None else v.gate.get("promotable")}
                             for v in self.versions(name)]}

    @staticmethod
    def _json_tag(model, key: str) -> list:
        raw = (model.tags or {}).get(TAG + key)
        return json.loads(raw) if raw else []

    @staticmethod
    def _aliases_with_history(model) -> set[str]:
        pre = TAG + "alias_log."
        return {k[len(pre):] for k in (model.tags or {}) if k.startswith(pre)}

    # ---- writing -----------------------------------------------------------------------------------------------

    def register(self, run_dir: str | Path, name: str, parent: str | None = None, alias: str | None = None,
                 description: str = "", force: bool = False, check_load: bool = True) -> Version:
        """Record RUN_DIR as the next version of NAME (creating NAME if new); with `alias`, promote it too.

        `parent`: "NAME:VERSION", a version number of NAME, or a run directory. Without it, a parent is
        inferred when the run was fine-tuned from another run's model/ that is registered."""
        _check_name(name)
        if alias is not None:
            _check_alias(alias)
        run = check_run_dir(run_dir, load=check_load)
        from domaintune.security.safe_yaml import load_yaml_file

        config = load_yaml_file(run / "config.yaml") or {}
        gate = read_gate(run)
        if alias is not None and gate is not None and not gate["promotable"] and not force:
            raise RegistryError(_gate_refusal(run, gate, f"register it without --alias, or pass --force"))
        lineage_parent = self._parent(name, parent, config)
        from domaintune.registry_files import files_tag, record_files

        files = files_tag(record_files(run))  # after the load check: the bytes that were just shown to load
        tags = {TAG + "parent": lineage_parent, TAG + "data": data_hashes(run, config), TAG + "config": config,
                TAG + "metrics": metrics_summary(run), TAG + "gate": gate}
        tags = {k: json.dumps(v, ensure_ascii=False, default=str) for k, v in tags.items() if v is not None}
        tags[TAG + "files"] = files
        try:
            self.client.get_registered_model(name)
        except self._exc:
            try:
                self.client.create_registered_model(name)
            except self._exc as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":  # a concurrent register created it: fine
                    raise RegistryError(f"cannot create model {name!r}: {e.message}") from None
        try:
            mv = self.client.create_model_version(name, source=str(run), tags=tags, description=description or None)
        except self._exc as e:
            raise RegistryError(f"cannot register {run} as {name}: {e.message}") from None
        log.info("registered %s as %s version %s", run, name, mv.version)
        if alias is not None:
            self.promote(name, int(mv.version), alias, force=force)
        return self.get(name, mv.version)

    def _parent(self, name: str, parent: str | None, config: dict) -> dict | None:
        if parent is None:
            return self._inferred_parent(config)
        spec = str(parent)
        m = re.fullmatch(r"(?:(?P<name>[^:/\\]+):)?(?P<version>\d+)", spec)
        if m:
            pname = m["name"] or name
            v = self.get(pname, m["version"])
            return {"model": pname, "version": v.version, "run_dir": v.run_dir}
        p = Path(spec).expanduser().resolve()
        if not p.is_dir():
            raise RegistryError(f"--parent {spec!r}: neither NAME:VERSION, a version number, nor an existing run "
                                f"directory")
        return {"run_dir": str(p), **self._registered_as(p)}

    def _inferred_parent(self, config: dict) -> dict | None:
        """Fine-tuned from another run (model: runs/x/model): that run, and its registered version if any."""
        model = config.get("model")
        if not isinstance(model, str) or "/" not in model and "\\" not in model:
            return None
        p = Path(model).expanduser()
        p = p.parent if p.name == "model" else p
        if not (p / "config.yaml").is_file():
            return None
        p = p.resolve()
        return {"run_dir": str(p), **self._registered_as(p), "inferred": "config model: is this run's model/"}

    def _registered_as(self, run: Path) -> dict:
        hits = [mv for m in self.client.search_registered_models()
                for mv in self.client.search_model_versions(f"name='{m.name}'") if mv.source == str(run)]
        if not hits:
            return {}
        mv = max(hits, key=lambda mv: int(mv.version))
        return {"model": mv.name, "version": int(mv.version)}

    def promote(self, name: str, version: int | str, alias: str = DEFAULT_ALIAS, force: bool = False) -> dict:
        """Point ALIAS at VERSION; refused when the run's files changed since registration (always) or its
        continual gate says not promotable (unless force: the gate is a judgement, the binding is not)."""
        _check_alias(alias)
        v = self.get(name, version)
        run = Path(v.run_dir)
        if not (run / "model").is_dir():
            raise RegistryError(f"{name} v{v.version}: its run directory {run} is gone or has no model/; "
                                f"restore it, or promote another version")
        _verified(v)
        gate = read_gate(run) if run.is_dir() else v.gate
        if gate is not None and not gate["promotable"] and not force:
            raise RegistryError(_gate_refusal(run, gate, "promote another version, or pass --force to override"))
        with self._alias_lock():
            previous = self.alias_version(name, alias)
            model = self._model(name)
            stack = self._json_tag(model, f"alias_stack.{alias}")
            if not stack or stack[-1] != v.version:
                stack.append(v.version)
            self._set_alias(name, alias, v.version, stack, "promote" + (" (forced past the gate)" if
                                                                        gate and not gate["promotable"] else ""),
                            previous, model)
        return {"model": name, "alias": alias, "version": v.version, "previous": previous, "run_dir": v.run_dir}

    def rollback(self, name: str, alias: str = DEFAULT_ALIAS) -> dict:
        """Point ALIAS back at the version promoted before the current one."""
        _check_alias(alias)
        with self._alias_lock():
            return self._rollback_locked(name, alias)

    def _rollback_locked(self, name: str, alias: str) -> dict:
        model = self._model(name)
        current = self.alias_version(name, alias)
        stack = self._json_tag(model, f"alias_stack.{alias}")
        if stack and stack[-1] == current:
            stack.pop()
        if not stack:
            raise RegistryError(f"{name}@{alias}: no earlier promoted version to roll back to "
                                f"(`domaintune registry show {name}` lists the history); promote a version instead")
        target = self.get(name, stack[-1])
        if not (Path(target.run_dir) / "model").is_dir():
            raise RegistryError(f"{name}@{alias}: the previous version v{target.version} has lost its run directory "
                                f"{target.run_dir}; restore it or promote another version")
        _verified(target)  # a rollback must not bring back edited weights either
        self._set_alias(name, alias, target.version, stack, "rollback", current, model)
        return {"model": name, "alias": alias, "version": target.version, "previous": current,
                "run_dir": target.run_dir}

    def _set_alias(self, name, alias, version, stack, action, previous, model) -> None:
        log_ = self._json_tag(model, f"alias_log.{alias}")
        log_.append({"action": action, "version": version, "from": previous,
                     "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        try:
            # history first: if the alias write fails, a rollback still finds the version serving now
            self.client.set_registered_model_tag(name, TAG + f"alias_stack.{alias}", json.dumps(stack))
            self.client.set_registered_model_tag(name, TAG + f"alias_log.{alias}", json.dumps(log_[-_HISTORY_KEEP:]))
            self.client.set_registered_model_alias(name, alias, str(version))
        except self._exc as e:
            raise RegistryError(f"{name}@{alias}: {e.message}") from None
        log.info("%s@%s: %s v%s (was %s)", name, alias, action, version, previous)


def _verified(v: Version) -> Version:
    from domaintune.registry_files import verify_files

    verify_files(v.run_dir, v.files, v.name, v.version)
    return v


def _headline(metrics: dict) -> dict:
    test = metrics.get("test") or {}
    return {k: test[k] for k in (metrics.get("headline") or []) if k in test}


def _gate_refusal(run: Path, gate: dict, fix: str) -> str:
    why = gate.get("reason") or gate.get("reasons") or gate.get("message")
    return (f"{run}/continual/gate.json says this run is not promotable" + (f" ({why})" if why else "") +
            f"; {fix}")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _check_name(name: str) -> None:
    """Stricter than MLflow: the name also becomes a URL path segment of the server."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistryError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (start with a letter or "
                            f"digit, at most 128 characters), e.g. tickets-en")


def _check_alias(alias: str) -> None:
    if not isinstance(alias, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", alias) \
            or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise RegistryError(f"alias {alias!r}: use a word such as production or staging (letters, digits, '_', '-'; "
                            f"not 'latest' or v<number>, which MLflow reserves)")
