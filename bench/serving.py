#!/usr/bin/env python
"""Benchmark: serving a fine-tuned classifier on CPU - domaintune vs plain transformers, offline and over HTTP.

    .venv/bin/python bench/serving.py                    # everything (what `make bench-serving` runs)
    .venv/bin/python bench/serving.py --skip-http        # offline part only
    .venv/bin/python bench/serving.py --skip-offline --only-naive --requests 50 --levels 1,8   # smoke test
    .venv/bin/python bench/serving.py --serve-arg="--max-batch 32" --serve-arg="--max-wait-ms 5"

Why: a fine-tuned model is only useful if it serves fast and lean. This measures what a
competent user writes with plain transformers against domaintune, on the same data
(banking77 test texts at their real lengths, CC BY 4.0) and run directory (`--run`).

Offline, each variant in a fresh subprocess (peak RSS is its own): (a) the peer,
`transformers.pipeline("text-classification", device=-1, batch_size=32)`; (b)-(d)
`Predictor(run, backend=torch|onnx|onnx-int8)`. texts/s over the whole test set after a
warm-up, p50/p99 of one-text calls over ~200 texts, peak RSS, accuracy; ratios vs (a);
argmax agreement of (c), (d) with (b). Missing ONNX files are made first with `domaintune
export RUN --format onnx --quantize int8` (retried with --force on failure; reported).

HTTP, an asyncio + httpx load generator on loopback (N workers send one-text POSTs until
the request count is reached; throughput = 2xx / wall s): (e) the peer, a naive FastAPI +
uvicorn server defined here (one `pipeline` call per request in a plain `def` endpoint);
(f) `domaintune serve RUN --backend onnx-int8` with a fresh API key, then a saturation
probe (4x the best level, tiny --max-queue: every 429/503 must carry Retry-After, and
/healthz must answer 200 afterwards).

Writes bench/results/serving.md and .json (a skipped part is carried over from the previous
serving.json) and prints them; consoles go to runs/bench-logs/. Servers are killed on exit,
Ctrl-C included. The load generator shares the cores with the server (both sides alike);
all is measured as-is (load average and cores busy with other work are recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import itertools
import json
import os
import platform
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))
for _k, _v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"),
               ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_k, _v)

RESULTS = REPO / "bench" / "results"
from serving_report import VARIANTS, markdown  # noqa: E402
CLASSES = ("2xx", "429", "503", "4xx", "5xx", "conn_error")  # 4xx/5xx: other than 429/503
READY_TIMEOUT, CLIENT_TIMEOUT, HTTP_WARMUP = 120.0, 120.0, 32
SERVERS: list = []  # every running server; main's finally stops them
ms = lambda x: None if x is None else round(1000 * x, 2)  # noqa: E731
ratio = lambda a, b: None if a is None or not b else round(a / b, 3)  # noqa: E731
now = lambda: dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731


# --------------------------------------------------------------------------- helpers

def resolve(p: str) -> Path:
    q = Path(p).expanduser()
    return q.resolve() if q.is_absolute() or q.exists() else (REPO / q).resolve()


def rel(p) -> str:
    """A path as typed from the repo root (../shared/... stays relative; elsewhere absolute)."""
    r = os.path.relpath(Path(p).absolute(), REPO)
    return str(p) if r.startswith(os.pardir + os.sep + os.pardir) else r


def show(cmd: list[str]) -> str:
    return shlex.join([rel(x) if x.startswith(str(REPO) + os.sep) else x for x in cmd])


def read_data(path: Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    if limit and limit < len(rows):  # evenly spaced (the file is sorted by category); smoke tests only
        rows = [rows[i * len(rows) // limit] for i in range(limit)]
    return [t for t, _ in rows], [c for _, c in rows]


def pct(xs: list[float], q: float) -> float | None:
    """Linearly interpolated percentile, q in 0..1."""
    if not xs:
        return None
    s, k = sorted(xs), (len(xs) - 1) * q
    lo = int(k)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (k - lo)


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def child_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# Machine-load bookkeeping shared with the training benchmark.
from classification import cpu_snapshot, other_load  # noqa: E402


def machine_and_versions() -> tuple[dict, dict]:
    import psutil
    from importlib.metadata import PackageNotFoundError, version

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.lower().startswith("model name")), platform.processor())
    machine = {"cpu": cpu, "logical_cores": os.cpu_count(), "physical_cores": physical_cores(),
               "ram_gb": round(psutil.virtual_memory().total / 2**30, 1), "os": platform.platform(),
               "python": platform.python_version()}
    v = {}
    for p in ("torch", "transformers", "tokenizers", "onnxruntime", "fastapi", "uvicorn", "httpx", "domaintune"):
        try:
            v[p] = version(p)
        except PackageNotFoundError:
            v[p] = None
    git = lambda *c: subprocess.run(["git", *c], capture_output=True, text=True, cwd=REPO).stdout.strip()  # noqa: E731
    v["domaintune_commit"] = git("rev-parse", "--short", "HEAD") + ("+uncommitted changes" if git("status", "--porcelain", "--", "src") else "")
    return machine, v


def domaintune_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "domaintune"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "domaintune"]


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (tmp := path.with_name(f".{path.name}.tmp")).write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_logged(cmd: list[str], log: Path, commands: list[str]) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    commands.append(show(cmd))
    print(f"$ {commands[-1]}   (log: {rel(log)})", flush=True)
    with open(log, "w", encoding="utf-8") as f:
        return subprocess.run(cmd, cwd=REPO, env=child_env(), stdout=f, stderr=subprocess.STDOUT).returncode


def log_tail(log: Path, n: int = 15) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-n:]) if log.is_file() else ""


# --------------------------------------------------------------------------- subprocess modes

def peer_pipeline(run: Path, batch_size: int | None = None):
    """The peer as a user writes it: a transformers pipeline on CPU, torch threads = physical cores."""
    import torch
    from transformers import pipeline

    torch.set_num_threads(physical_cores())
    kw = {"batch_size": batch_size} if batch_size else {}
    pipe = pipeline("text-classification", model=str(run / "model"), tokenizer=str(run / "model"), device=-1, **kw)
    names = json.loads((run / "labels.json").read_text(encoding="utf-8")).get("labels") if (run / "labels.json").is_file() else None

    def label(r: dict) -> str:  # a model saved without id2label names answers LABEL_i: map it through labels.json
        lab = r["label"]
        return names[int(lab[6:])] if names and lab.startswith("LABEL_") and lab[6:].isdigit() else lab
    return pipe, label


def offline_worker(a) -> int:
    """One offline variant in this fresh process; writes its numbers and labels to --worker-out."""
    run = resolve(a.run)
    texts, gold = read_data(resolve(a.data), a.limit)
    t0 = time.perf_counter()
    if a.offline_worker == "pipeline":
        pipe, label = peer_pipeline(run, batch_size=32)
        batch, one = (lambda xs: [label(r) for r in pipe(xs)]), pipe
    else:
        from domaintune.predictor import Predictor

        p = Predictor(run, backend=a.offline_worker)
        batch, one = (lambda xs: [r["label"] for r in p.predict(xs)]), p.predict
    load_s = time.perf_counter() - t0
    import torch

    batch(texts[:64])  # warm-up: allocator, kernels, ORT session
    for x in texts[:10]:
        one(x)
    t0 = time.perf_counter()
    labels = batch(texts)
    secs = time.perf_counter() - t0
    n_lat, lat = min(a.latency_texts, len(texts)), []
    for i in range(n_lat):  # spread over the file: real length distribution, every category
        x = texts[i * len(texts) // n_lat]
        t = time.perf_counter()
        one(x)
        lat.append(time.perf_counter() - t)
    out = {"variant": a.offline_worker, "torch_threads": torch.get_num_threads(), "load_seconds": round(load_s, 2),
           "texts": len(texts), "seconds": round(secs, 3), "texts_per_second": round(len(texts) / secs, 1),
           "latency_texts": n_lat, "p50_ms": ms(pct(lat, 0.5)), "p99_ms": ms(pct(lat, 0.99)),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "accuracy": round(sum(p == g for p, g in zip(labels, gold)) / len(gold), 4), "labels": labels}
    Path(a.worker_out).write_text(json.dumps(out), encoding="utf-8")
    return 0


def naive_server(a) -> int:
    """(e) FastAPI + uvicorn, one pipeline call per request in a plain `def` endpoint, no batching."""
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel

    pipe, label = peer_pipeline(resolve(a.run))
    app = FastAPI()

    class Req(BaseModel):
        text: str

    def predict(req):
        r = pipe(req.text)[0]
        return {"label": label(r), "score": float(r["score"])}
    predict.__annotations__["req"] = Req  # a local class: the string annotation would not resolve
    app.post("/predict")(predict)

    @app.get("/healthz")
    @app.get("/readyz")
    def health():
        return {"status": "ok"}
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", access_log=False)  # no access log: peer's favour
    return 0


# --------------------------------------------------------------------------- offline part

def ensure_export(run: Path, commands: list[str], logs: Path) -> dict:
    if (run / "export" / "model.onnx").is_file() and (run / "export" / "model.int8.onnx").is_file():
        return {"status": "already present"}
    base = [*domaintune_cmd(), "export", str(run), "--format", "onnx", "--quantize", "int8"]
    if run_logged(base, logs / "serving-export.log", commands) == 0:
        return {"status": "exported"}
    print(log_tail(logs / "serving-export.log"), flush=True)
    if (rc := run_logged([*base, "--force"], logs / "serving-export-force.log", commands)) != 0:
        raise RuntimeError(f"export failed (exit {rc}); see {rel(logs / 'serving-export-force.log')}")
    return {"status": f"exported with --force: the plain export failed (accuracy gate?); see {rel(logs / 'serving-export.log')}"}


def run_offline(a, run: Path, data: Path, gold: list[str], commands: list[str], logs: Path) -> dict:
    rows, labels, snap = {}, {}, cpu_snapshot()
    for v in [x.strip() for x in a.offline_variants.split(",") if x.strip()]:
        fd, out = tempfile.mkstemp(prefix=f"serving-{v}-", suffix=".json")
        os.close(fd)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--offline-worker", v, "--run", str(run),
               "--data", str(data), "--worker-out", out, "--latency-texts", str(a.latency_texts)]
        s0 = cpu_snapshot()
        try:
            rc = run_logged(cmd + (["--limit", str(a.limit)] if a.limit else []), logs / f"serving-offline-{v}.log", commands)
            r = json.loads(Path(out).read_text(encoding="utf-8")) if rc == 0 else None
        finally:
            Path(out).unlink(missing_ok=True)
        if r is None:
            rows[v] = {"variant": v, "status": f"FAILED (exit {rc}): {log_tail(logs / f'serving-offline-{v}.log', 3)}"}
            continue
        labels[v] = r.pop("labels")
        rows[v] = {**r, "status": "ok", "other_cores_busy": other_load(s0, cpu_snapshot())}
        print(f"  {VARIANTS[v]}: {r['texts_per_second']} texts/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
              f"RSS {r['peak_rss_mb']} MB, accuracy {r['accuracy']}", flush=True)
    peer, ref = rows.get("pipeline", {}), rows.get("torch", {})
    for v, r in rows.items():
        if r["status"] == "ok" and v != "pipeline" and peer.get("status") == "ok":
            r["vs_peer"] = {"texts_per_second": ratio(r["texts_per_second"], peer["texts_per_second"]),
                            "p50": ratio(r["p50_ms"], peer["p50_ms"]), "peak_rss": ratio(r["peak_rss_mb"], peer["peak_rss_mb"]),
                            "accuracy_pt": round(100 * (r["accuracy"] - peer["accuracy"]), 2)}
        if r["status"] == "ok" and v in ("onnx", "onnx-int8") and "torch" in labels:
            agree = sum(x == y for x, y in zip(labels[v], labels["torch"])) / len(labels["torch"])
            r["vs_torch"] = {"argmax_agreement": round(agree, 4), "accuracy_pt": round(100 * (r["accuracy"] - ref["accuracy"]), 2)}
    return {"rows": rows, "other_cores_busy": other_load(snap, cpu_snapshot()), "texts": len(gold)}


# --------------------------------------------------------------------------- HTTP part

class Server:
    """A server subprocess in its own session (a terminal Ctrl-C reaches only us); stop() kills its whole group."""

    def __init__(self, name: str, cmd_for_port, log: Path, commands: list[str]):
        self.name, self.log_path, self.proc, self.log = name, log, None, None
        with socket.socket() as sock:  # a free port
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.cmd, self.base = cmd_for_port(port), f"http://127.0.0.1:{port}"
        commands.append(show(self.cmd))

    def __enter__(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"$ {show(self.cmd)} &   (log: {rel(self.log_path)})", flush=True)
        self.log = open(self.log_path, "w", encoding="utf-8")
        SERVERS.append(self)
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=child_env(), stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def __exit__(self, *_exc):
        self.stop()

    def wait_ready(self) -> float:
        import httpx

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < READY_TIMEOUT:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited ({self.proc.returncode}) before ready:\n{log_tail(self.log_path)}")
            try:
                if httpx.get(self.base + "/readyz", timeout=2.0).status_code == 200:
                    return round(time.perf_counter() - t0, 2)
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} server not ready after {READY_TIMEOUT:.0f} s:\n{log_tail(self.log_path)}")

    def peak_rss_mb(self) -> float | None:
        """VmHWM of the server and any child processes (workers), summed."""
        import psutil

        total = 0
        for pid in [self.proc.pid] + [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]:
            try:
                total += int(next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines()
                                  if l.startswith("VmHWM")).split()[1])
            except (OSError, StopIteration, ValueError):
                pass
        return round(total / 1024, 1) if total else None

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            if self.proc is None or self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        if self.log is not None:
            self.log.close()
            self.log = None
        if self in SERVERS:
            SERVERS.remove(self)


def status_class(code: int) -> str:  # 1xx/3xx never come from these servers: counted with 5xx
    return "2xx" if 200 <= code < 300 else str(code) if code in (429, 503) else "4xx" if 400 <= code < 500 else "5xx"


def label_of(body) -> str | None:
    """`label` of {"label"} (naive), {"prediction": {"label"}} (domaintune) or the first of {"predictions": [...]}."""
    if isinstance(body, dict) and isinstance(body.get("predictions"), list) and body["predictions"]:
        body = body["predictions"][0]
    if isinstance(body, dict) and isinstance(body.get("prediction"), dict):
        body = body["prediction"]
    return body.get("label") if isinstance(body, dict) and isinstance(body.get("label"), str) else None


async def load(url: str, headers: dict, texts: list[str], gold: list[str], concurrency: int, total: int) -> dict:
    """`concurrency` workers send one-text POSTs in a loop until `total` requests have been sent."""
    import httpx

    counter, lat, rej_lat = itertools.count(), [], []
    codes, errors, retry, scored = Counter(), Counter(), Counter(), Counter()

    async def worker(client):
        while (i := next(counter)) < total:
            k = i % len(texts)
            t = time.perf_counter()
            try:
                r = await client.post(url, json={"text": texts[k]})
            except httpx.HTTPError as e:  # connect errors, resets, timeouts
                codes["conn_error"] += 1
                errors[type(e).__name__] += 1
                continue
            el, c = time.perf_counter() - t, status_class(r.status_code)
            codes[c] += 1
            if c == "2xx":
                lat.append(el)
                try:
                    lab = label_of(r.json())
                except ValueError:
                    lab = None
                if lab is not None:
                    scored["n"] += 1
                    scored["correct"] += lab == gold[k]
            elif c in ("429", "503"):
                rej_lat.append(el)
                retry["with" if "retry-after" in r.headers else "without"] += 1
            else:
                errors[f"HTTP {r.status_code}"] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=CLIENT_TIMEOUT, headers=headers) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": total, "wall_seconds": round(wall, 2),
            "throughput_rps": round(codes["2xx"] / wall, 1), "p50_ms": ms(pct(lat, 0.5)), "p99_ms": ms(pct(lat, 0.99)),
            "counts": {c: codes.get(c, 0) for c in CLASSES}, "errors": dict(errors), "rejected_p50_ms": ms(pct(rej_lat, 0.5)),
            "retry_after": {"with": retry["with"], "without": retry["without"]}, "labelled_2xx": scored["n"],
            "accuracy_2xx": round(scored["correct"] / scored["n"], 4) if scored["n"] else None}


def measure(srv: Server, path: str, headers: dict, texts, gold, levels, n_for) -> dict:
    """Start the server, wait for /readyz, warm up, then one load run per concurrency level."""
    snap = cpu_snapshot()
    with srv:
        out = {"status": "ok", "ready_seconds": srv.wait_ready(), "levels": {}}
        asyncio.run(load(srv.base + path, headers, texts, gold, min(4, max(levels)), HTTP_WARMUP))
        for c in levels:
            r = out["levels"][str(c)] = asyncio.run(load(srv.base + path, headers, texts, gold, c, n_for(c)))
            print(f"  {srv.name} c={c}: {r['throughput_rps']} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                  f"{r['counts']}", flush=True)
        out["server_peak_rss_mb"] = srv.peak_rss_mb()
    out["other_cores_busy"] = other_load(snap, cpu_snapshot())
    return out


def run_ours(a, run: Path, texts, gold, levels, commands, logs) -> dict:
    """(f) on the serve contract: Bearer key, POST /v1/models/{run name}/predict {"text"}, GET /readyz, /healthz."""
    import httpx

    dtc = domaintune_cmd()
    chk = subprocess.run([*dtc, "serve", "--help"], cwd=REPO, env=child_env(), capture_output=True, text=True)
    if chk.returncode != 0:
        return {"status": f"not run: `domaintune serve --help` exited {chk.returncode} (command not available yet?)"}
    logs.mkdir(parents=True, exist_ok=True)  # key store and audit log beside the logs (same disk as runs/), then removed
    with tempfile.TemporaryDirectory(prefix="serving-bench-", dir=logs) as tmp:
        db, audit = str(Path(tmp) / "keys.db"), str(Path(tmp) / "audit.db")
        key_cmd = [*dtc, "keys", "create", "--name", "bench", "--scope", "predict", "--keys-db", db]
        commands.append(show(key_cmd))
        kc = subprocess.run(key_cmd, cwd=REPO, env=child_env(), capture_output=True, text=True)
        if kc.returncode != 0 or not kc.stdout.strip():
            return {"status": f"not run: key creation failed (exit {kc.returncode}): {kc.stderr.strip()[-300:]}"}
        headers = {"Authorization": f"Bearer {kc.stdout.strip().splitlines()[-1].strip()}"}
        extra, path = [x for s in a.serve_arg for x in shlex.split(s)], f"/v1/models/{run.name}/predict"
        serve = lambda more: lambda port: [*dtc, "serve", str(run), "--host", "127.0.0.1", "--port", str(port),  # noqa: E731
                                           "--keys-db", db, "--audit-db", audit, "--backend", "onnx-int8", *extra, *more]
        out = measure(Server("domaintune", serve([]), logs / "serving-domaintune-server.log", commands), path, headers,
                      texts, gold, levels, lambda c: a.ours_requests_at.get(c, a.requests))
        out.update(serve_args=extra, url_path=path)
        if a.skip_probe:
            return out
        best = max(out["levels"].values(), key=lambda r: r["throughput_rps"])["concurrency"]
        with Server("domaintune-probe", serve(["--max-queue", str(a.probe_max_queue)]),
                    logs / "serving-domaintune-probe.log", commands) as srv:
            srv.wait_ready()
            r = asyncio.run(load(srv.base + path, headers, texts, gold, a.probe_concurrency or 4 * best, a.probe_requests))
            try:
                health = httpx.get(srv.base + "/healthz", timeout=10.0).status_code
            except httpx.HTTPError as e:
                health = f"error: {type(e).__name__}"
            alive = srv.proc.poll() is None
    rejected = r["counts"]["429"] + r["counts"]["503"]
    r.update(peak_level=best, max_queue=a.probe_max_queue, rejected=rejected, healthz_after=health, server_alive_after=alive,
             retry_after_on_all_rejections=(r["retry_after"]["without"] == 0) if rejected else None)
    print(f"  probe c={r['concurrency']}: {r['counts']}, Retry-After on {r['retry_after']['with']}/{rejected} "
          f"rejections, /healthz after: {health}", flush=True)
    out["probe"] = r
    return out


def run_http(a, run: Path, texts, gold, commands, logs) -> dict:
    levels = [int(x) for x in a.levels.split(",") if x.strip()]
    res: dict = {"levels": levels, "texts_cycled": len(texts)}
    naive = Server("naive", lambda port: [sys.executable, str(Path(__file__).resolve()), "--naive-server", "--run",
                                          str(run), "--port", str(port)], logs / "serving-naive-server.log", commands)
    for side, go in (("naive", lambda: measure(naive, "/predict", {}, texts, gold, levels, lambda c: a.requests)),
                     ("ours", None if a.only_naive else lambda: run_ours(a, run, texts, gold, levels, commands, logs))):
        try:
            res[side] = go() if go else None
        except RuntimeError as e:
            res[side] = {"status": f"FAILED: {e}"}
    n, o = res["naive"].get("levels", {}), (res.get("ours") or {}).get("levels", {})
    res["ratios"] = {c: {"throughput": ratio(o[c]["throughput_rps"], n[c]["throughput_rps"]),
                         "p50": ratio(o[c]["p50_ms"], n[c]["p50_ms"]), "p99": ratio(o[c]["p99_ms"], n[c]["p99_ms"])}
                     for c in n if c in o}
    return res


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/b77_full_s4", help="a trained run directory (run/model, run/labels.json)")
    ap.add_argument("--data", default="../shared/datasets/banking77/test.csv", help="CSV with text,category")
    ap.add_argument("--requests", type=int, default=None,
                    help="requests per concurrency level [default 4000, and 20000 for our server at concurrency 32; "
                         "given explicitly it applies to every level unless --ours-requests-at is given too]")
    ap.add_argument("--ours-requests-at", action="append", default=[], metavar="LEVEL=N",
                    help="request count for our server at one level, e.g. 32=20000; repeatable")
    ap.add_argument("--levels", default="1,8,32,64", help="concurrency levels [1,8,32,64]")
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--only-naive", action="store_true", help="HTTP part: the naive peer server only")
    ap.add_argument("--skip-probe", action="store_true", help="no saturation probe of our server")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra args for `domaintune serve`, e.g. --serve-arg='--max-batch 32'; repeatable")
    ap.add_argument("--probe-requests", type=int, default=2000)
    ap.add_argument("--probe-concurrency", type=int, default=0, help="[4x the level with the best throughput]")
    ap.add_argument("--probe-max-queue", type=int, default=4)
    ap.add_argument("--offline-variants", default=",".join(VARIANTS), help=f"[{','.join(VARIANTS)}]")
    ap.add_argument("--latency-texts", type=int, default=200)
    ap.add_argument("--limit", type=int, default=None, help="use N evenly spaced texts only (smoke tests)")
    ap.add_argument("--results", default=str(RESULTS), help="folder for serving.md/.json [bench/results]")
    ap.add_argument("--logs", default="runs/bench-logs", help="folder for subprocess consoles [runs/bench-logs]")
    ap.add_argument("--naive-server", action="store_true", help=argparse.SUPPRESS)  # internal: subprocess modes
    ap.add_argument("--port", type=int, default=8000, help=argparse.SUPPRESS)
    ap.add_argument("--offline-worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.naive_server:
        return naive_server(a)
    if a.offline_worker:
        return offline_worker(a)

    at = [p for s in a.ours_requests_at for p in s.split(",") if p.strip()]
    a.ours_requests_at = {int(p.split("=")[0]): int(p.split("=")[1]) for p in at} if at else ({} if a.requests else {32: 20000})
    a.requests = a.requests or 4000
    run, data, results, logs = resolve(a.run), resolve(a.data), resolve(a.results), resolve(a.logs)
    if not (run / "model" / "config.json").is_file():
        ap.error(f"{run}: no model/config.json (not a finished run directory)")
    if not data.is_file():
        ap.error(f"{data}: no such file")
    if bad := set(a.offline_variants.split(",")) - set(VARIANTS):
        ap.error(f"unknown --offline-variants {sorted(bad)}")
    texts, gold = read_data(data, a.limit)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below stops the servers
    commands: list[str] = []
    machine, versions = machine_and_versions()
    meta = {"date": now(), "load_before": [round(x, 2) for x in os.getloadavg()],
            "command": shlex.join([rel(sys.executable), "bench/serving.py", *(sys.argv[1:] if argv is None else argv)]),
            "run": rel(run), "data": rel(data), "texts": len(texts), "machine": machine, "versions": versions,
            "commands": commands, "export": None}
    try:
        prev = json.loads((results / "serving.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        prev = {}
    reuse = lambda part: ({**prev[part], "reused_from": prev[part].get("reused_from") or prev["meta"]["date"]}  # noqa: E731
                          if prev.get(part) and prev.get("meta", {}).get("run") == meta["run"] else None)
    res: dict = {"meta": meta, "offline": None, "http": None}
    try:
        if (not a.skip_offline and "onnx" in a.offline_variants) or not (a.skip_http or a.only_naive):
            meta["export"] = ensure_export(run, commands, logs)
        res["offline"] = reuse("offline") if a.skip_offline else run_offline(a, run, data, gold, commands, logs)
        res["http"] = reuse("http") if a.skip_http else run_http(a, run, texts, gold, commands, logs)
    finally:
        for s in list(SERVERS):
            s.stop()
    meta.update(finished=now(), load_after=[round(x, 2) for x in os.getloadavg()])
    md = markdown(res)
    atomic_write(results / "serving.md", md)
    atomic_write(results / "serving.json", json.dumps(res, ensure_ascii=False, indent=2) + "\n")
    print("\n" + md + f"\nwrote {rel(results / 'serving.md')} and .json")
    h = res.get("http") or {}
    return 1 if any(s and s.get("status") != "ok" for s in (h.get("naive"), h.get("ours"))) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # servers were stopped by main's finally
        print("interrupted", file=sys.stderr)
        sys.exit(130)
