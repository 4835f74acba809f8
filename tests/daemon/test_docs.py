"""The docs stay true: the configuration reference is the one generated from the schema, README.md stays short and
names every command, every link between the pages resolves, and every `inspectd` command line shown in the docs
uses only options that command has."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from inspectd.cli import build_parser
from inspectd.daemon.config import Config
from inspectd.daemon.configdoc import BEGIN, END, render
from tests.support.helpers import REPO

README = REPO / "README.md"
CONFIG_PAGE = REPO / "docs" / "configuration.md"
README_MAX_LINES = 200


def _pages() -> list[Path]:
    return [README, *sorted((REPO / "docs").rglob("*.md"))]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def _outside_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _outside_code_blocks(page.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_configuration_reference_matches_the_schema():
    page = CONFIG_PAGE.read_text()
    assert BEGIN in page and END in page, f"{CONFIG_PAGE} lost its generated-reference markers"
    section = page[page.index(BEGIN) : page.index(END) + len(END)]
    assert section == render(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m inspectd.daemon.configdoc --write "
        "docs/configuration.md`"
    )


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
    assert not missing, f"config keys without a description (docs/configuration.md reference): {missing}"


def test_readme_shows_the_two_commands_first():
    readme = README.read_text()
    first_block = readme[: readme.index("## How a frame flows")]
    assert "make demo" in first_block and "make test" in first_block


def test_readme_stays_short():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; keep it <= {README_MAX_LINES}, move detail to docs/"
    )


def test_readme_command_table_names_every_inspectd_command():
    readme = README.read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `inspectd ")]
    commands = _subcommands(build_parser())
    missing = [name for name in commands if not any(row.startswith(f"| `inspectd {name}") for row in rows)]
    assert not missing, f"README's command table has no row for: {missing}"
    label_steps = _subcommands(commands["label"])
    label_page = (REPO / "docs" / "labelling.md").read_text()
    missing = [step for step in label_steps if f"inspectd label {step}" not in label_page]
    assert not missing, f"docs/labelling.md does not show: {missing}"


def test_every_link_between_the_pages_resolves():
    broken = []
    for page in _pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", _outside_code_blocks(page.read_text())):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme_or_another_page():
    linked = set()
    for page in _pages():
        for target in re.findall(r"\]\(([^)\s#]+)", _outside_code_blocks(page.read_text())):
            linked.add((page.parent / target).resolve())
    orphans = [str(p.relative_to(REPO)) for p in _pages()[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages nobody links to: {orphans}"


def _command_lines(text: str) -> list[str]:
    """Shell lines of fenced blocks (continuations joined) and inline code spans."""
    out = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S):
        out += block.replace("\\\n", " ").splitlines()
    out += re.findall(r"`([^`\n]+)`", _outside_code_blocks(text))
    return out


def test_every_inspectd_command_line_in_the_docs_uses_existing_options():
    commands = _subcommands(build_parser())
    wrong = []
    for page in _pages():
        for line in _command_lines(page.read_text()):
            tokens = line.replace("\\|", "|").split()
            for i, token in enumerate(tokens[:-1]):
                if not (token == "inspectd" or token.endswith("/inspectd")) or tokens[i + 1] not in commands:
                    continue
                parser = commands[tokens[i + 1]]
                rest = tokens[i + 2 :]
                steps = _subcommands(parser)
                if steps and rest and rest[0] in steps:
                    parser, rest = steps[rest[0]], rest[1:]
                known = _options(parser)
                for word in rest:
                    if word in ("|", "&&", ";", "#", ">") or word.startswith("#"):
                        break
                    for part in word.split("|"):
                        opt = part.strip("[](),").split("=")[0]
                        if opt.startswith("--") and opt != "--" and opt not in known:
                            wrong.append(f"{page.relative_to(REPO)}: `{line.strip()}`: {opt}")
    assert not wrong, "options the command does not have:\n" + "\n".join(wrong)


def _code_and_pages() -> list[Path]:
    code = [f for top in ("src", "tests", "research", "bench") for f in sorted((REPO / top).rglob("*.py"))]
    return [*_pages(), *code, REPO / "config.yaml", *sorted((REPO / "systemd").glob("*"))]


def test_no_internal_jargon_in_the_docs_or_the_code():
    """The docs and the code say what a method is, not which internal source document it came from."""
    pattern = re.compile(r"\bseeds? 00\d|\bseed's\b|DESIGN\.md", re.I)
    hits = [
        f"{page.relative_to(REPO)}:{n}: {line.strip()}"
        for page in _code_and_pages()
        if page.is_file()
        for n, line in enumerate(page.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "internal references:\n" + "\n".join(hits)


def test_architecture_page_names_every_package():
    page = (REPO / "docs" / "architecture.md").read_text()
    packages = sorted(p.parent.name for p in (REPO / "src" / "inspectd").glob("*/__init__.py"))
    missing = [name for name in packages if f"{name}/" not in page]
    assert not missing, f"docs/architecture.md does not describe: {missing}"
