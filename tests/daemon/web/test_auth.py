"""The operator's secret: created safely when missing, refused when unusable, compared with a lockout per address,
sessions that expire."""

from __future__ import annotations

import stat
import time

import pytest

from inspectd.core.errors import ConfigError
from inspectd.daemon.web.auth import LockedOutError, OperatorAuth, load_secret
from inspectd.daemon.web.config import StationConfig


def test_a_missing_secret_file_is_created_with_a_random_pin_readable_by_the_owner_only(tmp_path):
    cfg = StationConfig(secret_file=tmp_path / "sub" / "station.pin")
    pin = load_secret(cfg)
    assert len(pin) == 6 and pin.isdigit()
    path = tmp_path / "sub" / "station.pin"
    assert path.read_text().strip() == pin
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(cfg) == pin  # read back, not made again
    token = load_secret(StationConfig(secret_file=tmp_path / "t", secret_kind="token"))
    assert len(token) == 32 and token != pin


@pytest.mark.parametrize("content", ["", "12", "has space", "x" * 300])
def test_an_unusable_secret_file_is_a_config_error_that_says_what_is_expected(tmp_path, content):
    (tmp_path / "pin").write_text(content)
    with pytest.raises(ConfigError, match=r"expected one PIN or token of 4\.\.256 characters"):
        load_secret(StationConfig(secret_file=tmp_path / "pin"))


def test_wrong_secrets_lock_an_address_out_even_for_the_right_one_and_other_addresses_go_on(monkeypatch):
    auth = OperatorAuth(StationConfig(secret_file="x", max_failures=3, lockout_s=0.3), "4711")
    for _ in range(3):
        assert auth.login("10.0.0.9", "0000") is None
    with pytest.raises(LockedOutError, match="try again"):
        auth.login("10.0.0.9", "4711")
    session = auth.login("127.0.0.1", "4711")  # another address is not locked
    assert session and auth.valid(session)
    time.sleep(0.35)
    assert auth.login("10.0.0.9", "4711") is not None  # the lockout ends by itself


def test_a_session_locks_again_after_its_idle_time_and_on_logout():
    auth = OperatorAuth(StationConfig(secret_file="x", session_idle_s=0.2), "4711")
    a, b = auth.login("h", "4711"), auth.login("h", "4711")
    assert a != b and auth.valid(a) and auth.valid(b)
    time.sleep(0.12)
    assert auth.valid(a, touch=True)  # a mark restarts the idle time
    time.sleep(0.12)
    assert auth.valid(a) and not auth.valid(b)
    auth.logout(a)
    assert not auth.valid(a) and not auth.valid(None) and not auth.valid("forged")
