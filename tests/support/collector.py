"""Helpers for the false-reject channel's tests: valid records, reject verdicts, free ports, and the real
`inspectd run` / `inspectd collect` processes driven over their real sockets. Every wait is bounded."""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from inspectd.core.types import Code, Region, Verdict
from tests.support.helpers import parse_json_lines, popen_cli, write_config
from tests.support.net import wait_until

SHA = "ab" * 32


def png(h: int = 24, w: int = 32, seed: int = 0, channels: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    ok, buf = cv2.imencode(".png", rng.integers(0, 255, size=shape, dtype=np.uint8))
    assert ok
    return buf.tobytes()


def record(rid: str, mark: str = "good", *, h: int = 24, w: int = 32, seed: int = 0, **meta) -> tuple[dict, bytes]:
    """A valid record (meta dict, PNG bytes) as a line PC sends it."""
    base = {
        "id": rid,
        "mark": mark,
        "line": "line-7",
        "camera": "synthetic",
        "model_sha256": SHA,
        "model_name": "m",
        "seq": 5,
        "plc_seq": 5,
        "item_id": 42,
        "score": 0.9,
        "time": "2026-01-01T00:00:00.000Z",
        "marked_at": "2026-01-01T00:01:00.000Z",
        "marked_by": "cli",
        "width": w,
        "height": h,
        "channels": 1,
        "defect_area": 12,
    }
    base.update(meta)
    return base, png(h, w, seed)


def reject(
    seq: int,
    *,
    size: tuple[int, int] = (48, 64),
    code: Code = Code.REJECT,
    score: float = 0.8,
    item_id: int = 0,
    wall_time: float | None = None,
) -> Verdict:
    rng = np.random.default_rng(seq)
    image = rng.integers(0, 255, size=size, dtype=np.uint8)
    score_map = rng.random(size, dtype=np.float32)
    return Verdict(
        seq=seq,
        item_id=item_id,
        wall_time=time.time() if wall_time is None else wall_time,
        code=code,
        score=score,
        regions=(Region(2, 3, 10, 8, 60, 0.9),),
        defect_area=60,
        source=f"test#{seq}",
        image=image,
        score_map=score_map,
    )


def meta_lines(out: Path) -> list[dict]:
    """The stored records of a collector's meta.jsonl, read while it may be appending: a last line without its
    newline is not stored yet and is left out; every complete line must be valid JSON."""
    path = Path(out) / "meta.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


class Proc:
    """A CLI subprocess whose stdout JSON lines are collected by a thread."""

    def __init__(self, *args: str, stdin: bool = False) -> None:
        self.args = args
        self.proc = popen_cli(*args, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def events(self, name: str | None = None) -> list[dict]:
        ev = parse_json_lines("".join(self.lines))
        return ev if name is None else [e for e in ev if e.get("event") == name]

    def wait_event(self, name: str, timeout: float = 60, count: int = 1) -> bool:
        return (
            wait_until(lambda: len(self.events(name)) >= count or self.proc.poll() is not None, timeout)
            and len(self.events(name)) >= count
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._t.join(5)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self._t.join(5)

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.poll() is not None else ""


def collector(bind: str, out: Path, *extra: str) -> Proc:
    p = Proc("collect", "--bind", bind, "--out", str(out), "--log-format", "json", *extra)
    assert p.wait_event("collector_listening", 30), f"collector did not start: {p.lines} {p.stderr()}"
    return p


def daemon_config(
    tmp: Path,
    model: Path,
    port: int,
    *,
    max_count: int = 2000,
    trigger: str = "software",
    ack_timeout_s: float = 1.0,
    extra: str = "",
) -> Path:
    """A daemon config with the whole false-reject channel; software trigger so the test decides the frames."""
    return write_config(
        tmp / "daemon.yaml",
        f"""
        line: line-7
        camera:
          type: synthetic
          width: 96
          height: 96
          trigger: {trigger}
        model:
          path: {model}
          providers: [CPUExecutionProvider]
        pipeline:
          overrun: block
        logging:
          format: json
          verdicts: all
        rejects:
          dir: rejects
          max_count: {max_count}
          queue_size: 64
        feedback:
          collector: tcp://127.0.0.1:{port}
          spool_dir: spool
          ack_timeout_s: {ack_timeout_s}
          backoff_initial_s: 0.1
          backoff_max_s: 0.5
          flush_timeout_s: 2
          log_interval_s: 1
        control:
          socket: ctl.sock
"""
        + textwrap.indent(extra, " " * 8),
    )


class Daemon(Proc):
    """`inspectd run` with a software trigger: `frames(n)` takes n frames; marks go over the real control socket."""

    def __init__(self, config: Path) -> None:
        super().__init__("run", "--config", str(config), stdin=True)
        self.socket = config.parent / "ctl.sock"
        assert self.wait_event("ready", 60), f"daemon did not start: {''.join(self.lines)[-3000:]} {self.stderr()}"
        assert wait_until(self.socket.exists, 10)

    def frames(self, n: int) -> None:
        self.proc.stdin.write("\n" * n)
        self.proc.stdin.flush()

    def reject_seqs(self) -> list[int]:
        return [e["seq"] for e in self.events("verdict") if e.get("code") == "reject"]

    def request(self, payload: dict) -> dict:
        from inspectd.feedback.control import request

        return request(self.socket, payload)

    def status(self) -> dict:
        return self.request({"op": "status"})

    def wait_stored(self, n: int, timeout: float = 60) -> bool:
        return wait_until(lambda: self.status()["rejects"]["count"] >= n, timeout, 0.1)
