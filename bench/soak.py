"""Soak: the real daemon (`inspectd run`) on the demo at full speed for M minutes, watched from outside.

The demo config (config.yaml: synthetic fabric camera, models/demo, PLC server, reject store, spool + sender,
control socket) is copied to a temporary directory with its runtime paths there, free loopback ports for the PLC
and the collector (no collector listens: the sender stays idle, nothing is marked), and `camera.rate_hz: 0` (as fast
as the pipeline takes frames). While it runs:

- every `--sample-s` seconds the daemon's resident memory (/proc/PID/status VmRSS), open file descriptors
  (/proc/PID/fd), threads and the frames so far are sampled;
- a PLC stand-in polls holding registers 0..47 every 50 ms and counts heartbeat stalls (no change for 1 s);
- the JSON log is parsed: verdicts by code, error-level events by name.

After M minutes the daemon gets SIGTERM; its summary line is read. The report (printed, and written to --json):

    frames, verdicts {pass, reject, error}, errors {event: count}, exit_code, fps,
    rss_mb_start (the first sample after the warm-up: minute 1, or a fifth of a shorter run), rss_mb_end,
    rss_growth_pct, rss_mb_max, fds_start, fds_end, threads_start, threads_end, heartbeat_stalls, plc_polls,
    samples [{t_s, rss_mb, fds, threads, frames}], ok (rss growth < --max-rss-growth-pct, no fd growth, exit 0,
    no error verdicts, every verdict accounted for)

    python bench/soak.py --minutes 10 --json runs/soak.json
    python bench/soak.py --smoke --json OUT.json          # 20 seconds, for the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def soak_config(work: Path, base: Path) -> tuple[Path, int]:
    import yaml

    cfg = yaml.safe_load(base.read_text())
    model = Path(cfg.get("model", {}).get("path", "models/demo"))
    cfg.setdefault("model", {})["path"] = str(model if model.is_absolute() else (base.parent / model).resolve())
    cfg["model"]["providers"] = ["CPUExecutionProvider"]
    cfg["camera"]["rate_hz"] = 0
    cfg["logging"] = {"level": "info", "format": "json", "verdicts": "all"}
    cfg["service"] = {"status_interval_s": 5.0}
    plc_port = free_port()
    cfg["plc"] = {"mode": "server", "heartbeat_interval_s": 0.1, "server": {"host": "127.0.0.1", "port": plc_port}}
    cfg["rejects"] = {"dir": str(work / "rejects"), "max_count": 200, "max_mb": 64}
    cfg["feedback"] = {"collector": f"tcp://127.0.0.1:{free_port()}", "spool_dir": str(work / "spool")}
    cfg["control"] = {"socket": str(work / "control.sock")}
    path = work / "soak.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, plc_port


def proc_sample(pid: int) -> dict | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields["VmRSS"].split()[0])
    return {"rss_mb": round(rss_kb / 1024, 2), "fds": fds, "threads": int(fields["Threads"])}


class LogReader:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.codes: Counter = Counter()
        self.errors: Counter = Counter()
        self.seqs_in_order = True
        self.last_seq = 0
        self.summary: dict | None = None
        self.ready = threading.Event()
        self._t = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self._t.start()

    def _run(self, proc) -> None:
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            ev = e.get("event")
            if ev == "verdict":
                self.codes[e["code"]] += 1
                self.seqs_in_order &= e["seq"] == self.last_seq + 1
                self.last_seq = e["seq"]
            elif ev == "summary":
                self.summary = e
            elif ev == "ready":
                self.ready.set()
            if e.get("level") in ("error", "critical"):
                self.errors[ev] += 1

    def join(self, timeout: float) -> None:
        self._t.join(timeout)


class PlcPoller:
    """A PLC stand-in: reads holding 0..47 every 50 ms, counts heartbeat stalls (no change for 1 s)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.polls = self.failures = self.stalls = 0
        self.stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        from pymodbus.client import ModbusTcpClient

        client = ModbusTcpClient("127.0.0.1", port=self.port, timeout=1, retries=0)
        last_hb, last_change, stalled = None, time.monotonic(), False
        while not self.stop.wait(0.05):
            try:
                if not client.connected and not client.connect():
                    self.failures += 1
                    continue
                regs = client.read_holding_registers(0, count=48, device_id=1).registers
            except Exception:
                self.failures += 1
                continue
            self.polls += 1
            now = time.monotonic()
            if regs[0] != last_hb:
                last_hb, last_change, stalled = regs[0], now, False
            elif now - last_change > 1.0 and not stalled:
                self.stalls += 1
                stalled = True
        client.close()

    def close(self) -> None:
        self.stop.set()
        self._t.join(5)


def soak(minutes: float, sample_s: float, base_config: Path, max_growth_pct: float, warmup_s: float | None) -> dict:
    duration = minutes * 60.0
    warmup = min(60.0, duration / 5) if warmup_s is None else warmup_s
    with tempfile.TemporaryDirectory(prefix="inspectd-soak-") as tmp:
        work = Path(tmp)
        cfg, plc_port = soak_config(work, base_config)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "inspectd", "run", "--config", str(cfg)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        stderr_tail: list[str] = []
        threading.Thread(target=lambda: stderr_tail.extend(proc.stderr), daemon=True).start()
        log = LogReader(proc)
        samples: list[dict] = []
        poller = None
        try:
            if not log.ready.wait(180):
                raise RuntimeError(f"the daemon did not get ready: {''.join(stderr_tail)[-2000:]}")
            poller = PlcPoller(plc_port)
            t0 = time.monotonic()
            while (elapsed := time.monotonic() - t0) < duration and proc.poll() is None:
                s = proc_sample(proc.pid)
                if s is not None:
                    samples.append({"t_s": round(elapsed, 1), **s, "frames": sum(log.codes.values())})
                time.sleep(min(sample_s, max(0.0, duration - elapsed)))
            s = proc_sample(proc.pid)
            if s is not None:
                samples.append({"t_s": round(time.monotonic() - t0, 1), **s, "frames": sum(log.codes.values())})
        finally:
            if poller is not None:
                poller.close()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                exit_code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                exit_code = proc.wait(10)
            log.join(10)
    after = [s for s in samples if s["t_s"] >= warmup] or samples[-1:]
    first, last = (after[0], samples[-1]) if samples else ({}, {})
    summary = log.summary or {}
    growth = (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"] * 100 if samples else None
    report = {
        "minutes": minutes,
        "warmup_s": warmup,
        "frames": summary.get("frames", sum(log.codes.values())),
        "verdicts": {k: log.codes.get(k, 0) for k in ("pass", "reject", "error")},
        "errors": dict(log.errors),
        "exit_code": exit_code,
        "fps": summary.get("fps"),
        "latency_ms_p50": summary.get("latency_ms_p50"),
        "latency_ms_p99": summary.get("latency_ms_p99"),
        "rss_mb_start": first.get("rss_mb"),
        "rss_mb_end": last.get("rss_mb"),
        "rss_growth_pct": None if growth is None else round(growth, 2),
        "rss_mb_max": max((s["rss_mb"] for s in samples), default=None),
        "fds_start": first.get("fds"),
        "fds_end": last.get("fds"),
        "threads_start": first.get("threads"),
        "threads_end": last.get("threads"),
        "heartbeat_stalls": poller.stalls if poller else None,
        "plc_polls": poller.polls if poller else 0,
        "plc_poll_failures": poller.failures if poller else 0,
        "verdicts_in_order": log.seqs_in_order,
        "samples": samples,
    }
    report["ok"] = bool(
        samples
        and exit_code == 0
        and growth is not None
        and growth < max_growth_pct
        and last["fds"] <= first["fds"]
        and report["verdicts"]["error"] == 0
        and log.seqs_in_order
        and summary.get("frames") == sum(log.codes.values())
    )
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS/fd samples (default 5)")
    p.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="samples before this are not the baseline (default: 60 s, or a fifth of a shorter run)",
    )
    p.add_argument("--config", default=str(REPO / "config.yaml"), help="the config to soak (default: config.yaml)")
    p.add_argument("--max-rss-growth-pct", type=float, default=5.0, help="`ok` needs less RSS growth (default 5)")
    p.add_argument("--json", help="write the report here too")
    p.add_argument("--smoke", action="store_true", help="20 seconds, a sample every second (for the test suite)")
    args = p.parse_args(argv)
    if args.smoke:
        args.minutes, args.sample_s = 1 / 3, 1.0
    if args.minutes <= 0 or args.sample_s <= 0:
        p.error("--minutes and --sample-s must be > 0")
    report = soak(args.minutes, args.sample_s, Path(args.config), args.max_rss_growth_pct, args.warmup_s)
    text = json.dumps(report)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
