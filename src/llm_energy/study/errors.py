"""Pydantic's validation errors as the one line a study's author reads (`ConfigError`): the
key path as written in the YAML, the value, and what is wrong.

A field that takes one of several shapes (a number or a list of numbers, a dataset or a list
of datasets) is a union: pydantic reports one error per member (`Input should be a valid
number` for the list the user wrote, then the real problem inside it). `first_problem` keeps
the member that matches the shape of what was written, so the line names the list item and
its problem (`workload.request_rate_per_s[0]`: greater than 0)."""

from __future__ import annotations

import re
from typing import Any

from llm_energy.backends import registry

#: Union members whose type differs from the written value's report one of these first.
_SHAPE_ERRORS = ("_type", "is_instance_of", "none_required")



def _step(node: Any, item: Any) -> Any:
    """The written config's value at `item` under `node` (None where there is none)."""
    if isinstance(node, dict):
        return node.get(item)
    if isinstance(node, list) and isinstance(item, int) and item < len(node):
        return node[item]
    return None

def _tags(loc: tuple[Any, ...], data: Any) -> list[tuple[int, str]]:
    """Positions and names of the union-member tags in `loc` (`constrained-float`,
    `list[...]`, `function-after[...]`, a model's name): strings that are not keys of the data
    there (a missing key, the last item, is a key)."""
    found: list[tuple[int, str]] = []
    node = data
    for position, item in enumerate(loc):
        if isinstance(item, str) and ("[" in item or item in ("function-after", "function-before")
                                      or (node is not None and not (isinstance(node, dict) and (
                                          item in node or position == len(loc) - 1)))):
            found.append((position, item))
            continue
        node = _step(node, item)
    return found


def _value_at(loc: tuple[Any, ...], data: Any) -> Any:
    """The written value at `loc` (union tags, not being keys, are passed over)."""
    node = data
    for item in loc:
        inside_list = isinstance(node, list) and isinstance(item, int) and item < len(node)
        if (isinstance(node, dict) and item in node) or inside_list:
            node = node[item]
        elif isinstance(item, str) and not isinstance(node, (dict, list)):
            return None
    return node


def _wrong_member(error: dict[str, Any], position: int, tag: str, data: Any) -> bool:
    """Whether `error` comes from a union member whose shape is not what was written: a
    list-member error for a value that is not a list, or the reverse, or a type mismatch at
    the member itself (`Input should be a valid integer` for a list)."""
    loc = tuple(error.get("loc", ()))
    written = _value_at(loc[:position], data)
    if tag.startswith("list[") != isinstance(written, list):
        return True
    return len(loc) == position + 1 and error.get("type", "").endswith(_SHAPE_ERRORS)


def problems(errors: list[dict[str, Any]], data: Any) -> list[dict[str, Any]]:
    """`errors` without those of union members that do not match the written value's shape;
    where every member of a union refused the value's shape, its first error alone."""
    kept: list[dict[str, Any]] = []
    refused: dict[tuple[Any, ...], dict[str, Any]] = {}  # union's key path -> its first error
    for error in errors:
        loc = tuple(error.get("loc", ()))
        tags = _tags(loc, data)
        if not any(_wrong_member(error, p, t, data) for p, t in tags):
            kept.append(error)
        else:
            refused.setdefault(loc[:tags[0][0]], error)
    for union, error in refused.items():
        if not any(tuple(e.get("loc", ()))[:len(union)] == union for e in kept):
            kept.append(error)
    order = {id(e): i for i, e in enumerate(errors)}
    return sorted(kept, key=lambda e: order[id(e)])


def location(loc: tuple[Any, ...], data: Any) -> str:
    """The key path of `loc` as written: `workload.dataset[0].path`, `models[tiny].demo`."""
    tags = {position for position, _ in _tags(loc, data)}
    parts: list[str] = []
    node = data
    for position, item in enumerate(loc):
        if position in tags or item in ("function-after", "function-before"):
            continue
        if isinstance(item, int):
            name = None
            if isinstance(node, list) and item < len(node) and isinstance(node[item], dict):
                name = node[item].get("name")
            parts[-1:] = [f"{parts[-1] if parts else ''}[{name if name else item}]"]
        else:
            parts.append(str(item))
        node = _step(node, item)
    return ".".join(parts) or "<top level>"


def format_error(error: dict[str, Any], data: Any) -> str:
    """One pydantic error as one line naming the key."""
    loc = tuple(error.get("loc", ()))
    where = location(loc, data)
    kind = error.get("type", "")
    message = error.get("msg", "invalid")
    if kind == "extra_forbidden" and loc[:1] == ("backends",) and len(loc) == 2:
        return (f"unknown key '{where}': not a backend; known backends: "
                f"{', '.join(registry.names())}")
    if kind == "extra_forbidden":
        return f"unknown key '{where}': remove it or check its spelling (see config/README.md)"
    if kind == "missing":
        return f"missing key '{where}': it is required (see config/README.md)"
    message = message.removeprefix("Value error, ")
    keyed = re.match(r"^([a-z_]+(?:\.[a-z_-]+)*): (.*)$", message)
    if where == "<top level>" and keyed:
        where, message = keyed.groups()
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"invalid value for '{where}'{shown}: {message}"


def one_line(errors: list[dict[str, Any]], data: Any) -> str:
    """The first problem of a failed validation, with how many more there are."""
    found = problems(errors, data)
    more = f" (and {len(found) - 1} more problem(s))" if len(found) > 1 else ""
    return format_error(found[0], data) + more
