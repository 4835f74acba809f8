"""A line PC fetching its assigned model: `registry fetch --config` installs it beside model.path, switches the
link and asks the running daemon (a real `inspectd run`) to reload; a model the daemon refuses is switched back,
so the line keeps the model that works."""

from __future__ import annotations

import json
import os

from tests.support.collector import Daemon, daemon_config
from tests.support.helpers import make_blur_model
from tests.support.net import free_port


def _sha(model) -> str:
    return json.loads((model / "manifest.json").read_text())["onnx"]["sha256"]


def _shapes_lie(model):
    """A model directory the registry accepts (manifest valid, sha256 right) but the daemon refuses: its manifest
    says 40x40 where the graph takes 32x32."""
    raw = json.loads((model / "manifest.json").read_text())
    raw["input"]["shape"] = raw["output"]["shape"] = [None, 1, 40, 40]
    raw["name"] = "lying"
    (model / "manifest.json").write_text(json.dumps(raw))
    return model


def test_fetch_installs_the_assigned_model_and_the_daemon_reloads_it(sqlite_registry, tmp_path):
    reg = sqlite_registry
    a = make_blur_model(tmp_path / "src" / "a", size=(64, 64), pixel_threshold=0.35)
    b = make_blur_model(tmp_path / "src" / "b", size=(48, 48), pixel_threshold=0.4)
    bad = _shapes_lie(make_blur_model(tmp_path / "src" / "bad", size=(32, 32)))
    api = reg.open()  # setup through the API; `fetch`, the command under test, through the CLI
    for name, d in (("a", a), ("b", b), ("bad", bad)):
        api.add(d, name=name)
    link = tmp_path / "models" / "current"
    cfg = daemon_config(tmp_path, link, free_port())
    fetch = ("fetch", "--config", str(cfg))

    res = reg.cli(*fetch)
    assert res.returncode == 2 and "no model is assigned to line 'line-7'" in res.stderr
    api.assign("line-7", "a")
    res = reg.cli(*fetch)  # no daemon yet: installed, loaded at start
    assert res.returncode == 0, res.stderr
    assert "no daemon is listening" in res.stdout and link.is_symlink()
    digest_a = os.readlink(link)
    assert (link / "model.onnx").read_bytes() == (a / "model.onnx").read_bytes()

    d = Daemon(cfg)
    try:
        assert d.events("model_loaded")[0]["sha256"] == _sha(a)
        d.frames(5)
        api.assign("line-7", "b")
        res = reg.cli(*fetch)
        assert res.returncode == 0, res.stderr
        assert f"daemon reloaded: now running test-blur (model.onnx {_sha(b)[:12]}" in res.stdout
        reloaded = d.events("model_reloaded")[-1]
        assert reloaded["sha256"] == _sha(b) and reloaded["previous_sha256"] == _sha(a)
        digest_b = os.readlink(link)
        res = reg.cli(*fetch)
        assert res.returncode == 0 and "is already installed" in res.stdout

        api.assign("line-7", "bad")
        res = reg.cli(*fetch)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "the daemon refused bad" in res.stderr and "points back to" in res.stderr
        assert os.readlink(link) == digest_b, "the link is back on the model the daemon runs"
        assert d.events("model_reload_failed")[-1]["kept_sha256"] == _sha(b)
        d.frames(5)
        assert d.wait_event("verdict", 30, count=10)
        assert d.proc.poll() is None
    finally:
        code = d.stop()
        api.close()
    assert code == 0
    kept = {p.name for p in link.parent.iterdir() if not p.name.startswith(".")}
    assert len(kept) == 4 and {"current", digest_a, digest_b} < kept  # + the refused one, pruned at the next switch
