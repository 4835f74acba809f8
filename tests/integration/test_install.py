"""What a new user meets installing inspectd (issue 24): the training commands without the `train` extra say which
extra to install (exit 2, no traceback); the demo config copied into a read-only /etc (what the unit's
ProtectSystem=strict makes of it) is refused by check-config, naming every path the daemon could not write, and
the shipped line-PC config (systemd/config.example.yaml) writes only where the unit allows; `{"op": "status"}`
reports the daemon's state, frame rate, queue depth and PLC link."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.collector import Daemon, daemon_config
from tests.support.helpers import REPO, cli_env, make_blur_model, run_cli
from tests.support.net import free_port, wait_until
from tests.support.plc import plc_client
from tests.support.reliability import plc_section, small_tmpfs

WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; from inspectd.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def blur_model(tmp_path_factory) -> Path:
    return make_blur_model(tmp_path_factory.mktemp("model") / "m", size=(64, 64), pixel_threshold=0.35)


@pytest.mark.parametrize("command", [["train"], ["label", "train-checker"]])
def test_training_commands_without_the_train_extra_say_which_extra_to_install_and_exit_2(tmp_path, command):
    (tmp_path / "data").mkdir()
    res = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *command, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr and "ModuleNotFoundError" not in res.stderr, res.stderr[-2000:]
    assert f"inspectd {' '.join(command)}: " in res.stderr and "torch" in res.stderr, res.stderr
    assert "inspectd[train]" in res.stderr, "names the extra to install"


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((REPO / "systemd" / name).read_text())
    return unit


def test_the_demo_config_copied_into_a_read_only_etc_is_refused_naming_every_path_it_would_write(tmp_path):
    etc = tmp_path / "etc-inspectd"
    with small_tmpfs(etc, "1m"):
        text = (REPO / "config.yaml").read_text().replace("path: models/demo", f"path: {REPO / 'models' / 'demo'}")
        (etc / "config.yaml").write_text(text)
        res = subprocess.run(["mount", "-o", "remount,ro", str(etc)], capture_output=True, timeout=10)
        assert res.returncode == 0, res.stderr
        res = run_cli("check-config", "--config", str(etc / "config.yaml"), timeout=60)
    assert res.returncode == 2, res.stdout
    for key in ("rejects.dir", "feedback.spool_dir", "control.socket"):
        assert key in res.stderr, (key, res.stderr)
    assert "read-only" in res.stderr, res.stderr


def test_the_line_pc_config_writes_only_under_the_units_state_and_runtime_directories(tmp_path, blur_model):
    from inspectd.daemon.checks import written_dirs
    from inspectd.daemon.config import parse_config

    text = (REPO / "systemd" / "config.example.yaml").read_text()
    cfg = parse_config(text, source="config.example.yaml", base_dir=Path("/etc/inspectd"))
    service = _unit("inspectd.service")["Service"]
    allowed = [Path("/var/lib") / service["StateDirectory"], Path("/run") / service["RuntimeDirectory"]]
    assert service["ProtectSystem"] == "strict"
    dirs = written_dirs(cfg)
    assert {k.split(" ")[0] for k, _ in dirs} == {"rejects.dir", "feedback.spool_dir", "control.socket"}
    for key, path in dirs:
        assert any(path.is_relative_to(a) for a in allowed), f"{key}: {path} is not writable under the unit"
    assert cfg.plc.server.allow_writes_from != ("127.0.0.1", "::1"), "a network PLC is allow-listed by address"
    # and it passes check-config once its paths exist: the same file with them moved into a temp directory
    keys = tmp_path / "keys"
    for name in ("collector", "line-1"):
        assert run_cli("keygen", "--out", str(keys), "--name", name, timeout=60).returncode == 0
    local = yaml.safe_load(text)
    local["model"]["path"] = str(blur_model)
    local["rejects"]["dir"] = str(tmp_path / "var-lib" / "rejects")
    local["feedback"]["spool_dir"] = str(tmp_path / "var-lib" / "spool")
    local["feedback"]["curve"] = {
        "server_public_key": str(keys / "collector.key"),
        "client_secret_key": str(keys / "line-1.key_secret"),
    }
    local["control"]["socket"] = str(tmp_path / "run" / "control.sock")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(local))
    res = run_cli("check-config", "--config", str(tmp_path / "config.yaml"), timeout=60)
    assert res.returncode == 0, res.stderr


def test_status_on_the_control_socket_reports_state_fps_queue_depth_and_the_plc_link(tmp_path, blur_model):
    modbus = free_port()
    plc = plc_section(modbus).replace("\n        ", "\n").replace("        ", "", 1)
    cfg = daemon_config(tmp_path, blur_model, free_port(), trigger="free_run", extra=plc)
    cfg.write_text(cfg.read_text().replace("trigger: free_run", "trigger: free_run\n  rate_hz: 20"))
    d = Daemon(cfg)
    try:
        # "ready" (systemd's READY=1) follows the warm-up; the camera opens in its own thread right after
        assert wait_until(lambda: d.status()["state"] == "running", 10), d.status()
        status = d.status()
        assert status["ready"] is True and status["plc_link"] == "down", status
        assert isinstance(status["queue"], int) and status["queue_size"] == 4
        client = plc_client(modbus)
        try:
            assert wait_until(lambda: d.status()["plc_link"] == "up", 5)
            assert wait_until(lambda: d.status()["fps"] > 10, 10), d.status()
            status = d.status()
            assert 0 <= status["queue"] <= 4 and status["frames"] > 0 and len(status["model"]["sha256"]) == 64
        finally:
            client.close()
        assert wait_until(lambda: d.status()["plc_link"] == "down", 5)
    finally:
        assert d.stop() == 0
