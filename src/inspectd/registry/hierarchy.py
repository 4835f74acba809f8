"""The category hierarchy (the "product category level library"): categories with parents, defined by people.

A hierarchy file is YAML, one entry per category naming its parents (none for a top category):

    categories:
      round cup: []              # a top category: level 1
      small: [round cup]         # level 2
      medium: [round cup]
      meeting cup: [small, medium]
      ceramic: [meeting cup]     # level 4
      coffee cup: [ceramic]      # level 5
      mug: [ceramic]

An upper category contains its lower ones; a category may have several parents (the example's meeting cup comes in
small and medium). A category's **level** is its depth: 1 for a top category, else 1 + the deepest parent's level.
Validation refuses, naming each problem: a parent that is not defined (with the closest defined names), a category
that is its own ancestor (the cycle, spelt out), names that differ only in case, duplicate keys, empty names and
names with a comma (the CLI takes comma-separated lists).
"""

from __future__ import annotations

import difflib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from inspectd.registry.errors import RegistryError

MAX_NAME = 200


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last one silently)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            msg = f"line {key_node.start_mark.line + 1}: {key!r} is defined twice (first on line {seen[key]})"
            raise RegistryError(msg)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: str | Path, what: str) -> object:
    """Parse a YAML file (duplicate keys refused); RegistryError naming the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        msg = f"cannot read the {what} {path}: {exc.strerror or exc}"
        raise RegistryError(msg) from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except RegistryError as exc:
        raise RegistryError(f"{path}: {exc}") from exc
    except yaml.YAMLError as exc:
        msg = f"{path} is not valid YAML: {exc}"
        raise RegistryError(msg) from exc


def check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        msg = f"{where}: a category name must be a non-empty string, got {name!r}"
        raise RegistryError(msg)
    if name != name.strip() or "," in name or len(name) > MAX_NAME or any(ord(ch) < 32 for ch in name):
        msg = (
            f"{where}: category name {name!r} is not allowed (expected at most {MAX_NAME} characters, no comma, "
            "no control characters, no leading or trailing space)"
        )
        raise RegistryError(msg)
    return name


def suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


@dataclass(frozen=True)
class Hierarchy:
    """Category name -> its parents' names (sorted); descriptions optional. Build it with `Hierarchy.build`."""

    parents: Mapping[str, tuple[str, ...]]
    descriptions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, parents: Mapping[str, Iterable[str]], descriptions: Mapping[str, str] | None = None) -> Hierarchy:
        """Validate and freeze; RegistryError naming every unknown parent, case clash or the first cycle."""
        clean: dict[str, tuple[str, ...]] = {}
        for name, ps in parents.items():
            check_name(name, f"category {name!r}")
            plist = [check_name(p, f"category {name!r} parents") for p in ps]
            if name in plist:
                msg = f"category {name!r} names itself as its parent; a category cannot contain itself"
                raise RegistryError(msg)
            if len(set(plist)) != len(plist):
                msg = f"category {name!r} names a parent twice: {plist}"
                raise RegistryError(msg)
            clean[name] = tuple(sorted(plist))
        folded: dict[str, str] = {}
        for name in sorted(clean):
            other = folded.setdefault(name.casefold(), name)
            if other != name:
                msg = f"categories {other!r} and {name!r} differ only in case; use one name"
                raise RegistryError(msg)
        unknown = [
            f"{p!r} (parent of {name!r}){suggest(p, clean)}" for name, ps in clean.items() for p in ps if p not in clean
        ]
        if unknown:
            msg = f"unknown parent categories: {'; '.join(unknown)}; every parent must be defined as a category too"
            raise RegistryError(msg)
        cycle = _find_cycle(clean)
        if cycle:
            msg = f"the hierarchy has a cycle: {' -> '.join(cycle)} (a category cannot be its own ancestor)"
            raise RegistryError(msg)
        return cls(clean, dict(descriptions or {}))

    def __contains__(self, name: object) -> bool:
        return name in self.parents

    def __len__(self) -> int:
        return len(self.parents)

    @cached_property
    def children(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {name: [] for name in self.parents}
        for name, ps in self.parents.items():
            for p in ps:
                out[p].append(name)
        return {k: tuple(sorted(v)) for k, v in out.items()}

    @cached_property
    def levels(self) -> dict[str, int]:
        """1 for a top category, else 1 + the deepest parent's level (the hierarchy is acyclic)."""
        out: dict[str, int] = {}
        for name in _topological(self.parents):
            out[name] = 1 + max((out[p] for p in self.parents[name]), default=0)
        return out

    def level(self, name: str) -> int:
        return self.levels[name]

    def distances(self, name: str, limit: int) -> dict[str, int]:
        """Categories within `limit` steps of `name` along parent links, up or down (a parent or child is 1 step, a
        sibling or grandparent 2), with their fewest steps; `name` itself at 0."""
        seen = {name: 0}
        queue = deque([name])
        while queue:
            here = queue.popleft()
            if seen[here] == limit:
                continue
            for nxt in (*self.parents[here], *self.children[here]):
                if nxt not in seen:
                    seen[nxt] = seen[here] + 1
                    queue.append(nxt)
        return seen

    def ancestors(self, name: str) -> set[str]:
        out: set[str] = set()
        todo = list(self.parents[name])
        while todo:
            p = todo.pop()
            if p not in out:
                out.add(p)
                todo.extend(self.parents[p])
        return out

    def unknown(self, names: Iterable[str]) -> list[str]:
        """The names not defined here, each with the closest defined names."""
        return [f"{n!r}{suggest(n, self.parents)}" for n in names if n not in self.parents]

    def require(self, names: Iterable[str], what: str) -> None:
        missing = self.unknown(names)
        if missing:
            hint = (
                "import a hierarchy that defines them first (`inspectd registry categories FILE`)"
                if self.parents
                else "the registry has no categories yet: import a hierarchy first "
                "(`inspectd registry categories FILE`)"
            )
            msg = f"unknown categories in {what}: {', '.join(missing)}; {hint}"
            raise RegistryError(msg)

    def as_dict(self) -> dict:
        return {
            name: {"level": self.levels[name], "parents": list(self.parents[name])}
            for name in sorted(self.parents, key=lambda n: (self.levels[n], n))
        }


def _find_cycle(parents: Mapping[str, tuple[str, ...]]) -> list[str]:
    """One cycle as [a, b, ..., a] following parent links, or [] (iterative DFS, deterministic order)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(parents):
        if root in state:
            continue
        path: list[str] = []
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(parents[root]))]
        state[root] = 1
        path.append(root)
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(parents[nxt])))
    return []


def _topological(parents: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Parents before children (Kahn's algorithm, names sorted for a deterministic order)."""
    pending = {name: len(ps) for name, ps in parents.items()}
    children: dict[str, list[str]] = {name: [] for name in parents}
    for name, ps in parents.items():
        for p in ps:
            children[p].append(name)
    ready = sorted(n for n, k in pending.items() if k == 0)
    out = []
    while ready:
        name = ready.pop(0)
        out.append(name)
        for c in children[name]:
            pending[c] -= 1
            if pending[c] == 0:
                ready.append(c)
        ready.sort()
    return out


def parse_hierarchy(raw: object, source: str) -> Hierarchy:
    """A hierarchy file's content -> Hierarchy. `categories:` maps each name to its parents: a list, one name, or
    nothing (a top category); or to a mapping with `parents:` and `description:`."""
    if not isinstance(raw, dict) or set(raw) - {"categories"} or not isinstance(raw.get("categories"), dict):
        msg = (
            f"{source}: expected a mapping with one key, `categories:`, mapping each category name to its parents "
            f"(e.g. `categories: {{round cup: [], small: [round cup]}}`), got "
            + (f"keys {sorted(map(str, raw))}" if isinstance(raw, dict) else type(raw).__name__)
        )
        raise RegistryError(msg)
    parents: dict[str, list[str]] = {}
    descriptions: dict[str, str] = {}
    for name, value in raw["categories"].items():
        where = f"{source}: category {name!r}"
        check_name(name, where)
        if isinstance(value, dict):
            extra = set(value) - {"parents", "description"}
            if extra:
                msg = f"{where}: unknown keys {sorted(map(str, extra))} (expected parents, description)"
                raise RegistryError(msg)
            descriptions[name] = str(value.get("description") or "")
            value = value.get("parents")
        if value is None:
            value = []
        elif isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            msg = f"{where}: parents must be a list of category names, one name, or empty; got {value!r}"
            raise RegistryError(msg)
        parents[name] = value
    if not parents:
        msg = f"{source}: `categories:` is empty; a hierarchy needs at least one category"
        raise RegistryError(msg)
    try:
        return Hierarchy.build(parents, descriptions)
    except RegistryError as exc:
        raise RegistryError(f"{source}: {exc}") from exc


def load_hierarchy(path: str | Path) -> Hierarchy:
    return parse_hierarchy(read_yaml(path, "hierarchy file"), str(path))
