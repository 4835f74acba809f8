"""The README stays true: its configuration reference is the one generated from the schema."""

from __future__ import annotations

from inspectd.daemon.config import Config
from inspectd.daemon.configdoc import BEGIN, END, render
from tests.support.helpers import REPO


def test_readme_configuration_reference_matches_the_schema():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(BEGIN) : readme.index(END) + len(END)]
    assert section == render(), "README is stale: run `.venv/bin/python -m inspectd.daemon.configdoc --write README.md`"


def test_every_config_key_has_a_description():
    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                yield from walk(ann, f"{prefix}{name}.")
            elif name not in ("camera", "type"):
                yield f"{prefix}{name}", field.description

    from inspectd.daemon.cameras import CAMERA_TYPES

    missing = [k for k, d in walk(Config) if not d]
    for type_name, (cfg_cls, _) in CAMERA_TYPES.items():
        missing += [f"camera({type_name}).{k}" for k, d in walk(cfg_cls) if not d]
    assert not missing, f"config keys without a description (README reference): {missing}"


def test_readme_shows_the_two_commands_first():
    readme = (REPO / "README.md").read_text()
    first_block = readme[: readme.index("## How a frame flows")]
    assert "make demo" in first_block and "make test" in first_block
