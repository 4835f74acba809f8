"""Fuzzing every entry point a person or a peer can reach (hypothesis, bounded example counts, no example database):
config files, command-line arguments, ZeroMQ messages to the collector, Modbus frames, the control socket, and
image files. The property is always the same: a clear, expected error or a valid result; never another exception,
never a hang, and the server goes on serving a well-behaved client afterwards."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspectd.core.errors import ConfigError
from inspectd.daemon.config import Config, parse_config
from tests.support.helpers import REPO, draw_item

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

# --- config -------------------------------------------------------------------------------------------------

BASE = yaml.safe_load((REPO / "config.yaml").read_text())
BASE["model"]["path"] = str(REPO / "models" / "demo")
BASE["rejects"]["dir"] = "/tmp/x/rejects"


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))


KEY_PATHS = sorted(
    set(_paths(BASE))
    | {
        ("pipeline", "threads", "numba"),
        ("plc", "server", "allow_writes_from"),
        ("plc", "client", "host"),
        ("camera", "reconnect", "max_s"),
    }
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "0.0.0.0", "tcp://x:1", "-1", "1e309", "~", "gray"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _parse(text: str) -> None:
    try:
        cfg = parse_config(text, source="fuzz.yaml", base_dir=Path("/tmp"))
    except ConfigError as exc:
        assert str(exc).strip()
        return
    assert isinstance(cfg, Config)


@FUZZ
@given(path=st.sampled_from(KEY_PATHS), value=values, drop=st.booleans())
def test_fuzz_config_values_give_a_config_error_or_a_valid_config(path, value, drop):
    doc = json.loads(json.dumps(BASE))
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node
    if isinstance(node, dict):
        if drop:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return
    _parse(text)


@FUZZ
@given(
    st.text(max_size=300)
    | st.sampled_from(
        [
            (
                "a: &a [1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nmodel: "
                "{providers: *c}\n"
            ),
            "camera: {type: synthetic}\ncamera: {type: folder}\n",
            "- 1\n- 2\n",
            "camera: !!python/object:os.system x\n",
            "\t\tcamera:\n",
            "camera:\n  type: [synthetic]\n",
            "{" * 200,
            "camera: {type: synthetic, rate_hz: .nan}\n",
        ]
    )
)
def test_fuzz_config_text_gives_a_config_error_or_a_valid_config(text):
    _parse(text)


# --- command line ---------------------------------------------------------------------------------------------

tokens = st.one_of(
    st.sampled_from(
        [
            "--config",
            "--max-frames",
            "--good",
            "--bad",
            "--bind",
            "--out",
            "-h",
            "--json",
            "--max-image-mb",
            "-1",
            "0",
            "nan",
            "x",
            "",
            "--",
            "--curve-secret-key",
        ]
    ),
    st.text(max_size=12),
)


@FUZZ
@given(
    cmd=st.sampled_from(["run", "check-config", "mark", "reload", "collect", "train", "nonsense", "--version"]),
    args=st.lists(tokens, max_size=5),
)
def test_fuzz_cli_arguments_exit_0_or_2_with_a_message_never_a_traceback(cmd, args):
    from inspectd.cli import build_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args([cmd, *args])
        except SystemExit as exc:
            assert exc.code in (0, 2), exc.code
            if exc.code == 2:
                assert "error:" in err.getvalue()


@FUZZ
@given(
    cmd=st.sampled_from(["check-config", "mark", "reload"]),
    config=st.text(min_size=1, max_size=40),
    seq=st.text(min_size=1, max_size=10).filter(lambda s: not s.startswith("-")),
)
def test_fuzz_cli_handlers_with_bad_configs_return_2_with_a_message(tmp_path, cmd, config, seq):
    from inspectd.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(config)
    argv = [cmd, *([seq, "--good"] if cmd == "mark" else []), "--config", str(path)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    assert code == 2 and err.getvalue().strip(), (argv, code)


# --- ZeroMQ messages to the collector -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collector_server(tmp_path_factory):
    from inspectd.collector.dataset import Dataset
    from inspectd.collector.server import Collector

    ctx = zmq.Context()
    c = Collector(
        "tcp://127.0.0.1:*", Dataset(tmp_path_factory.mktemp("collected")), max_image_bytes=256 * 1024, context=ctx
    )
    stop = threading.Event()
    t = threading.Thread(target=c.serve, args=(stop,), daemon=True)
    t.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(c.endpoint)
    yield c, dealer, t
    stop.set()
    t.join(5)
    dealer.close()
    c.close()
    ctx.term()


def _meta_like():
    from tests.support.collector import record

    meta, _ = record("fuzz-1")
    return st.fixed_dictionaries({}, optional={k: st.one_of(st.just(v), values) for k, v in meta.items()})


frames = st.lists(
    st.one_of(
        st.binary(max_size=200),
        st.just(b"inspectd.false_reject.v1"),
        _meta_like().map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=64).map(lambda b: b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + b),
    ),
    min_size=1,
    max_size=5,
)


@FUZZ
@given(message=frames)
def test_fuzz_zeromq_messages_are_answered_and_the_collector_keeps_serving(collector_server, message):
    from inspectd.feedback.protocol import ACK_TAG, NACK_TAG

    _c, dealer, thread = collector_server
    dealer.send_multipart(message)
    assert dealer.poll(5000), "no answer within 5 s"
    reply = dealer.recv_multipart()
    assert reply[0] in (ACK_TAG, NACK_TAG), reply
    assert thread.is_alive()


def test_after_the_zeromq_fuzz_a_valid_record_is_stored(collector_server):
    from inspectd.feedback.protocol import ACK_TAG, encode_record
    from tests.support.collector import record

    _c, dealer, _thread = collector_server
    dealer.send_multipart(encode_record(*record("after-fuzz")))
    assert dealer.poll(5000) and dealer.recv_multipart() == [ACK_TAG, b"after-fuzz"]


# --- Modbus frames -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def modbus_server():
    from inspectd.plc import PlcConfig, build_plc_sink
    from tests.support.net import free_port

    sink = build_plc_sink(PlcConfig(server={"port": free_port(), "linger_s": 0, "max_clients": 8}))
    sink.start()
    yield sink
    sink.close()


def _mbap(tid: int, unit: int, pdu: bytes, length: int | None = None) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1 if length is None else length, unit) + pdu


modbus_bytes = st.one_of(
    st.binary(max_size=700),
    st.builds(_mbap, st.integers(0, 65535), st.integers(0, 255), st.binary(max_size=260)),
    st.builds(
        lambda fc, body, ln: _mbap(1, 1, bytes([fc]) + body, ln),
        st.integers(0, 255),
        st.binary(max_size=20),
        st.integers(0, 65535),
    ),
)


@FUZZ
@given(payload=modbus_bytes)
def test_fuzz_modbus_frames_never_stop_the_server_and_a_normal_read_still_answers(modbus_server, payload):
    from inspectd.core.types import Code
    from tests.support.plc import verdict

    with socket.create_connection(modbus_server.address, timeout=2) as s:
        s.sendall(payload)
        s.settimeout(0.05)
        with contextlib.suppress(OSError):
            s.recv(1024)
    seq = len(payload) % 60000 + 1
    modbus_server.emit(verdict(seq, Code.REJECT, item_id=7))
    with socket.create_connection(modbus_server.address, timeout=2) as s:
        s.sendall(_mbap(9, 1, struct.pack(">BHH", 3, 2, 2)))
        answer = s.recv(64)
    assert answer[7] == 3 and struct.unpack(">HH", answer[9:13]) == (seq, 2), answer


# --- the control socket ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def control_server(tmp_path_factory):
    from inspectd.feedback.channel import Feedback
    from inspectd.feedback.control import ControlServer

    fb = Feedback()
    server = ControlServer(tmp_path_factory.mktemp("ctl") / "c.sock", fb.handle)
    server.start()
    yield server
    server.close()


@FUZZ
@given(
    line=st.one_of(
        st.binary(max_size=300),
        st.dictionaries(st.sampled_from(["op", "seq", "mark", "reject_id"]), values, max_size=4).map(
            lambda d: json.dumps(d).encode()
        ),
    )
)
def test_fuzz_control_socket_requests_get_a_json_answer(control_server, line):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(control_server.path))
        s.sendall(line.replace(b"\n", b" ") + b"\n")
        raw = s.recv(65536)
    if line.replace(b"\n", b" ").strip():
        answer = json.loads(raw)
        assert answer["ok"] is False and answer["error"], answer


# --- image files ------------------------------------------------------------------------------------------------

_GOOD = draw_item((48, 40), defect=True)
SEEDS = [
    cv2.imencode(ext, img)[1].tobytes()
    for ext in (".png", ".jpg", ".bmp", ".tiff")
    for img in (_GOOD, cv2.cvtColor(_GOOD, cv2.COLOR_GRAY2BGR))
]


def _mutate(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    b = bytearray(data[: max(0, len(data) - cut)])
    for pos, val in flips:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


images = st.one_of(
    st.binary(max_size=2000),
    st.builds(
        _mutate,
        st.sampled_from(SEEDS),
        st.integers(0, 400),
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    ),
)


@pytest.fixture(scope="module")
def gray_inspector(tmp_path_factory):
    from inspectd.inspection.inspector import Inspector
    from tests.support.helpers import make_blur_model

    return Inspector.from_model_dir(
        make_blur_model(tmp_path_factory.mktemp("m"), size=(32, 32)), providers=("CPUExecutionProvider",)
    )


@FUZZ
@given(data=images, ext=st.sampled_from([".png", ".jpg", ".bmp", ".tif"]))
def test_fuzz_image_files_in_a_folder_camera_give_an_error_capture_or_an_image_that_inspects(
    tmp_path, gray_inspector, data, ext
):
    from inspectd.daemon.cameras.folder import FolderCamera, FolderCameraConfig

    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    for p in folder.iterdir():
        p.unlink()
    (folder / f"x{ext}").write_bytes(data)
    cam = FolderCamera(FolderCameraConfig(path=folder))
    cam.open()
    cap = cam.read(1.0)
    if cap.image is None:
        assert cap.error and "x" in cap.error
        return
    assert cap.image.dtype == np.uint8 and (cap.image.ndim == 2 or cap.image.shape[2] == 3)
    result = gray_inspector.inspect(cap.image)
    assert result.score_map.shape == cap.image.shape[:2]
