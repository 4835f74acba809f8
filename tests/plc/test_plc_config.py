"""The `plc:` config section: defaults from docs/plc.md, and the mistakes it refuses."""

from __future__ import annotations

import pytest

from inspectd.core.errors import ConfigError
from inspectd.daemon.config import load_config, parse_config
from inspectd.plc import PlcConfig
from tests.support.helpers import REPO

CAMERA = "camera:\n  type: synthetic\n"


def test_defaults_are_the_design_register_map_on_loopback():
    cfg = PlcConfig()
    assert cfg.mode == "server" and cfg.server.host == "127.0.0.1" and cfg.server.port == 5020
    assert cfg.server.coils.model_dump() == {
        "ready": 0,
        "result_toggle": 1,
        "last_pass": 2,
        "last_reject": 3,
        "trigger": 8,
    }
    h = cfg.server.holding
    assert (h.heartbeat, h.state, h.last_seq, h.last_code, h.last_score_milli, h.last_defect_area, h.last_item_id) == (
        0,
        1,
        2,
        3,
        4,
        5,
        6,
    )
    assert (h.counters, h.item_id, h.false_reject_seq, h.ring) == (8, 20, 21, 32)


def test_the_demo_config_serves_the_plc_on_loopback():
    cfg = load_config(REPO / "config.yaml")
    assert cfg.plc is not None and cfg.plc.mode == "server" and cfg.plc.server.host == "127.0.0.1"


def test_no_plc_section_means_no_plc_link():
    assert parse_config(CAMERA).plc is None


def test_plc_trigger_without_a_plc_section_is_a_config_error():
    with pytest.raises(ConfigError, match=r"camera.trigger is plc, but there is no `plc:` section"):
        parse_config(CAMERA + "  trigger: plc\n")
    cfg = parse_config(CAMERA + "  trigger: plc\nplc:\n  mode: server\n")
    assert cfg.camera.trigger == "plc"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("plc:\n  server:\n    holding:\n      ring: 10\n", "holding.ring (address 10) overlaps holding.counters"),
        ("plc:\n  server:\n    coils:\n      trigger: 0\n", "overlaps coils.ready"),
        ("plc:\n  mode: client\n", "mode client needs client.host"),
        (
            "plc:\n  mode: client\n  client:\n    host: 10.0.0.5\n    read_address: 20\n",
            "overlaps client.write_address",
        ),
        ("plc:\n  server:\n    port: 70000\n", "plc.server.port"),
        (
            "  trigger: plc\nplc:\n  mode: client\n  client:\n    host: 10.0.0.5\n    read_address: null\n",
            "plc.client.read_address is null",
        ),
        ("plc:\n  server:\n    prot: 502\n", "did you mean 'port'"),
    ],
)
def test_mistakes_in_the_plc_section_are_named(body, needle):
    with pytest.raises(ConfigError, match=None) as err:
        parse_config(CAMERA + body, source="c.yaml")
    assert needle in str(err.value)
