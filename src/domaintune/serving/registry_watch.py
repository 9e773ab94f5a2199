"""Serve registry aliases (`domaintune serve --registry NAME[@alias]`) and follow promotions without a restart.

Each `NAME@alias` (alias default `production`) becomes one served model, named
NAME for production and NAME-ALIAS otherwise, loaded from the run directory the
alias points at. A background thread asks the registry every `interval`
seconds which version each alias points at (one indexed SQLite query, ~2 ms);
when it changed - `domaintune registry promote` or `rollback` from any
process - it loads the new run off the request path and swaps it in between
two batches through the slot's ordinary `reload` (MicroBatcher.swap), so no
request fails or waits on the load. Polling rather than a notification
because SQLite has none that crosses processes, and a 0.5 s poll keeps the
switch well inside the 2 s the service promises.

Responses carry the registry version as `version` ("3"), so a client, the
audit log and the `model_info` metric all say which registered version
answered; `/v1/models` adds a `registry` block (model, alias, version, run
directory, content hash). A version that fails to load is logged as an error
and the old version keeps serving; the same version is retried only after
`retry_seconds` (or as soon as the alias moves again).

Every load - at start, on a switch, on a SIGHUP/admin reload - first checks the
run's files against the hashes recorded at registration
(`domaintune.registry_files.verify_files`); a version whose weights changed is
refused like one that does not load (at start: the server does not start). The
check hashes the files, so it runs at load time only, never on the 0.5 s poll.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from domaintune.serving.app import ModelSlot

log = logging.getLogger("domaintune.serving")


@dataclass
class Binding:
    """One served alias: registered model, alias, URL name, and the version currently served."""

    model: str
    alias: str
    served_name: str
    version: int
    run_dir: Path
    files: dict | None = None   # the version's recorded file hashes (None: registered before they were recorded)


def parse_spec(spec: str) -> tuple[str, str]:
    """"tickets" -> ("tickets", "production"); "tickets@staging" -> ("tickets", "staging")."""
    from domaintune.registry import DEFAULT_ALIAS, RegistryError

    model, _, alias = spec.partition("@")
    if not model or (spec.count("@") > 1) or ("@" in spec and not alias):
        raise RegistryError(f"--registry {spec!r}: write NAME or NAME@ALIAS, e.g. tickets@production")
    return model, alias or DEFAULT_ALIAS


def resolve_bindings(specs: list[str], registry) -> list[Binding]:
    """Look every spec up now, so a typo or a missing alias stops the server before it starts."""
    from domaintune.registry import DEFAULT_ALIAS

    out = []
    for spec in specs:
        model, alias = parse_spec(spec)
        v = registry.resolve(model, alias)
        out.append(Binding(model, alias, model if alias == DEFAULT_ALIAS else f"{model}-{alias}", v.version,
                           Path(v.run_dir), v.files))
    return out


class RegistrySlot(ModelSlot):
    """A ModelSlot whose version is the registry version, and which the watcher can switch to another one."""

    def __init__(self, binding: Binding, settings, metrics):
        self.binding = binding
        self._switch_lock = threading.Lock()
        self._target = binding.version   # the registry version the run being loaded belongs to
        self._target_files = binding.files  # ... and the file hashes it was registered with
        self._switching = False
        self.content_version = ""
        super().__init__(binding.served_name, binding.run_dir, settings, metrics)
        self.content_version = self._loaded_content

    def _load(self, run_dir: Path):
        from domaintune.registry_files import verify_files

        verify_files(run_dir, self._target_files, self.binding.model, self._target)  # before a byte is loaded
        run_dir, predictor, content = super()._load(run_dir)
        self._loaded_content = content
        return run_dir, predictor, str(self._target)

    def switch(self, version: int, run_dir: Path, files: dict | None = None) -> dict:
        """Load `run_dir` as registry `version` (checked against `files`, its recorded hashes) and swap it in
        between two batches; raises if its files changed or it cannot load."""
        with self._switch_lock:
            self._target, self._target_files, self._switching = version, files, True
            try:
                rec = self.reload(Path(run_dir))
            except BaseException:
                self._target, self._target_files = self.binding.version, self.binding.files
                raise
            finally:
                self._switching = False
            self.binding.version, self.binding.run_dir, self.binding.files = version, Path(run_dir), files
            self.content_version = self._loaded_content
            return rec

    def reload(self, run_dir: Path | None = None) -> dict:
        """SIGHUP / admin reload re-read the served version; another run directory would mislabel it."""
        if run_dir is not None and not self._switching and Path(run_dir).resolve() != self.binding.run_dir.resolve():
            raise ValueError(f"{self.name} is served from the registry ({self.binding.model}@{self.binding.alias}); "
                             f"register the run and `domaintune registry promote` it instead")
        return super().reload(run_dir)

    def info(self) -> dict:
        b = self.binding
        return {**super().info(), "registry": {"model": b.model, "alias": b.alias, "version": b.version,
                                               "run_dir": str(b.run_dir), "content_version": self.content_version}}


class RegistryWatcher:
    """Polls the registry and switches slots whose alias moved. `poll_once` is the whole logic (tests call it)."""

    def __init__(self, registry, slots: list[RegistrySlot], interval: float = 0.5, retry_seconds: float = 30.0):
        self.registry, self.slots = registry, slots
        self.interval, self.retry_seconds = interval, retry_seconds
        self._failed: dict[str, tuple[int, float]] = {}   # served name -> (version that failed, when)
        self._query_failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-watch", daemon=True)

    def start(self) -> "RegistryWatcher":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad poll
                log.exception("registry watcher: unexpected error; still watching")

    def poll_once(self) -> list[dict]:
        """Switch every slot whose alias now points at another version; returns what was switched."""
        done = []
        for slot in self.slots:
            b = slot.binding
            try:
                v = self.registry.alias_version(b.model, b.alias)
            except Exception as e:  # noqa: BLE001 - database locked or gone: keep serving, say so once
                if not self._query_failing:
                    log.error("registry watcher: cannot read %s@%s (%s); still serving v%s", b.model, b.alias, e,
                              b.version)
                self._query_failing = True
                continue
            self._query_failing = False
            if v is None or v == b.version:
                continue
            failed = self._failed.get(slot.name)
            if failed and failed[0] == v and time.monotonic() - failed[1] < self.retry_seconds:
                continue
            t0 = time.perf_counter()
            try:
                target = self.registry.get(b.model, v)
                run_dir = Path(target.run_dir)
                old = b.version
                slot.switch(v, run_dir, target.files)
            except Exception as e:  # noqa: BLE001 - a bad version must never take the service down
                from domaintune.registry_files import BindingError

                self._failed[slot.name] = (v, time.monotonic())
                if isinstance(e, BindingError):
                    log.error("registry: %s@%s moved to v%s, which is refused: %s; still serving v%s",
                              b.model, b.alias, v, e, b.version)
                else:
                    log.error("registry: %s@%s moved to v%s but it failed to load (%s: %s); still serving v%s",
                              b.model, b.alias, v, type(e).__name__, e, b.version)
                continue
            self._failed.pop(slot.name, None)
            seconds = time.perf_counter() - t0
            log.warning("registry: %s@%s now serving v%s (was v%s) from %s, loaded in %.2f s", b.model, b.alias, v,
                        old, run_dir, seconds)
            done.append({"model": slot.name, "version": v, "previous": old, "seconds": seconds})
        return done


def home(registry_db) -> Path:
    """Where a registry-only service keeps its default audit log: beside the registry file."""
    from domaintune.registry import default_registry_db

    if registry_db is not None and "://" not in str(registry_db):
        return Path(registry_db).expanduser().resolve().parent
    return default_registry_db().parent


def attach(specs: list[str], registry_db, settings, metrics, taken: dict, interval: float = 0.5):
    """(registry slots by served name, started watcher) for `build_service`; nothing when `specs` is empty."""
    if not specs:
        return {}, None
    from domaintune.registry import Registry

    registry = Registry(registry_db)
    bindings = resolve_bindings(specs, registry)
    names = [b.served_name for b in bindings]
    clash = sorted({n for n in names if n in taken or names.count(n) > 1})
    if clash:
        from domaintune.registry import RegistryError

        raise RegistryError(f"served model name(s) {clash} given twice (a run directory's name or a repeated "
                            f"--registry); rename the run with --name or serve each alias once")
    slots = {}
    for b in bindings:
        try:
            slots[b.served_name] = RegistrySlot(b, settings, metrics)
        except Exception as e:  # noqa: BLE001 - any load failure: one message that says what to do
            from domaintune.registry import RegistryError
            from domaintune.registry_files import BindingError

            for s in slots.values():
                s.batcher.close()
            if isinstance(e, BindingError):
                raise BindingError(f"cannot serve {b.model}@{b.alias}: {e}") from None
            raise RegistryError(f"{b.model}@{b.alias} points at v{b.version} ({b.run_dir}), which does not load "
                                f"({type(e).__name__}: {e}); `domaintune registry rollback {b.model} --alias "
                                f"{b.alias}` or promote a working version") from None
    return slots, RegistryWatcher(registry, list(slots.values()), interval=interval).start()
