"""SIGKILL at random points (while frames are inspected and marks are made), then a restart, three times: every
verdict printed is in order with no gap, the PLC sees the port die (the heartbeat stops) and come back, every
mark the daemon confirmed reaches the collector exactly once, and the last run stops cleanly with exit 0."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient

from inspectd.feedback.control import ControlError
from tests.support.collector import Daemon, collector, daemon_config, meta_lines
from tests.support.helpers import make_blur_model
from tests.support.net import free_port, wait_until
from tests.support.plc import plc_client
from tests.support.reliability import assert_accounted, plc_section, plc_view


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


class _Work:
    """Frames and marks going on in a thread until the daemon dies under them."""

    def __init__(self, d: Daemon, rng: random.Random) -> None:
        self.d, self.rng = d, rng
        self.confirmed: list[str] = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self) -> None:
        marked: set[int] = set()
        for _ in range(400):  # bounded; the kill ends it much sooner
            if self.stop.is_set() or self.d.proc.poll() is not None:
                return
            try:
                self.d.frames(self.rng.randint(1, 6))
                for seq in [s for s in self.d.reject_seqs() if s not in marked][:3]:
                    marked.add(seq)
                    answer = self.d.request({"op": "mark", "seq": seq, "mark": self.rng.choice(["good", "bad"])})
                    if answer.get("ok"):
                        self.confirmed.append(answer["record_id"])
            except (ControlError, OSError, ValueError):
                return  # killed mid-request: that mark was never confirmed
            time.sleep(0.01)


def test_sigkill_at_random_points_and_restart_loses_no_confirmed_mark_and_no_verdict(tmp_path, blur_model):
    rng = random.Random(20261123)
    port, modbus = free_port(), free_port()
    out = tmp_path / "out"
    c = collector(f"tcp://127.0.0.1:{port}", out)
    plc = plc_section(modbus).replace("\n        ", "\n").replace("        ", "", 1)
    cfg = daemon_config(tmp_path, blur_model, port, extra=plc)
    confirmed: list[str] = []
    try:
        for round_ in range(3):
            d = Daemon(cfg)
            client = plc_client(modbus, timeout=1)
            assert wait_until(lambda client=client: plc_view(client)["ready"], 10)
            work = _Work(d, rng)
            time.sleep(rng.uniform(0.3, 1.5))  # a random point in the middle of it all
            d.kill()
            work.stop.set()
            work.t.join(10)
            confirmed += work.confirmed
            vs = d.events("verdict")
            assert [v["seq"] for v in vs] == list(range(1, len(vs) + 1)), f"round {round_}: verdicts out of order"
            try:
                answered = not client.read_holding_registers(0, count=1, device_id=1).isError()
            except Exception:
                answered = False
            client.close()
            assert not answered, "a dead daemon's port must not answer (the PLC sees the heartbeat stop)"
            assert not ModbusTcpClient("127.0.0.1", port=modbus, timeout=1, retries=0).connect()
        d = Daemon(cfg)  # the restart after the last kill runs to a clean stop
        client = plc_client(modbus)
        try:
            v = plc_view(client)
            assert wait_until(lambda: plc_view(client)["heartbeat"] != v["heartbeat"], 3)
            assert wait_until(lambda: plc_view(client)["state"] == 1, 10), plc_view(client)
            d.frames(10)
            assert wait_until(lambda: len(d.events("verdict")) >= 10, 30)
            assert wait_until(lambda: d.status()["spool"]["depth"] == 0, 30), d.status()
        finally:
            client.close()
            code = d.stop()
        assert code == 0
        assert_accounted(d, expect_frames=10)
    finally:
        c.stop()
    got = [m["id"] for m in meta_lines(out)]
    assert len(got) == len(set(got)), "a record stored twice"
    assert set(confirmed) <= set(got), f"confirmed marks lost: {set(confirmed) - set(got)}"
    assert confirmed, "the test made no marks before the kills"
    print({"rounds": 3, "confirmed_marks": len(confirmed), "collected": len(got)})
