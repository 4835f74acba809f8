"""The recheck station in a real headless chromium against a real `inspectd run` (synthetic camera, software
trigger) with the whole false-reject channel and a real `inspectd collect`: one daemon, one collector and one
browser for the module. The tests run in file order and build on each other (the first reject is marked good,
then refused bad, ...)."""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse

import pytest

from tests.support.browser import chromium, console_errors, screenshot
from tests.support.collector import Daemon, collector, daemon_config, meta_lines
from tests.support.helpers import REPO, make_blur_model, run_cli
from tests.support.net import free_port, wait_until
from tests.support.plc import plc_client

Keys = pytest.importorskip("selenium.webdriver.common.keys", reason="selenium is in the dev extra").Keys
PIN = "4711"
SHOTS = os.environ.get("INSPECTD_DOC_SCREENSHOTS")  # e.g. docs/img: write the documentation's screenshots there


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("station")
    model = make_blur_model(tmp / "model", size=(64, 64), pixel_threshold=0.35)  # rejects nearly every frame
    (tmp / "station.pin").write_text(PIN + "\n")
    (tmp / "station.pin").chmod(0o600)
    zmq_port, http_port, plc_port = free_port(), free_port(), free_port()
    extra = f"""
plc:
  heartbeat_interval_s: 0.2
  server:
    host: 127.0.0.1
    port: {plc_port}
http:
  host: 127.0.0.1
  port: {http_port}
  station:
    secret_file: station.pin
    max_failures: 3
    lockout_s: 60
"""
    cfg = daemon_config(tmp, model, zmq_port, extra=extra)
    col = collector(f"tcp://127.0.0.1:{zmq_port}", tmp / "collected")
    d = Daemon(cfg)
    browser = chromium(tmp / "profile")
    url = f"http://127.0.0.1:{http_port}"
    try:
        yield {"d": d, "collected": tmp / "collected", "url": url, "b": browser, "cfg": cfg, "plc_port": plc_port}
    finally:
        browser.quit()
        d.stop()
        col.stop()


def _queue(b) -> list[dict]:
    return b.execute_script(
        "return [...document.querySelectorAll('#queue li')].map(li => ({id: li.dataset.id, seq: +li.dataset.seq,"
        " badge: li.querySelector('.badge').textContent, selected: li.classList.contains('selected')}))"
    )


def _message(b) -> str:
    return b.find_element("id", "message").text


def _take_reject(line) -> dict:
    """Trigger frames one at a time until one is a reject; its verdict event and the trigger time."""
    d = line["d"]
    for _ in range(10):
        n = len(d.events("verdict"))
        t0 = time.monotonic()
        d.frames(1)
        assert wait_until(lambda n=n: len(d.events("verdict")) > n, 10)
        v = d.events("verdict")[n]
        if v["code"] == "reject":
            return {**v, "t0": t0}
    raise AssertionError("ten frames and no reject")


def _store_meta(line, rid: str) -> dict:
    return json.loads((line["cfg"].parent / "rejects" / f"{rid}.json").read_text())


def _post(url: str, body: dict, headers: dict | None = None, *, source: str = "127.0.0.1") -> tuple[int, dict]:
    """POST JSON from a chosen loopback address (the lockout is per address): (status, answer)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10, source_address=(source, 0))
    try:
        conn.request("POST", parts.path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
        res = conn.getresponse()
        return res.status, json.loads(res.read())
    finally:
        conn.close()


def test_the_page_shows_a_new_reject_within_2_s_with_its_frame_heat_map_and_regions(line):
    b = line["b"]
    b.get(line["url"] + "/")
    assert wait_until(lambda: b.find_element("id", "live").text == "live", 5), "the event stream did not open"
    v = _take_reject(line)
    assert wait_until(lambda: _queue(b) and _queue(b)[0]["seq"] == v["seq"], 2.0), "the new reject is not shown"
    shown_after = time.monotonic() - v["t0"]
    assert shown_after < 2.0, f"shown {shown_after:.2f} s after the trigger"
    print(f"reject seq {v['seq']} shown on the page {shown_after:.3f} s after its trigger")  # pytest -s shows it
    top = _queue(b)[0]
    assert top["selected"] and top["badge"] == "open"
    assert b.find_element("id", "f-seq").text == str(v["seq"])
    assert b.find_element("id", "f-item").text == str(v["item_id"])
    assert b.find_element("id", "f-score").text == f"{v['score']:.3f}"
    assert b.find_element("id", "f-mark").text == "not marked"
    assert wait_until(
        lambda: b.execute_script(
            "return ['img-frame', 'img-overlay'].every(id => document.getElementById(id).naturalWidth === 96)"
        ),
        5,
    ), "frame and heat map must load at the camera's 96 px"
    boxes = b.execute_script("return document.querySelectorAll('#boxes rect').length")
    assert boxes == len(_store_meta(line, top["id"])["regions"]) > 0
    assert console_errors(b) == []
    if SHOTS:
        screenshot(b, REPO / SHOTS / "station.png")


def test_marking_needs_the_operator_pin_and_wrong_pins_are_locked_out(line):
    b, url = line["b"], line["url"]
    rid = _queue(b)[0]["id"]
    b.find_element("id", "good").click()
    assert wait_until(lambda: "PIN" in _message(b), 2), _message(b)
    assert b.find_element("id", "pin-dialog").get_attribute("open") is not None, "the PIN pad must open"
    assert _store_meta(line, rid)["mark"] is None
    # the API itself refuses: no session cookie, a wrong bearer secret (from another address: 127.0.0.2)
    status, answer = _post(f"{url}/api/rejects/{rid}/mark", {"mark": "good"})
    assert status == 401 and not answer["ok"] and "PIN" in answer["error"]
    stranger = "127.0.0.2"
    status, _ = _post(
        f"{url}/api/rejects/{rid}/mark", {"mark": "good"}, {"Authorization": "Bearer 0000"}, source=stranger
    )
    assert status == 401
    # a wrong PIN on the page's keypad
    for key in "99":
        b.find_element("css selector", f".keypad button[data-key='{key}']").click()
    b.find_element("css selector", ".keypad button[data-key='OK']").click()
    assert wait_until(lambda: b.find_element("id", "pin-error").text == "wrong PIN", 2)
    assert _store_meta(line, rid)["mark"] is None
    # the stranger's third wrong secret locks that address out, even for the right PIN; the station's is not
    assert _post(f"{url}/api/login", {"secret": "1"}, source=stranger)[0] == 401
    assert _post(f"{url}/api/login", {"secret": "2"}, source=stranger)[0] == 401
    status, answer = _post(f"{url}/api/login", {"secret": PIN}, source=stranger)
    assert status == 429 and "try again" in answer["error"]
    assert _store_meta(line, rid)["mark"] is None


def test_good_on_the_page_reaches_the_spool_and_the_collector_as_a_false_reject(line):
    b, d = line["b"], line["d"]
    pin = b.find_element("id", "pin")  # the PIN pad is still open; the station's own address is not locked out
    pin.clear()
    pin.send_keys(PIN)
    b.find_element("css selector", ".keypad button[data-key='OK']").click()
    assert wait_until(lambda: b.find_element("id", "operator").text == "unlocked", 3), b.find_element(
        "id", "pin-error"
    ).text
    first = _queue(b)[-1]
    b.find_element("css selector", f"#queue li[data-id='{first['id']}']").click()
    spooled_before = d.status()["sender"]["sent"]
    b.find_element("id", "good").click()
    assert wait_until(lambda: "marked good" in _message(b), 5), _message(b)
    assert _store_meta(line, first["id"])["mark"]["by"] == "station"
    # the same Marker as the CLI: a durable spool record, sent, acknowledged, filed as a false reject
    assert wait_until(lambda: any(m["id"] == first["id"] for m in meta_lines(line["collected"])), 15)
    record = next(m for m in meta_lines(line["collected"]) if m["id"] == first["id"])
    assert record["mark"] == "good" and record["marked_by"] == "station" and record["seq"] == first["seq"]
    assert wait_until(lambda: d.status()["sender"]["acked"] >= 1 and d.status()["spool"]["depth"] == 0, 10)
    assert d.status()["sender"]["sent"] > spooled_before
    assert [e for e in d.events("marked") if e["id"] == first["id"] and e["by"] == "station"]
    res = run_cli("mark", str(first["seq"]), "--good", "--config", str(line["cfg"]), timeout=60)
    assert res.returncode == 0 and "was already marked good" in res.stdout, res.stderr
    assert wait_until(lambda: "open" not in [q["badge"] for q in _queue(b) if q["id"] == first["id"]], 2)


def test_a_conflicting_bad_is_refused_on_the_page_and_nothing_is_sent(line):
    b = line["b"]
    first = _queue(b)[-1]
    assert first["badge"] == "good" and first["selected"]
    b.find_element("css selector", "body").send_keys("b")  # the keyboard shortcut
    assert wait_until(lambda: "already marked good" in _message(b), 5), _message(b)
    assert "error" in b.find_element("id", "message").get_attribute("class")
    assert _store_meta(line, first["id"])["mark"]["mark"] == "good"
    time.sleep(0.5)
    assert [m["mark"] for m in meta_lines(line["collected"]) if m["id"] == first["id"]] == ["good"]
    # the same mark again is idempotent: the page says so, the collector gets nothing new
    b.find_element("css selector", "body").send_keys("g")
    assert wait_until(lambda: "was already marked good" in _message(b), 5), _message(b)


def test_a_mark_from_the_plc_register_21_shows_on_the_page_live_and_keys_move_the_selection(line):
    b, d = line["b"], line["d"]
    v = _take_reject(line)
    assert wait_until(lambda: _queue(b) and _queue(b)[0]["seq"] == v["seq"], 2.0)
    c = plc_client(line["plc_port"])
    try:
        assert not c.write_register(21, v["seq"], device_id=1).isError()
    finally:
        c.close()
    assert wait_until(lambda: _queue(b)[0]["badge"] == "good", 5), _queue(b)[0]
    body = b.find_element("css selector", "body")
    body.send_keys(Keys.HOME)  # back to the newest, and following new ones again
    assert wait_until(lambda: _queue(b)[0]["selected"], 2)
    body.send_keys(Keys.ARROW_DOWN)  # the next older reject
    assert wait_until(lambda: _queue(b)[1]["selected"], 2)
    body.send_keys("k")
    assert wait_until(lambda: _queue(b)[0]["selected"], 2)
    assert "by plc" in b.find_element("id", "f-mark").text
    b.find_element("id", "bad").click()
    assert wait_until(lambda: "already marked good" in _message(b) and "by plc" in _message(b), 5), _message(b)
    assert wait_until(lambda: any(m["id"] == _queue(b)[0]["id"] for m in meta_lines(line["collected"])), 15)
    assert d.proc.poll() is None
    # the only console errors are the refusals these tests asked for (Chrome logs every 4xx answer)
    errors = console_errors(b)
    assert all(e["source"] == "network" and "/api/" in e["message"] for e in errors), errors
    assert all(("status of 401" in e["message"]) or ("status of 409" in e["message"]) for e in errors), errors
    if SHOTS:
        screenshot(b, REPO / SHOTS / "station-refused.png")
