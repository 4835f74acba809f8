"""What the HTTP endpoint (/metrics, the recheck station) costs the frame loop, against the daemon without it.

1. ``emit``: MetricsSink.emit (the one thing the frame loop does for metrics, after the PLC, log and reject store)
   on 20,000 verdicts, alone and while another thread scrapes /metrics' exposition in a tight loop; the time of one
   scrape (exposition) beside it.
2. ``daemon``: the real ``inspectd run`` on the demo (config.yaml's synthetic camera at 20 Hz, the demo model,
   rejects stored) for ``--frames`` frames, rounds alternating: *off* (no ``http:`` section) and *on* (``http:``
   with the station, under load: /metrics scraped every 0.1 s, i.e. 150x Prometheus's usual 15 s, one browser-like
   event stream open on /api/events, /api/rejects fetched every 0.5 s). From each run's summary line: latency p50
   and p99 (acquisition to verdict), error verdicts (queue overruns), fps.

    python bench/endpoint.py --json OUT.json [--frames 600 --rounds 2]
    python bench/endpoint.py --smoke --json OUT.json     # a few frames, for the test suite (no timing claims)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))


def bench_emit(n: int) -> dict:
    from inspectd.core.types import Code, Verdict
    from inspectd.daemon.metrics import Metrics

    metrics = Metrics()
    verdicts = [
        Verdict(
            seq=i + 1,
            item_id=0,
            wall_time=0.0,
            code=Code.REJECT if i % 4 == 0 else Code.PASS,
            latency_ms=5.0 + i % 7,
            timings_ms={"preprocess": 0.1, "inference": 4.0, "ssim": 0.4, "decide": 0.3},
        )
        for i in range(n)
    ]

    def run() -> float:
        t0 = time.perf_counter()
        for v in verdicts:
            metrics.sink.emit(v)
        return (time.perf_counter() - t0) / n * 1e6

    alone = min(run() for _ in range(3))
    stop = threading.Event()
    scrapes: list[float] = []

    def scrape() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            metrics.exposition()
            scrapes.append((time.perf_counter() - t0) * 1e3)

    t = threading.Thread(target=scrape, daemon=True)
    t.start()
    contended = min(run() for _ in range(3))
    stop.set()
    t.join()
    return {
        "verdicts": n,
        "emit_us": round(alone, 3),
        "emit_us_while_scraping": round(contended, 3),
        "scrape_ms_median": round(statistics.median(scrapes), 3) if scrapes else None,
        "scrapes_during": len(scrapes),
    }


def _config(tmp: Path, http: bool, port: int, frames_rate: float) -> Path:
    body = f"""
line: bench
camera:
  type: synthetic
  width: 256
  height: 256
  defect_rate: 0.25
  rate_hz: {frames_rate}
model:
  path: {REPO / "models" / "demo"}
  providers: [CPUExecutionProvider]
logging:
  format: json
  verdicts: rejects
rejects:
  dir: {tmp / "rejects"}
"""
    if http:
        body += f"http:\n  host: 127.0.0.1\n  port: {port}\n  station:\n    secret_file: {tmp / 'pin'}\n"
    path = tmp / ("on.yaml" if http else "off.yaml")
    path.write_text(body)
    return path


class _Load:
    """The HTTP load of the "on" rounds: scrapes, an open event stream, queue fetches; counts what it got."""

    def __init__(self, url: str) -> None:
        self.url, self.stop = url, threading.Event()
        self.counts = {"scrapes": 0, "events_bytes": 0, "queue_fetches": 0}
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._scrape, self._events, self._queue)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)

    def _get(self, path: str, key: str) -> None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                r.read()
            self.counts[key] += 1
        except OSError:  # the daemon has exited (the run is over) or is busy: the next try counts
            pass

    def _scrape(self) -> None:
        while not self.stop.wait(0.1):
            self._get("/metrics", "scrapes")

    def _queue(self) -> None:
        while not self.stop.wait(0.5):
            self._get("/api/rejects", "queue_fetches")

    def _events(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url + "/api/events", timeout=5) as r:
                    while not self.stop.is_set():
                        chunk = r.read1(65536)
                        if not chunk:
                            break
                        self.counts["events_bytes"] += len(chunk)
            except OSError:
                self.stop.wait(0.2)


def run_daemon(cfg: Path, frames: int, url: str | None) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(REPO / ".cache" / "numba"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "inspectd", "run", "--config", str(cfg), "--max-frames", str(frames)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    load = None
    if url is not None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(url + "/readyz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        load = _Load(url)
        load.start()
    out, err = proc.communicate(timeout=frames / 5 + 120)
    if load is not None:
        load.close()
    if proc.returncode != 0:
        raise SystemExit(f"inspectd run failed ({proc.returncode}): {err[-2000:]}")
    summary = [json.loads(line) for line in out.splitlines() if line.startswith('{"event": "summary"')][-1]
    row = {k: summary[k] for k in ("frames", "error", "fps", "latency_ms_p50", "latency_ms_p99")}
    if load is not None:
        row["load"] = load.counts
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=600, help="frames per daemon run (20 Hz: 30 s)")
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    p.add_argument("--smoke", action="store_true", help="a few frames (test suite; no timing claims)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from tests.support.net import free_port

    frames, rounds = (30, 1) if args.smoke else (args.frames, args.rounds)
    report: dict = {"emit": bench_emit(2_000 if args.smoke else 20_000), "daemon": {"off": [], "on": []}}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for mode in ("off", "on"):
                port = free_port()
                run_dir = Path(tmp) / f"{mode}{r}"
                run_dir.mkdir()
                cfg = _config(run_dir, mode == "on", port, 20.0)
                url = f"http://127.0.0.1:{port}" if mode == "on" else None
                report["daemon"][mode].append(run_daemon(cfg, frames, url))
    for mode in ("off", "on"):
        runs = report["daemon"][mode]
        report["daemon"][f"{mode}_median"] = {
            k: statistics.median(x[k] for x in runs) for k in ("latency_ms_p50", "latency_ms_p99", "fps", "error")
        }
    report["smoke"] = args.smoke
    report["machine"] = {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    text = json.dumps(report, indent=1)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
