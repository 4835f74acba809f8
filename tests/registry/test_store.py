"""The store: a model directory goes in once, by content, and comes back byte for byte; bad input is refused with
exit 2 and leaves nothing behind (one transaction); a damaged registry copy is never written out."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import yaml
from sqlalchemy import func, select, text

from inspectd.registry import tables as t
from inspectd.registry.errors import RegistryError
from inspectd.registry.hierarchy import parse_hierarchy
from tests.registry.conftest import CUPS
from tests.support.helpers import make_blur_model


def _counts(reg) -> dict:
    with reg.read() as conn:
        return {
            name: conn.execute(select(func.count()).select_from(tab)).scalar()
            for name, tab in t.metadata.tables.items()
        }


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def reg(registry):
    r = registry.open()
    r.import_hierarchy(parse_hierarchy(yaml.safe_load(CUPS), "cups"))
    yield r
    r.close()


def test_a_model_comes_back_byte_for_byte_and_is_stored_once(reg, tmp_path):
    m = make_blur_model(tmp_path / "m", size=(32, 32))
    (m / "members").mkdir()
    (m / "members" / "notes.txt").write_text("a file in a subfolder")
    (m / ".manifest.x.tmp").write_text("an interrupted write's leftover: not part of the model")
    first = reg.add(m, name="cup", categories=["mug", "small"])
    assert first.created and first.model.categories == ("mug", "small")
    again = reg.add(m)  # the same directory again: nothing changes
    assert not again.created and again.model.id == first.model.id
    copy = tmp_path / "copy"
    shutil.copytree(m, copy)
    (copy / "members" / "notes.txt").write_text("changed")
    other = reg.add(copy, name="cup-2")  # shares manifest.json and model.onnx with the first: stored once
    assert other.model.digest != first.model.digest and other.model.identity == first.model.identity
    n = _counts(reg)
    assert (n["models"], n["model_files"], n["blobs"]) == (2, 6, 4)
    row, out = reg.export("cup", tmp_path / "out")
    expected = {k: v for k, v in _files(m).items() if not k.startswith(".")}
    assert _files(out) == expected and row.digest == first.model.digest
    d = reg.details(first.model.digest[:10])
    assert d["name"] == "cup" and d["category_levels"] == {"mug": 5, "small": 2}
    assert [f["path"] for f in d["files"]] == ["manifest.json", "members/notes.txt", "model.onnx"]


def test_a_fine_tuned_model_finds_its_parent_by_the_manifests_parent_sha(reg, tmp_path):
    parent = make_blur_model(tmp_path / "parent", size=(32, 32))
    child = make_blur_model(tmp_path / "child", size=(40, 40))
    raw = json.loads((child / "manifest.json").read_text())
    raw["training"]["parent"] = {"onnx_sha256": json.loads((parent / "manifest.json").read_text())["onnx"]["sha256"]}
    (child / "manifest.json").write_text(json.dumps(raw))
    reg.add(parent, name="base")
    row = reg.add(child, name="child").model
    assert row.parent_name == "base"
    assert reg.details("child")["lineage"] == ["base"] and reg.details("base")["children"] == ["child"]


def test_refused_adds_leave_nothing_behind(registry, reg, tmp_path):
    good = make_blur_model(tmp_path / "good", size=(32, 32))
    before = _counts(reg)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"\0")
    res = registry.cli("add", str(bad))  # the CLI's exit code once; the other cases through the API
    assert res.returncode == 2 and "has sha256" in res.stderr and "the file was changed or corrupted" in res.stderr
    cases = [
        ({"model_dir": good, "categories": ["mug", "cermic"]}, "'cermic' (did you mean 'ceramic'?)"),
        ({"model_dir": tmp_path / "nowhere"}, "does not exist"),
        ({"model_dir": good, "parent": "no-such-model"}, "no model named 'no-such-model'"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(RegistryError, match=re.escape(expected)):
            reg.add(**kwargs)
    linked = tmp_path / "linked"
    shutil.copytree(good, linked)
    os.symlink("/etc/hostname", linked / "extra")
    with pytest.raises(RegistryError, match="is a symbolic link"):
        reg.add(linked)
    assert _counts(reg) == before
    reg.add(good, name="taken")
    with pytest.raises(RegistryError, match="already registered as 'taken'"):
        reg.add(good, name="other-name")
    with pytest.raises(RegistryError, match="is taken by another model"):
        reg.add(make_blur_model(tmp_path / "g2", size=(48, 48)), name="taken")
    wrong = {"model_sha256": "f" * 64, "image_auroc": 0.9}
    with pytest.raises(RegistryError, match="the evaluation is of model ffffffffffff"):
        reg.add(make_blur_model(tmp_path / "g3", size=(56, 56)), name="g3", evaluation=wrong)
    assert _counts(reg)["models"] == before["models"] + 1


def test_a_damaged_registry_copy_is_never_written_out(registry, reg, tmp_path):
    reg.add(make_blur_model(tmp_path / "m", size=(32, 32)), name="cup")
    with reg.write() as conn:
        sha = conn.execute(select(t.model_files.c.sha256).where(t.model_files.c.path == "model.onnx")).scalar()
        conn.execute(t.blobs.update().where(t.blobs.c.sha256 == sha).values(data=b"not the model"))
    res = registry.cli("export", "cup", str(tmp_path / "out"))
    assert res.returncode == 2 and "the registry database is damaged; nothing was written" in res.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    res = registry.cli("export", "cup", str(tmp_path / "full"))
    assert res.returncode == 2 and "not an empty directory" in res.stderr


def test_a_hierarchy_import_is_all_or_nothing(registry, reg, tmp_path):
    reg.add(make_blur_model(tmp_path / "m", size=(32, 32)), name="cup", categories=["mug"])
    before = reg.hierarchy().as_dict()
    (tmp_path / "drops-mug.yaml").write_text("categories:\n  round cup: []\n  small: [round cup]\n")
    res = registry.cli("categories", str(tmp_path / "drops-mug.yaml"))
    assert res.returncode == 2 and "drops categories that models are tagged with: 'mug' (models cup)" in res.stderr
    (tmp_path / "cycle.yaml").write_text(CUPS.replace("round cup: []", "round cup: [mug]"))
    res = registry.cli("categories", str(tmp_path / "cycle.yaml"))
    assert res.returncode == 2 and "cycle" in res.stderr
    assert reg.hierarchy().as_dict() == before
    (tmp_path / "more.yaml").write_text(CUPS + "  plastic: [meeting cup]\n  steel-old: [steel]\n")
    res = registry.cli("categories", str(tmp_path / "more.yaml"))
    assert res.returncode == 0 and "11 categories on 5 levels" in res.stdout and "added 2" in res.stdout, res.stderr
    assert reg.hierarchy().level("steel-old") == 5


def test_a_line_runs_its_newest_assignment(registry, reg, tmp_path):
    a = reg.add(make_blur_model(tmp_path / "a", size=(32, 32)), name="a").model
    reg.add(make_blur_model(tmp_path / "b", size=(40, 40)), name="b")
    reg.assign("line-7", "a")
    reg.assign("line-8", "a")
    reg.assign("line-7", "b")
    assert reg.assigned("line-7").name == "b" and reg.assigned("line-8").name == "a"
    assert {r.name: r.lines for r in reg.models()} == {"a": ("line-8",), "b": ("line-7",)}
    assert [x["line"] for x in reg.details("a")["assignments"]] == ["line-7", "line-8"]
    res = registry.cli("assign", "line-9", a.digest[:4])  # too short to be a prefix
    assert res.returncode == 2 and "no model named" in res.stderr
    with pytest.raises(RegistryError, match="no model is assigned to line 'line-9'"):
        reg.assigned("line-9")
    with pytest.raises(RegistryError, match="line name"):
        reg.assign("bad\nline", "a")
    with reg.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM assignments")).scalar() == 3
