"""Reading the inventory YAML: refuse what YAML itself would silently accept.

Plain `yaml.safe_load` keeps the *last* of two equal keys, so a node block
copy-pasted under the same name replaces the first without a word. The
loader here walks the composed document before building it and refuses every
duplicated key, in any mapping, naming both lines. The same walk remembers
the line of every key, so validation errors can point at the line to edit,
and refuses URLs that carry credentials wherever they appear (secrets live
in blocks, never in a file kept in git).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import yaml

# Key path from the document's root: mapping keys (str) and list indexes (int).
Path = tuple

MERGE_TAG = "tag:yaml.org,2002:merge"
STR_TAG = "tag:yaml.org,2002:str"

# scheme://userinfo@...: '@' before the first '/', '?' or '#' after the scheme.
_URL_WITH_USERINFO = re.compile(r"^\s*(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#\s]*@[^/?#\s]*)")

# What a human calls an entry of each top-level section.
_ENTRY_KINDS = {"chains": "chain", "hosts": "host", "nodes": "node", "load_balancers": "load balancer"}


def dotted(path: Sequence) -> str:
    """nodes.erigon-1.service.name, chains.eth-main.references[0]"""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def where(path: Sequence) -> str:
    """The entry and the field a key path is about, in the operator's words.

    ("nodes", "erigon-1", "datadir") -> "node 'erigon-1', field datadir (nodes.erigon-1.datadir)"
    """
    path = list(path)
    if not path:
        return "(top level)"
    section = path[0]
    if section in _ENTRY_KINDS and len(path) >= 2:
        entry = f"{_ENTRY_KINDS[section]} {path[1]!r}"
        rest = path[2:]
        if rest == ["[key]"]:  # pydantic's loc for a refused mapping key: the entry's name itself
            return f"{entry}, its name ({section})"
        return f"{entry}, field {dotted(rest)} ({dotted(path)})" if rest else f"{entry} ({dotted(path)})"
    if len(path) >= 2:
        return f"{section}, field {dotted(path[1:])} ({dotted(path)})"
    return f"section {section}"


def redacted_url(authority_match: re.Match) -> str:
    """scheme://***@host:port of a URL with credentials: no userinfo, and no path
    either, since provider URLs carry their API key in the path."""
    host = authority_match["authority"].rpartition("@")[2]
    return f"{authority_match['scheme']}://***@{host}"


def credentials_problem(value: str) -> str | None:
    """Why `value` must not be in the inventory, or None. Never echoes the secret."""
    m = _URL_WITH_USERINFO.match(value)
    if m is None:
        return None
    return (
        f"the URL {redacted_url(m)} carries credentials; secrets never go in the inventory: "
        "put the whole URL in a Prefect Secret block and give the block's name instead, "
        "e.g. `rpc_url: {secret: mainnet-rpc}`"
    )


class InventoryLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys and credential URLs, and records
    the line of every key.

    The checks run on the composed node graph, before construction: by the
    time construct_mapping runs, merge keys (`<<: *defaults`) have been
    flattened into the mapping, and a key that overrides a merged default is
    an intended override, not a duplicate.
    """

    def __init__(self, stream, source: str) -> None:
        super().__init__(stream)
        self.source = source
        self.name = source  # PyYAML's own errors then say `in "inventory.yaml", line 3`
        self.lines: dict[Path, int] = {}
        self.problems: list[str] = []

    def construct_document(self, node):
        self._survey(node, (), set())
        return super().construct_document(node)

    def _problem(self, line: int, path: Path, text: str) -> None:
        self.problems.append(f"{self.source}:{line}: {where(path)}: {text}")

    def _survey(self, node, path: Path, seen: set[int]) -> None:
        # An aliased node is walked once (under its anchor): recursive
        # aliases would not end, and its lines are the anchor's anyway.
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == MERGE_TAG:
                    self._survey(value_node, path, seen)
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # complex keys: pydantic refuses them later
                line = key_node.start_mark.line + 1
                # (tag, text): `8545` and `"8545"` are different keys to YAML too.
                ident = (key_node.tag, key_node.value)
                child = (*path, key_node.value)
                if ident in first:
                    self._problem(
                        line, child,
                        f"duplicate key {key_node.value!r}: first at {self.source}:{first[ident]}, again at "
                        f"{self.source}:{line}; YAML would silently keep only the second, so remove or rename one",
                    )
                    continue
                first[ident] = line
                self.lines[child] = line
                self._survey(value_node, child, seen)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                self._survey(item, (*path, i), seen)
        elif isinstance(node, yaml.ScalarNode) and node.tag == STR_TAG:
            problem = credentials_problem(node.value)
            if problem:
                self._problem(node.start_mark.line + 1, path, problem)


def line_of(lines: dict[Path, int], loc: Sequence) -> int | None:
    """The line of the deepest key of `loc` that is in the file (a missing
    field points at its entry)."""
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


def read(text: str, source: str) -> tuple[object, dict[Path, int], list[str]]:
    """(data, key path -> line, problems). yaml.YAMLError for malformed YAML."""
    loader = InventoryLoader(text, source)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    return data, loader.lines, loader.problems
