"""The YAML loader for recipes, which are often copied from the internet: safe, and stricter than PyYAML's
SafeLoader. It refuses duplicate keys, aliases (billion laughs) and custom tags, stops nesting bombs at
``MAX_DEPTH`` while composing, and turns scalar conversion errors into YAML errors with a line number."""

from __future__ import annotations

from typing import Any

import yaml

MAX_DEPTH = 20


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, aliases (billion laughs) and custom tags."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:  # `? [a, b]` keys: PyYAML would fail later with a bare TypeError
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain values, not lists or mappings", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


def _compose_node_without_aliases(self: StrictLoader, parent: Any, index: Any) -> Any:
    # Aliases are how "billion laughs" documents explode in memory; a recipe never needs one.
    if self.check_event(yaml.events.AliasEvent):
        event = self.peek_event()
        raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in recipes",
                                          event.start_mark)
    # Stop a nesting bomb at the cap while composing: events are parsed lazily, so the rest of the file is
    # never scanned. Letting PyYAML recurse until RecursionError took seconds per file (and more under load).
    depth = getattr(self, "_depth", 0)
    if depth > MAX_DEPTH:
        raise yaml.composer.ComposerError(None, None, f"YAML nested deeper than {MAX_DEPTH} levels",
                                          self.peek_event().start_mark)
    self._depth = depth + 1
    try:
        return yaml.composer.Composer.compose_node(self, parent, index)
    finally:
        self._depth = depth


def _checked(constructor: Any, kind: str) -> Any:
    """Scalars whose conversion raises ValueError (`2020-13-45`, a 5000-digit int) become YAML errors with a
    line number, instead of escaping the loader as a bare ValueError (a traceback at the CLI)."""

    def construct(loader: StrictLoader, node: yaml.ScalarNode) -> Any:
        try:
            return constructor(loader, node)
        except ValueError as exc:
            # Drop CPython's "use sys.set_int_max_str_digits()" advice: the fix is in the recipe.
            reason = str(exc).split(";")[0]
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {str(node.value)[:40]!r} as {kind} ({reason})", node.start_mark
            ) from None

    return construct


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
StrictLoader.add_constructor("tag:yaml.org,2002:int", _checked(yaml.SafeLoader.construct_yaml_int, "an integer"))
StrictLoader.add_constructor("tag:yaml.org,2002:float", _checked(yaml.SafeLoader.construct_yaml_float, "a number"))
StrictLoader.add_constructor("tag:yaml.org,2002:timestamp",
                              _checked(yaml.SafeLoader.construct_yaml_timestamp, "a date"))
StrictLoader.compose_node = _compose_node_without_aliases  # type: ignore[method-assign]


def nesting_depth(value: Any, level: int = 0) -> int:
    """How deeply a loaded document nests (stops counting past MAX_DEPTH)."""
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((nesting_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((nesting_depth(v, level + 1) for v in value), default=level + 1)
    return level
