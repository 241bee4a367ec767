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

SCHEMA_VERSION = 1

_F, _I, _S = pa.float64(), pa.int64(), pa.string()
_PCT = [f"{m}_ms_p{q}" for m in ("ttft", "itl", "tpot", "e2e") for q in (50, 90, 95, 99)]

RUN_COLUMNS: dict[str, pa.DataType] = {
    "schema_version": _I, "cell_id": _S, "cycle": _I, "model": _S, "backend": _S,
    "device": _S, "device_name": _S, "status": _S, "error": _S, "warnings": pa.list_(_S),
    "gpu_energy_j": _F, "gpu_energy_source": _S, "cpu_energy_j": _F, "cpu_energy_source": _S,
    "dram_energy_j": _F, "dram_energy_source": _S, "total_energy_j": _F, "energy_source": _S,
    "idle_power_w": _F, "net_energy_j": _F, "duration_s": _F,
    "steady_state_duration_s": _F, "steady_state_energy_j": _F, "steady_state_output_tokens": _I,
    # Window edges for plots: cycle start on the timeseries clock, steady state on the cycle clock.
    "cycle_start_s": _F, "steady_state_start_s": _F, "steady_state_end_s": _F,
    # Which steady-state rule made the window; ML.ENERGY's average batch and per-cycle checks.
    "steady_state_rule": _S, "avg_batch_size": _F, "mlenergy_flags": pa.list_(_S),
    "mlenergy_valid": pa.bool_(),
    "input_tokens": _I, "output_tokens": _I, "requests": _I,
    "energy_per_output_token_j": _F, "energy_per_request_j": _F, "output_tokens_per_s": _F,
    "avg_power_w": _F, **{name: _F for name in _PCT},
    "flops_per_token": _F, "achieved_tflops": _F, "mfu": _F, "peak_memory_mb": _F,
    "load_duration_s": _F, "load_energy_j": _F, "warmup_runs": _I,
    # Measurement validity: how the idle baseline was obtained (measured/cached/disabled),
    # GPU energy from integrated NVML power (cross-check of the counter), start temperature.
    "idle_baseline": _S, "gpu_power_integral_j": _F, "preflight_temperature_c": _F,
}

REQUEST_COLUMNS: dict[str, pa.DataType] = {
    "schema_version": _I, "cell_id": _S, "cycle": _I, "request_id": _I,
    "input_tokens": _I, "output_tokens": _I, "arrival_s": _F, "first_token_s": _F,
    "finish_s": _F, "ttft_ms": _F, "tpot_ms": _F, "e2e_ms": _F, "itl_ms": pa.list_(_F),
    "energy_j": _F, "success": pa.bool_(),
}

TIMESERIES_COLUMNS: dict[str, pa.DataType] = {
    "schema_version": _I, "cell_id": _S, "t_s": _F, "device": _S, "power_w": _F,
    "power_source": _S, "temperature_c": _F, "utilization_pct": _F, "memory_mb": _F,
    "sm_clock_mhz": _F, "phase": _S, "throttle_reasons": _I,
}

CELL_FILES = ("requests.parquet", "timeseries.parquet", "provenance.json", "runs.parquet")


def table(rows: list[dict[str, Any]], columns: dict[str, pa.DataType]) -> pa.Table:
    """Rows → table with the contract's columns and types first, extra columns after."""
    extra: list[str] = []
    for row in rows:
        extra.extend(k for k in row if k not in columns and k not in extra)
    arrays, fields = [], []
    for name, dtype in columns.items():
        values = [SCHEMA_VERSION if name == "schema_version" else row.get(name) for row in rows]
        arrays.append(pa.array(values, type=dtype))
        fields.append(pa.field(name, dtype))
    for name in extra:
        arr = pa.array([row.get(name) for row in rows])
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields,
                                metadata={"schema_version": str(SCHEMA_VERSION)}))


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
                  lambda p: pq.write_table(table(requests, REQUEST_COLUMNS), p))
    _atomic_write(out / "timeseries.parquet",
                  lambda p: pq.write_table(table(timeseries, TIMESERIES_COLUMNS), p))
    text = json.dumps({"schema_version": SCHEMA_VERSION, **provenance}, indent=2, default=str)
    _atomic_write(out / "provenance.json", lambda p: Path(p).write_text(text))
    _atomic_write(out / "runs.parquet", lambda p: pq.write_table(table(runs, RUN_COLUMNS), p))
