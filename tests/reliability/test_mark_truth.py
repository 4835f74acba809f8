"""One truth for a mark, and no mark lost without the marker knowing (issue 24, items 2 and 8), on the real daemon,
the real collector and the real CLI: a `--good` whose reject-store write failed (a full disk, a power cut) still
refuses a later `--bad` after a restart, end to end; the collector never acks a conflicting mark as a duplicate;
register 21 is cleared only once the mark is decided, with the answer beside it; a client dripping bytes into the
control socket holds up no one else."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
import zmq

from inspectd.feedback.protocol import ACK_TAG, NACK_TAG, encode_record
from tests.support.collector import Daemon, collector, daemon_config, meta_lines, record
from tests.support.helpers import make_blur_model, run_cli
from tests.support.net import free_port, wait_until
from tests.support.plc import plc_client
from tests.support.reliability import fill_disk, plc_section, small_tmpfs


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


def _one_stored_reject(d: Daemon) -> dict:
    d.frames(3)
    assert d.wait_stored(1, 30)
    return json.loads(next((d.socket.parent / "rejects").glob("*.json")).read_text())


def _mark(cfg: Path, what: str, mark: str):
    return run_cli("mark", what, f"--{mark}", "--config", str(cfg), timeout=60)


def _filed(out: Path) -> dict[str, list[str]]:
    return {
        "good": sorted(p.stem for p in (out / "train" / "good").glob("*.png")),
        "bad": sorted(p.stem for p in (out / "test" / "confirmed_defect").glob("*.png")),
    }


def test_a_good_mark_whose_store_write_failed_on_a_full_disk_refuses_a_later_bad_after_a_restart(tmp_path, blur_model):
    port = free_port()
    out = tmp_path / "out"
    c = collector(f"tcp://127.0.0.1:{port}", out)
    cfg = daemon_config(tmp_path, blur_model, port)
    try:
        with small_tmpfs(tmp_path / "rejects") as disk:
            d = Daemon(cfg)
            try:
                rid = _one_stored_reject(d)["id"]
                filler = fill_disk(disk)  # the store cannot write the mark into the reject's JSON
                res = _mark(cfg, rid, "good")
                assert res.returncode == 0, res.stderr
                assert wait_until(lambda: len(meta_lines(out)) == 1, 20)
                assert d.events("mark_not_saved_in_store"), "the store write really failed"
            finally:
                assert d.stop() == 0
            filler.unlink()
            d = Daemon(cfg)  # the restart: the store's JSON never learnt of the mark
            try:
                res = _mark(cfg, rid, "bad")
                assert res.returncode == 2 and "already marked good" in res.stderr, (res.returncode, res.stderr)
                assert d.status()["spool"]["depth"] == 0, "no second record"
            finally:
                assert d.stop() == 0
    finally:
        c.stop()
    assert [(m["id"], m["mark"]) for m in meta_lines(out)] == [(rid, "good")]
    assert _filed(out) == {"good": [rid], "bad": []}


def test_a_good_mark_whose_store_write_was_lost_to_a_power_cut_refuses_a_later_bad(tmp_path, blur_model):
    port = free_port()
    out = tmp_path / "out"
    c = collector(f"tcp://127.0.0.1:{port}", out)
    cfg = daemon_config(tmp_path, blur_model, port)
    try:
        d = Daemon(cfg)
        meta = _one_stored_reject(d)
        rid, path = meta["id"], tmp_path / "rejects" / f"{meta['id']}.json"
        assert _mark(cfg, rid, "good").returncode == 0
        assert wait_until(lambda: len(meta_lines(out)) == 1 and d.status()["spool"]["depth"] == 0, 20)
        d.kill()  # the power cut: the store's JSON is not fsynced, so what it held before may be all that is left
        path.write_text(json.dumps(dict(json.loads(path.read_text()), mark=None)))
        d = Daemon(cfg)
        try:
            res = _mark(cfg, rid, "bad")
            assert res.returncode == 2 and "already marked good" in res.stderr, (res.returncode, res.stderr)
            assert _mark(cfg, rid, "good").returncode == 0, "the same mark again is fine"
        finally:
            assert d.stop() == 0
        assert json.loads(path.read_text())["mark"]["mark"] == "good", "the store was corrected from the journal"
    finally:
        c.stop()
    assert [(m["id"], m["mark"]) for m in meta_lines(out)] == [(rid, "good")]
    assert _filed(out) == {"good": [rid], "bad": []}


def test_the_collector_refuses_a_conflicting_mark_for_a_stored_id_instead_of_acking_a_duplicate(tmp_path):
    port = free_port()
    out = tmp_path / "out"
    c = collector(f"tcp://127.0.0.1:{port}", out)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        for mark, want in (("good", ACK_TAG), ("good", ACK_TAG), ("bad", NACK_TAG)):
            dealer.send_multipart(encode_record(*record("line-7-x-1", mark)))
            assert dealer.poll(5000)
            reply = dealer.recv_multipart()
            assert reply[0] == want, (mark, reply)
        assert b"conflicting" in reply[2]
    finally:
        dealer.close()
        ctx.term()
        c.stop()
    assert [(m["id"], m["mark"]) for m in meta_lines(out)] == [("line-7-x-1", "good")]
    assert _filed(out) == {"good": ["line-7-x-1"], "bad": []}


def test_register_21_is_cleared_only_with_the_answer_so_a_mark_the_spool_refused_is_never_lost_silently(
    tmp_path, blur_model
):
    port, modbus = free_port(), free_port()
    out = tmp_path / "out"
    c = collector(f"tcp://127.0.0.1:{port}", out)
    plc_cfg = plc_section(modbus).replace("\n        ", "\n").replace("        ", "", 1)
    cfg = daemon_config(tmp_path, blur_model, port, extra=plc_cfg)
    try:
        with small_tmpfs(tmp_path / "spool", "256k") as spool_disk:
            d = Daemon(cfg)
            plc = plc_client(modbus)
            try:
                seq = _one_stored_reject(d)["plc_seq"]
                filler = fill_disk(spool_disk)  # the spool (and the mark journal) cannot take the record

                def answered():
                    return plc.read_holding_registers(21, count=3, device_id=1).registers

                assert not plc.write_register(21, seq, device_id=1).isError()
                assert wait_until(lambda: answered()[0] == 0, 10)
                assert answered() == [0, seq, 6], "cleared without saying the mark failed (6)"
                filler.unlink()  # space again: the PLC (seeing 6) asks again
                assert not plc.write_register(21, seq, device_id=1).isError()
                assert wait_until(lambda: answered()[0] == 0, 10)
                assert answered() == [0, seq, 1], "marked (1)"
                assert wait_until(lambda: len(meta_lines(out)) == 1, 20)
                assert not plc.write_register(21, 4321, device_id=1).isError()  # no such reject
                assert wait_until(lambda: answered() == [0, 4321, 3], 10)
            finally:
                plc.close()
                assert d.stop() == 0
    finally:
        c.stop()
    assert [m["plc_seq"] for m in meta_lines(out)] == [seq]


def test_a_client_dripping_bytes_into_the_control_socket_does_not_block_inspectd_mark(tmp_path, blur_model):
    d = Daemon(daemon_config(tmp_path, blur_model, free_port()))
    cut_off: list[float] = []
    stop = threading.Event()

    def drip() -> None:
        """A byte every 2 s, never a whole line (any one read waits less than the old 5 s socket timeout)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(d.socket))
            t0 = time.monotonic()
            s.sendall(b'{"op": ')
            while not stop.wait(2.0):
                try:
                    s.sendall(b" ")
                except OSError:
                    cut_off.append(time.monotonic() - t0)
                    return

    try:
        rid = _one_stored_reject(d)["id"]
        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        res = _mark(d.socket.parent / "daemon.yaml", rid, "good")
        took = time.monotonic() - t0
        assert res.returncode == 0 and took < 8, (res.returncode, round(took, 1), res.stderr)
        assert wait_until(lambda: cut_off, 12), "the dripping client was never cut off"
        assert cut_off[0] < 10, cut_off
    finally:
        stop.set()
        assert d.stop() == 0
