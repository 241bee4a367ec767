"""The per-cell data contract and its atomic writer.

Each cell directory holds `runs.parquet`, `requests.parquet`, `timeseries.parquet` and
`provenance.json`. Files are written to a temporary name and renamed into place, with
`runs.parquet` last: a cell directory without it is incomplete, whatever else is there."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llm_energy.results import schema
from llm_energy.results.schema import SCHEMA_VERSION

# The contract's columns and types, from the column registry (`results.schema`).
RUN_COLUMNS: dict[str, pa.DataType] = schema.arrow_columns(schema.RUNS)
REQUEST_COLUMNS: dict[str, pa.DataType] = schema.arrow_columns(schema.REQUESTS)
TIMESERIES_COLUMNS: dict[str, pa.DataType] = schema.arrow_columns(schema.TIMESERIES)

CELL_FILES = ("requests.parquet", "timeseries.parquet", "provenance.json", "runs.parquet")


def table(rows: list[dict[str, Any]], columns: dict[str, pa.DataType],
          optional: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Rows → table with the contract's columns and types first, then the `optional`
    columns some row has (declared type), then any other columns (settings: inferred type)."""
    extra: list[str] = []
    for row in rows:
        extra.extend(k for k in row if k not in columns and k not in extra)
    typed = {**columns, **{k: (optional or {})[k] for k in extra if k in (optional or {})}}
    arrays, fields = [], []
    for name, dtype in typed.items():
        values = [SCHEMA_VERSION if name == "schema_version" else row.get(name) for row in rows]
        arrays.append(pa.array(values, type=dtype))
        fields.append(pa.field(name, dtype))
    for name in (k for k in extra if k not in typed):
        arr = pa.array([row.get(name) for row in rows])
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields,
                                metadata={"schema_version": str(SCHEMA_VERSION)}))


def _optional(columns: dict[str, schema.Column]) -> dict[str, pa.DataType]:
    return {n: c.dtype for n, c in columns.items() if c.optional is not None}


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_cell(out_dir: str | os.PathLike, runs: list[dict[str, Any]],
               requests: list[dict[str, Any]], timeseries: list[dict[str, Any]],
               provenance: dict[str, Any]) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "requests.parquet",
                  lambda p: pq.write_table(table(requests, REQUEST_COLUMNS, _optional(schema.REQUESTS)), p))
    _atomic_write(out / "timeseries.parquet",
                  lambda p: pq.write_table(table(timeseries, TIMESERIES_COLUMNS,
                                                     _optional(schema.TIMESERIES)), p))
    text = json.dumps({"schema_version": SCHEMA_VERSION, **provenance}, indent=2, default=str)
    _atomic_write(out / "provenance.json", lambda p: Path(p).write_text(text))
    _atomic_write(out / "runs.parquet", lambda p: pq.write_table(table(runs, RUN_COLUMNS, _optional(schema.RUNS)), p))
