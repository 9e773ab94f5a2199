#!/usr/bin/env python
"""Benchmark: the service under an attacker's and a careless operator's load, before and after issue 13.

    .venv/bin/python bench/security.py --run runs/demo              # both parts, both versions
    .venv/bin/python bench/security.py --run runs/demo --paths 2000 --lock-seconds 5   # quick look

Why: the fixes of issue 13 are properties of a running service, so they are measured on one -
`python -m domaintune.cli serve RUN` in its own process - for this checkout ("after") and for the
commit before the fixes ("before", `--before`, checked out into a temporary git worktree and put
first on PYTHONPATH; same venv, same run directory, same machine, same invocation).

Part 1, metrics: 10,000 requests to random unauthenticated paths (random letters and an e-mail /
phone number in each path, c=32); the size of /metrics and its number of series before and after;
then one-text prediction latency (p50/p99 over 200 sequential requests) on an idle service and while
another client scrapes /metrics in a loop. The ratio during/idle is what "predictions during a
scrape keep their latency" means.

Part 2, audit: four clients send predictions without pause; after 3 s another process takes the
audit database's write lock (`BEGIN EXCLUSIVE`) for `--lock-seconds` (25); at the end of the lock,
still locked, the server is killed with SIGKILL. Then: how many requests got a 2xx, how many of
those are in the audit database, how many got 503 (and with Retry-After).

Writes bench/results/security.md and .json with the CPU flags; prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    try:
        flags = set(re.search(r"^flags\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    except (OSError, AttributeError):
        return []
    return [f for f in wanted if f in flags]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`domaintune serve` in its own process, from `src` (this checkout's or the worktree's)."""

    def __init__(self, src: Path, run: Path, work: Path, extra: list[str]):
        self.port, self.work = free_port(), work
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(src), DOMAINTUNE_HOME=str(work / "home"), HF_HUB_OFFLINE="1")
        self.log = open(work / "server.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "domaintune.cli", "serve", str(run), "--name", "m",
                                      "--port", str(self.port), "--no-auth", "--audit-db", str(work / "audit.db"),
                                      *extra], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(1200):
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError("server did not become ready in 120 s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self.log.close()


def series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def latencies(url: str, n: int, tag: str) -> list[float]:
    out = []
    with httpx.Client(timeout=60) as c:
        for i in range(n):
            t0 = time.perf_counter()
            r = c.post(f"{url}/v1/models/m/predict", json={"text": f"the breaker tripped on line {i} ({tag})"})
            out.append(time.perf_counter() - t0)
            r.raise_for_status()
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


async def random_paths(url: str, n: int, concurrency: int = 32) -> dict:
    rng = random.Random(13)
    codes: dict[int, int] = {}
    sem = asyncio.Semaphore(concurrency)

    async def one(c: httpx.AsyncClient, i: int) -> None:
        noise = "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(8, 2000)))
        path = f"/{noise}/li.wei{i}@example.com/1381234{i % 10000:04d}"
        async with sem:
            r = await c.request(rng.choice(["GET", "POST"]), url + path)
        codes[r.status_code] = codes.get(r.status_code, 0) + 1

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as c:
        await asyncio.gather(*(one(c, i) for i in range(n)))
    return codes


def part_metrics(src: Path, run: Path, work: Path, n_paths: int) -> dict:
    srv = Server(src, run, work, [])
    try:
        latencies(srv.url, 20, "warm-up")
        for method in ("GET", "POST"):  # one unmatched request of each kind: their (fixed) series exist from here
            httpx.request(method, srv.url + "/warm-up/unmatched", timeout=60)
        httpx.get(srv.url + "/metrics", timeout=60)  # the scrape's own series
        m0 = httpx.get(srv.url + "/metrics", timeout=60).text
        t0 = time.perf_counter()
        codes = asyncio.run(random_paths(srv.url, n_paths))
        flood_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        m1 = httpx.get(srv.url + "/metrics", timeout=120).text
        scrape_s = time.perf_counter() - t0
        idle = latencies(srv.url, 200, "idle")
        stop, scrapes = threading.Event(), [0]

        def scraper():
            with httpx.Client(timeout=120) as c:
                while not stop.is_set():
                    c.get(srv.url + "/metrics")
                    scrapes[0] += 1

        th = threading.Thread(target=scraper, daemon=True)
        th.start()
        during = latencies(srv.url, 200, "during scrapes")
        stop.set()
        th.join(180)
        leaked = "example.com" in m1 or "1381234" in m1
        return {"paths": n_paths, "codes": codes, "flood_seconds": round(flood_s, 1),
                "metrics_bytes_before": len(m0.encode()), "metrics_bytes_after": len(m1.encode()),
                "series_before": series(m0), "series_after": series(m1), "scrape_seconds": round(scrape_s, 3),
                "path_text_in_metrics": leaked, "scrapes_during": scrapes[0],
                "idle_p50_ms": round(pct(idle, 0.5), 2), "idle_p99_ms": round(pct(idle, 0.99), 2),
                "during_p50_ms": round(pct(during, 0.5), 2), "during_p99_ms": round(pct(during, 0.99), 2)}
    finally:
        srv.kill()


def part_audit(src: Path, run: Path, work: Path, lock_seconds: float, extra: list[str]) -> dict:
    srv = Server(src, run, work, extra)
    acked, other, stop = [], [], threading.Event()

    def client(w: int) -> None:
        with httpx.Client(timeout=120) as c:
            i = 0
            while not stop.is_set():
                text = f"worker {w} request {i}"
                try:
                    r = c.post(f"{srv.url}/v1/models/m/predict", json={"text": text})
                except httpx.TransportError:
                    return
                (acked if 200 <= r.status_code < 300 else other).append((text, r.status_code,
                                                                        r.headers.get("retry-after")))
                i += 1

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client, w) for w in range(4)]
            time.sleep(3)
            lock = sqlite3.connect(work / "audit.db", isolation_level=None, timeout=30)
            lock.execute("BEGIN EXCLUSIVE")
            acked_at_lock = len(acked)
            time.sleep(lock_seconds)
            srv.kill()  # still locked: whatever the server holds in memory dies with it
            stop.set()
            for f in futures:
                f.result()
            lock.execute("ROLLBACK")
            lock.close()
    finally:
        srv.kill()
    con = sqlite3.connect(work / "audit.db")
    stored = {r[0] for r in con.execute("select input_masked from predictions where status between 200 and 299")}
    con.close()
    missing = [t for t, _, _ in acked if t not in stored]
    refused = [o for o in other if o[1] in (429, 503)]
    return {"lock_seconds": lock_seconds, "acknowledged": len(acked), "acknowledged_during_lock":
            len(acked) - acked_at_lock, "in_audit": len(acked) - len(missing), "missing": len(missing),
            "refused_503": sum(o[1] == 503 for o in other), "refused_with_retry_after":
            sum(o[2] is not None for o in refused), "other_status": sorted({o[1] for o in other})}


def render(res: dict) -> str:
    lines = [f"# Security benchmark (issue 13) - {res['date']}", "",
             f"CPU flags: {', '.join(res['cpu_flags']) or 'none of avx2/avx512'}; {res['cpus']} CPUs; "
             f"run `{res['run']}`; before = `{res['before']}`, after = this checkout (`{res['after']}`).", "",
             "## /metrics under random unauthenticated paths", "",
             "| | before | after |", "|---|---|---|"]
    b, a = res["metrics"].get("before", {}), res["metrics"]["after"]
    rows = [("random paths sent (c=32)", "paths"), ("/metrics bytes before the flood", "metrics_bytes_before"),
            ("/metrics bytes after", "metrics_bytes_after"), ("series before", "series_before"),
            ("series after", "series_after"), ("one scrape after the flood, s", "scrape_seconds"),
            ("path text (e-mail/phone) readable in /metrics", "path_text_in_metrics"),
            ("predict p50 idle, ms", "idle_p50_ms"), ("predict p99 idle, ms", "idle_p99_ms"),
            ("predict p50 during scrapes, ms", "during_p50_ms"), ("predict p99 during scrapes, ms", "during_p99_ms"),
            ("scrapes during the 200 predictions", "scrapes_during")]
    for label, key in rows:
        lines.append(f"| {label} | {b.get(key, '-')} | {a.get(key, '-')} |")
    for tag, m in (("before", b), ("after", a)):
        if m:
            lines.append(f"\n{tag}: p50 during scrapes / idle = {m['during_p50_ms'] / m['idle_p50_ms']:.2f}x, "
                         f"p99 = {m['during_p99_ms'] / m['idle_p99_ms']:.2f}x")
    lines += ["", f"## Audit store locked {res['lock_seconds']} s under load, then kill -9 (still locked)", "",
              "| | before | after |", "|---|---|---|"]
    b, a = res["audit"].get("before", {}), res["audit"]["after"]
    for label, key in (("requests answered 2xx", "acknowledged"), ("of those, answered during the lock",
                       "acknowledged_during_lock"), ("2xx rows in the audit after the kill", "in_audit"),
                       ("acknowledged but missing", "missing"), ("answered 503", "refused_503"),
                       ("429/503 with Retry-After", "refused_with_retry_after"), ("other statuses", "other_status")):
        lines.append(f"| {label} | {b.get(key, '-')} | {a.get(key, '-')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "demo", help="run directory to serve")
    ap.add_argument("--before", default="9475d16", help="commit before the fixes ('' to skip)")
    ap.add_argument("--paths", type=int, default=10_000)
    ap.add_argument("--lock-seconds", type=float, default=25.0)
    args = ap.parse_args()
    if not (args.run / "model").is_dir():
        sys.exit(f"{args.run}: not a run directory; run `make demo` (runs/demo) or pass --run")
    work = Path(tempfile.mkdtemp(prefix="dt-security-"))
    variants = {"after": REPO / "src"}
    if args.before:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(work / "before"), args.before],
                       check=True, capture_output=True)
        variants = {"before": work / "before" / "src", **variants}
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    res = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu_flags": cpu_flags(),
           "cpus": os.cpu_count(), "machine": platform.machine(), "run": str(args.run), "before": args.before,
           "after": head, "lock_seconds": args.lock_seconds, "metrics": {}, "audit": {}}
    try:
        for tag, src in variants.items():
            print(f"[{tag}] metrics part", flush=True)
            (work / f"m-{tag}").mkdir()
            res["metrics"][tag] = part_metrics(src, args.run, work / f"m-{tag}", args.paths)
            print(json.dumps(res["metrics"][tag]), flush=True)
            print(f"[{tag}] audit part", flush=True)
            (work / f"a-{tag}").mkdir()
            extra = ["--audit-timeout", "1"] if tag == "after" else []
            res["audit"][tag] = part_audit(src, args.run, work / f"a-{tag}", args.lock_seconds, extra)
            print(json.dumps(res["audit"][tag]), flush=True)
    finally:
        if args.before:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "before")],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "security.json").write_text(json.dumps(res, indent=2) + "\n")
    md = render(res)
    (RESULTS / "security.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
