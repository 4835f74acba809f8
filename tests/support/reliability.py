"""Helpers for the fault-injection suite: the real daemon as a subprocess, its JSON log, the PLC's view over Modbus,
and the accounting every fault test ends with (one verdict per item, in order, nothing lost). Every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

from tests.support.collector import Proc
from tests.support.helpers import daemon_config
from tests.support.net import wait_until

CODES = {"pass": 1, "reject": 2, "error": 3}


def config(tmp: Path, model: Path, camera: str, *, extra: str = "", name: str = "c.yaml") -> Path:
    """A daemon config: `camera` is the indented body of the camera section (8 spaces), `extra` more sections."""
    return daemon_config(tmp, model, camera, extra=extra, line="fault-line", name=name)


def plc_section(port: int, **server) -> str:
    lines = [
        "        plc:",
        "          heartbeat_interval_s: 0.1",
        "          server:",
        "            host: 127.0.0.1",
        f"            port: {port}",
        "            linger_s: 0.3",
    ]
    lines += [f"            {k}: {json.dumps(v)}" for k, v in server.items()]
    return "\n".join(lines)


def run_daemon(cfg: Path, *, ready: bool = True, timeout: float = 90) -> Proc:
    d = Proc("run", "--config", str(cfg))
    if ready:
        assert d.wait_event("ready", timeout), f"daemon not ready: {''.join(d.lines)[-3000:]} {d.stderr()}"
    return d


def verdicts(d: Proc) -> list[dict]:
    return d.events("verdict")


def assert_accounted(d: Proc, *, expect_frames: int | None = None) -> dict:
    """Every seq from 1 to the last has exactly one verdict, in order, and the summary counts them all."""
    vs = verdicts(d)
    assert [v["seq"] for v in vs] == list(range(1, len(vs) + 1)), "a seq without a verdict, or out of order"
    summaries = d.events("summary")
    assert summaries, "no summary line"
    s = summaries[-1]
    assert s["frames"] == len(vs) == s["pass"] + s["reject"] + s["error"], (s, len(vs))
    assert not d.events("verdict_gap") and not d.events("duplicate_verdict_dropped")
    if expect_frames is not None:
        assert s["frames"] == expect_frames, s
    return s


def wait_verdicts(d: Proc, n: int, timeout: float = 60) -> bool:
    return wait_until(lambda: len(verdicts(d)) >= n or d.proc.poll() is not None, timeout) and len(verdicts(d)) >= n


def plc_view(client) -> dict:
    """What a PLC polling holding 0..47 and the coils sees."""
    regs = client.read_holding_registers(0, count=48, device_id=1).registers
    coils = client.read_coils(0, count=4, device_id=1).bits
    return {
        "ready": bool(coils[0]),
        "heartbeat": regs[0],
        "state": regs[1],
        "last_seq": regs[2],
        "last_code": regs[3],
        "frames": regs[8] << 16 | regs[9],
        "errors": regs[12] << 16 | regs[13],
    }


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "384k"):
    """A tiny tmpfs mounted at `where`: a disk that really fills (ENOSPC). Skips the test where mounting is not
    allowed (it needs root, as in CI's container)."""
    import pytest

    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, timeout=10
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.decode().strip()[:200]}); needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def fill_disk(where: Path) -> Path:
    """Fill the file system holding `where` to its last byte (every write fails with ENOSPC from now on);
    returns the filler file, to delete when space is to be freed."""
    filler = where / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler
