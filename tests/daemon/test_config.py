"""Config validation: unknown keys, bad values and missing models are errors that name key, line and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from inspectd.core.errors import ConfigError
from inspectd.daemon.config import Config, check_runtime, load_config, parse_config
from tests.support.helpers import REPO, make_blur_model, run_cli, write_config


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="c.yaml")
    return str(info.value)


def test_repository_default_config_is_valid():
    cfg = load_config(REPO / "config.yaml")
    assert cfg.camera.type == "synthetic"
    assert cfg.model.path == REPO / "models" / "demo"


def test_unknown_key_names_path_line_and_close_match():
    msg = _error("camera:\n  type: synthetic\n  rate_hzz: 5\n")
    assert "c.yaml:3: camera.rate_hzz: unknown key" in msg
    assert "did you mean 'rate_hz'" in msg


def test_unknown_top_level_key_lists_the_allowed_keys():
    msg = _error("camera:\n  type: synthetic\nmodle:\n  path: x\n")
    assert "c.yaml:3: modle: unknown key" in msg and "'model'" in msg


def test_out_of_range_value_names_limit_and_received_value():
    msg = _error("camera:\n  type: synthetic\n  rate_hz: 5000\n")
    assert "c.yaml:3: camera.rate_hz" in msg
    assert "less than or equal to 1000" in msg and "5000" in msg


def test_wrong_type_is_an_error():
    msg = _error("camera:\n  type: synthetic\npipeline:\n  queue_size: lots\n")
    assert "c.yaml:4: pipeline.queue_size" in msg and "integer" in msg


def test_unknown_camera_type_lists_the_registered_types():
    msg = _error("camera:\n  type: firewire\n")
    assert "camera" in msg and "firewire" in msg
    for known in ("synthetic", "folder", "video", "opencv"):
        assert known in msg


def test_missing_camera_section_is_reported():
    msg = _error("line: a\n")
    assert "camera: required key is missing" in msg


def test_duplicate_key_is_an_error_with_both_lines():
    msg = _error("camera:\n  type: synthetic\n  seed: 1\n  seed: 2\n")
    assert "c.yaml:4" in msg and "duplicate key" in msg and "line 3" in msg


def test_invalid_yaml_names_the_line():
    msg = _error("camera:\n  type: synthetic\n  width: [1, 2\n")
    assert "not valid YAML" in msg


def test_non_mapping_document_is_an_error():
    assert "must be a YAML mapping" in _error("- a\n- b\n")


def test_unknown_provider_suggests_the_right_name():
    msg = _error("camera:\n  type: synthetic\nmodel:\n  providers: [CUDAExecutionProvidr]\n")
    assert "CUDAExecutionProvider" in msg and "c.yaml:4" in msg


def test_reconnect_backoff_order_is_checked():
    msg = _error("camera:\n  type: synthetic\n  reconnect:\n    initial_s: 5\n    max_s: 1\n")
    assert "camera.reconnect" in msg and "max_s" in msg


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    cfg_file = write_config(tmp_path / "c.yaml", "camera:\n  type: folder\n  path: imgs\nmodel:\n  path: m\n")
    cfg = load_config(cfg_file)
    assert cfg.model.path == tmp_path / "m"
    assert cfg.camera.path == tmp_path / "imgs"


def test_config_is_immutable():
    cfg = parse_config("camera:\n  type: synthetic\n")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.line = "other"  # type: ignore[misc]
    assert isinstance(cfg, Config)


def test_missing_model_directory_is_a_config_error(tmp_path):
    cfg = parse_config("camera:\n  type: synthetic\nmodel:\n  path: nowhere\n", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"model.path: model directory .*nowhere does not exist"):
        check_runtime(cfg)


def test_corrupted_model_file_is_a_config_error(tmp_path):
    model = make_blur_model(tmp_path / "m")
    with open(model / "model.onnx", "ab") as f:
        f.write(b"\0")
    cfg = parse_config("camera:\n  type: synthetic\nmodel:\n  path: m\n", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="sha256"):
        check_runtime(cfg)


# --- the real CLI ---------------------------------------------------------------------------------------


def test_check_config_cli_exits_0_on_a_valid_config(tmp_path):
    make_blur_model(tmp_path / "m")
    cfg = write_config(tmp_path / "c.yaml", "camera:\n  type: synthetic\nmodel:\n  path: m\n")
    res = run_cli("check-config", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("camera:\n  type: synthetic\n  bogus: 1\nmodel:\n  path: m\n", ":3: camera.bogus: unknown key"),
        ("camera:\n  type: synthetic\n  defect_rate: 1.5\nmodel:\n  path: m\n", ":3: camera.defect_rate"),
        ("camera:\n  type: synthetic\nmodel:\n  path: missing-model\n", "missing-model does not exist"),
    ],
    ids=["unknown-key", "bad-value", "missing-model"],
)
def test_check_config_cli_exits_2_naming_the_problem(tmp_path, body, needle):
    make_blur_model(tmp_path / "m")
    cfg = write_config(tmp_path / "c.yaml", body)
    res = run_cli("check-config", "--config", str(cfg))
    assert res.returncode == 2
    assert needle in res.stderr
    assert "Traceback" not in res.stderr


def test_run_cli_refuses_a_bad_config_with_exit_2(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", "camera:\n  type: synthetic\n  width: 3\n")
    res = run_cli("run", "--config", str(cfg), "--max-frames", "1")
    assert res.returncode == 2
    assert "camera.width" in res.stderr and "greater than or equal to 16" in res.stderr


def test_missing_config_file_is_exit_2(tmp_path):
    res = run_cli("check-config", "--config", str(Path(tmp_path) / "none.yaml"))
    assert res.returncode == 2 and "does not exist" in res.stderr
