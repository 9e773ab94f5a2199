"""The one way we read YAML that a user (or a run directory from elsewhere) hands us: bounded in size and expansion.

Why: `yaml.safe_load` constructs no objects, but it still honours anchors and aliases, and a 1.4 KB "billion
laughs" document (nine anchors, each a list of nine aliases to the previous one) describes 9^9 values. PyYAML
itself shares the aliased objects, so loading is quick; the explosion comes one step later, when pydantic
validates the config, `--set` walks it or `yaml.safe_dump` writes it back, and every one of those treats the
shared graph as a tree - `train` then exhausts memory. A size limit alone does not help (the bomb is tiny), and
a limit on the alias count alone is too coarse (the bomb has 81 aliases), so the loader checks both, and the
number of values the document expands to, before anything is constructed:

- the file is at most `MAX_BYTES` (1 MiB; configs and alert rules are a few KB) - read with a bound, so a huge or
  endless file is refused without being read whole;
- at most `MAX_ALIASES` alias uses (`*name`), counted while the document is composed;
- the document, with every alias expanded, has at most `MAX_NODES` values (computed on the composed node graph,
  each shared node once, so the check itself is linear in the file); a self-referencing anchor is refused too;
- nesting deeper than the composer can follow is refused instead of crashing with RecursionError.

A few anchors for repeated blocks (the normal use of YAML anchors in configs) stay far below every limit.
Errors say which file and line, what limit was hit and how to fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent

MAX_BYTES = 1 << 20
MAX_ALIASES = 1_000
MAX_NODES = 100_000

class YamlLimitError(ValueError):
    """A YAML file that is too large or expands too far; the message names the file, the line and the limit."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts alias uses while composing and records which anchor names each node.

    The pure-Python loader, not libyaml's CSafeLoader: the C loader composes the whole document in C, with no
    hook to count aliases before the graph exists. Config-sized files load in milliseconds either way."""

    def __init__(self, stream, source: str):
        super().__init__(stream)
        self.source = source
        self.alias_count = 0
        self.anchor_names: dict[int, str] = {}

    def compose_node(self, parent, index):  # noqa: D401 - PyYAML hook
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            self.alias_count += 1
            if self.alias_count > MAX_ALIASES:
                raise YamlLimitError(
                    f"{self.source}:{event.start_mark.line + 1}: more than {MAX_ALIASES} alias uses (*{event.anchor}); "
                    f"YAML anchors are accepted only for a few repeated blocks - write the values out")
            return super().compose_node(parent, index)
        node = super().compose_node(parent, index)
        if getattr(event, "anchor", None) is not None:
            self.anchor_names[id(node)] = event.anchor
        return node


def _check_expansion(root: yaml.Node, source: str, anchor_names: dict[int, str]) -> None:
    """Count the values of the document with aliases expanded, without expanding them: each shared node's
    expanded size is computed once (memoised by identity), iteratively so deep documents cannot overflow."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            total = 1
            for child in _children(node):
                total += size[id(child)]
            size[key] = total
            if total > MAX_NODES:
                name = anchor_names.get(key)
                what = f"the value of anchor &{name}" if name else "this value"
                raise YamlLimitError(
                    f"{source}:{node.start_mark.line + 1}: {what} expands through aliases to more than {MAX_NODES:,} "
                    f"values (a YAML alias bomb?); use anchors only for small repeated blocks")
            continue
        if key in size:
            continue
        if key in on_path:
            raise YamlLimitError(f"{source}:{node.start_mark.line + 1}: an anchor refers to itself (a recursive "
                                 f"alias); write the value out instead")
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) not in size:
                stack.append((child, False))


def _children(node: yaml.Node):
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return ()


def load_yaml_text(text: str, source: str = "<yaml>") -> Any:
    """`yaml.safe_load` with the alias and expansion limits above; `source` names the text in errors.

    Raises YamlLimitError past a limit and yaml.YAMLError for invalid YAML (callers already explain those)."""
    if len(text) > MAX_BYTES:
        raise YamlLimitError(f"{source}: {len(text):,} characters of YAML, more than the {MAX_BYTES:,} accepted")
    loader = _BoundedLoader(text, source)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlLimitError(f"{source}: nested too deeply to read (thousands of levels); flatten the "
                                 f"document") from None
        if node is None:
            return None
        _check_expansion(node, source, loader.anchor_names)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, max_bytes: int = MAX_BYTES) -> Any:
    """Read and parse a YAML file under the limits above. The file is read with a bound, so a 10 GB file (or
    a named pipe that never ends) is refused after `max_bytes`. Raises FileNotFoundError / OSError,
    UnicodeDecodeError, yaml.YAMLError or YamlLimitError; the callers turn them into their own errors."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise YamlLimitError(f"{path}: larger than {max_bytes:,} bytes; a config or rules file is a few KB - "
                             f"check the path (is it a data file?)")
    return load_yaml_text(raw.decode("utf-8"), str(path))
