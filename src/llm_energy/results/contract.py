"""docs/data-contract.md from the column registry: the prose is kept, the column tables
between `<!-- BEGIN GENERATED: name -->` and `<!-- END GENERATED: name -->` markers are
written from `results.schema` (`llm-energy data-contract --write docs/data-contract.md`;
`--check` exits 1 when the file is stale)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import pyarrow as pa

from llm_energy.results import schema
from llm_energy.results.schema import Column

_MARKED = re.compile(r"(<!-- BEGIN GENERATED: (\w+) -->\n)(.*?)(<!-- END GENERATED: \2 -->)", re.S)


def _type(dtype: pa.DataType | None) -> str:
    if dtype is None:
        return ""
    if pa.types.is_list(dtype):
        return f"list<{_type(dtype.value_type)}>"
    return {"double": "float64", "bool": "bool"}.get(str(dtype), str(dtype))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(columns: Iterable[Column], summary: bool) -> str:
    head = "| column | type | unit | kind | meaning |" + (" summary across cycles |" if summary else "")
    rule = "|---|---|---|---|---|" + ("---|" if summary else "")
    lines = [head, rule]
    for c in columns:
        meaning = c.description + (f" ({c.optional} only)" if c.optional else "")
        row = [f"`{c.name}`", _type(c.dtype), c.unit, c.kind.value, meaning]
        if summary:
            how = "" if c.agg is None else c.agg.describe(c.name)
            if c.name == "status":
                how = "`ok` when every row is"
            if c.name == "cycle":
                how = "count of successful cycles → `cycles`"
            if c.interval:
                how += "; interval" + (" (log scale)" if c.positive else "")
            if c.export:
                how += f"; ML.ENERGY `{c.export}`" + (
                    f" ({c.export_window.replace('_', '-')} window)" if c.export_window else "")
            row.append(how)
        lines.append("| " + " | ".join(_cell(x) for x in row) + " |")
    return "\n".join(lines) + "\n"


def _settings() -> str:
    from llm_energy.backends import registry
    from llm_energy.study.config import GPU_AXES

    lines = ["| backend | setting columns |", "|---|---|",
             f"| every backend, when the study sets them (`measurement`) | "
             f"{', '.join(f'`{k}`' for k in GPU_AXES)} |"]
    for spec in registry.specs().values():
        lines.append(f"| `{spec.name}` | {', '.join(f'`{f}`' for f in spec.setting_names())} |")
    return "\n".join(lines) + "\n"


def _summary() -> str:
    lines = [_table(schema.SUMMARY.values(), summary=False).rstrip("\n"), "",
             "| suffix | on | meaning |", "|---|---|---|"]
    for suffix, text in schema.INTERVAL_SUFFIXES.items():
        lines.append(f"| `{suffix}` | metrics with an interval (above) | {text} |")
    for suffix, text in schema.BOOTSTRAP_SUFFIXES.items():
        lines.append(f"| `{suffix}` | `<latency>_ms_p<q>` | {text} |")
    return "\n".join(lines) + "\n"


SECTIONS: dict[str, Callable[[], str]] = {
    "runs": lambda: _table(schema.RUNS.values(), summary=True),
    "settings": _settings,
    "derived": lambda: _table(schema.DERIVED.values(), summary=True),
    "requests": lambda: _table(schema.REQUESTS.values(), summary=False),
    "timeseries": lambda: _table(schema.TIMESERIES.values(), summary=False),
    "summary": _summary,
}


def render(template: str) -> str:
    """`template` with every marked section regenerated (unknown section names raise)."""
    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in SECTIONS:
            raise KeyError(f"no generated section named {name!r} (known: {', '.join(SECTIONS)})")
        return match.group(1) + SECTIONS[name]() + match.group(4)

    return _MARKED.sub(replace, template)
