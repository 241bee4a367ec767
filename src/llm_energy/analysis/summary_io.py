"""Reading cells' result files for the summary, and writing/reading the summary itself.
Many small Parquet files are read on a few threads; an unreadable file is reported by path,
never fatal."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llm_energy.results import schema
from llm_energy.results.io import RUN_COLUMNS, SCHEMA_VERSION
from llm_energy.results.schema import LATENCIES


def _read_all(paths: Iterable[str | Path], read: Callable[[str | Path], pa.Table],
              ) -> tuple[list[pa.Table], list[str]]:
    """Read many small Parquet files on a few threads (Arrow releases the GIL while it
    decodes; one file at a time was most of a 10,000-cell aggregation). Order is kept;
    a file that cannot be read is reported by path, not fatal."""
    def attempt(path: str | Path) -> tuple[str | Path, pa.Table | None, str | None]:
        try:
            return path, read(path), None
        except Exception as exc:
            return path, None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    tables, problems = [], []
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        for path, table, error in pool.map(attempt, list(paths), chunksize=64):
            if error is None:
                tables.append(table)
            else:
                problems.append(f"{path}: {error}")
    return tables, problems


def _read_runs_table(path: str | Path) -> pa.Table:
    # ParquetFile.read skips the dataset layer of pq.read_table: ~1.8x faster per small file.
    table = pq.ParquetFile(path).read(use_threads=False)
    if "cell_id" not in table.column_names or "schema_version" not in table.column_names:
        raise ValueError("not a runs.parquet of llm-energy (no cell_id/schema_version)")
    versions = {int(v) for v in table.column("schema_version").unique().to_pylist() if v is not None}
    if versions - {SCHEMA_VERSION}:
        raise ValueError(f"schema_version {sorted(versions)} (expected {SCHEMA_VERSION})")
    return table


def read_runs(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    tables, problems = _read_all(paths, _read_runs_table)
    if not tables:
        return pd.DataFrame(columns=list(RUN_COLUMNS)), problems
    return _concat_to_pandas(tables), problems


def _concat_to_pandas(tables: list[pa.Table]) -> pd.DataFrame:
    """One Arrow concatenation and one `to_pandas` (a `to_pandas` per file and a `pd.concat`
    of 10,000 frames were half of a 10,000-cell aggregation). Files whose columns differ
    (a failed cell has only a few; a column all null in one file) are unified by Arrow;
    types Arrow cannot unify fall back to pandas' concatenation."""
    try:
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


_REQUEST_FIELDS = ["cell_id", "cycle", "success", "output_tokens", "first_token_s", "finish_s",
                   *(f"{name}_ms" for name in LATENCIES)]  # output_tokens: SLO-meeting tokens


def read_requests(paths: Iterable[str | Path], columns: Iterable[str] | None = None,
                  ) -> tuple[pd.DataFrame, list[str]]:
    """`columns` (default: those the statistics need) of each cell's requests.parquet; a
    missing or unreadable file only costs that cell its bootstrap intervals and batch size
    (in the export: its output lengths), and is reported."""
    fields = list(columns) if columns is not None else _REQUEST_FIELDS
    tables, problems = _read_all(
        paths, lambda path: pq.ParquetFile(path).read(columns=fields, use_threads=False))
    if not tables:
        return pd.DataFrame(columns=fields), problems
    return _concat_to_pandas(tables), problems


def requests_paths_for(runs_paths: Iterable[str | Path]) -> list[Path]:
    """Each cell's requests.parquet sits beside its runs.parquet."""
    return [Path(p).with_name("requests.parquet") for p in runs_paths]


PROBLEMS_METADATA_KEY = b"llm_energy.problems"


def write_summary(agg: Any, parquet_path: str | Path, csv_path: str | Path) -> None:
    # Unreadable result files travel with the summary (Parquet key-value metadata), so the
    # report can list them without another output file.
    table = pa.Table.from_pandas(agg.summary, preserve_index=False)
    metadata = {**(table.schema.metadata or {}),
                PROBLEMS_METADATA_KEY: json.dumps(agg.problems).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), parquet_path)
    flat = agg.summary.copy()
    for name, column in schema.RUNS.items():  # list columns (warnings, flags) as text
        if name in flat and column.agg is not None and column.agg.how == "union":
            flat[name] = flat[name].map(lambda ws: " | ".join(ws) if ws is not None else "")
    flat.to_csv(csv_path, index=False)


def read_problems(summary_path: str | Path) -> list[str]:
    """The unreadable result files recorded in a summary by `write_summary` ("path: error")."""
    metadata = pq.read_schema(summary_path).metadata or {}
    return list(json.loads(metadata.get(PROBLEMS_METADATA_KEY, b"[]")))


