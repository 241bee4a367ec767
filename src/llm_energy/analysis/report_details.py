"""Per cell, what the report's detail view draws: the output-length histogram of its
successful requests and its power samples per device (strided), with the cycle and
steady-state windows and the phases before the cycles, read from the cell's result files
(`report_data.build` embeds them). At 10,000 cells this reading is most of the report's time:
pyarrow and numpy only, a few columns of each file, in worker processes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llm_energy.analysis.export import histogram

HISTOGRAM_BINS = 20
#: Power samples kept per device and cell (evenly strided), so 10,000 cells stay a page a
#: browser opens.
MAX_POWER_POINTS = 120


def _strided(values: np.ndarray, step: int) -> list[float]:
    return [round(float(v), 3) for v in values[::step]]


def shading() -> dict[str, str]:
    """The power chart's shading colours (CSS), the same as the paper figure's: each phase
    outside the cycles (load, idle, warmup), the measured cycles, their steady state."""
    from matplotlib.colors import to_hex

    from llm_energy.analysis.cell_figures import CYCLE_COLOUR, PHASE_COLOURS, STEADY_COLOUR

    return {**{p: to_hex(c) for p, c in PHASE_COLOURS.items()},
            "cycle": to_hex(CYCLE_COLOUR), "steady state": to_hex(STEADY_COLOUR)}


def cell_detail(cell_dir: Path) -> dict[str, Any]:
    """`_cell_detail`, or what of it could be read: a result file that cannot be read (a
    truncated or foreign Parquet file; the summary reports it too) leaves its part of the
    detail empty and is named in `unreadable` ("file: error") instead of failing the report."""
    try:
        return _cell_detail(cell_dir)
    except Exception as exc:  # any reader error: report it, build the rest
        partial: dict[str, Any] = {"lengths": None, "power": [], "windows": [], "phases": []}
        for name in ("requests.parquet", "timeseries.parquet", "runs.parquet"):
            try:
                import pyarrow.parquet as pq

                pq.read_metadata(Path(cell_dir) / name)
            except FileNotFoundError:
                continue
            except Exception as file_exc:
                partial.setdefault("unreadable", []).append(
                    f"{name}: {type(file_exc).__name__}: {file_exc}")
        if "unreadable" not in partial:
            partial["unreadable"] = [f"{type(exc).__name__}: {exc}"]
        return partial


def _read(path: Path, columns: Iterable[str]) -> Any:
    """The columns of a Parquet file that it has (ParquetFile.read: no dataset layer, ~2x
    faster than pq.read_table per small file); None when the file is not there."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    file = pq.ParquetFile(path)
    names = set(file.schema_arrow.names)
    return file.read(columns=[c for c in columns if c in names], use_threads=False)


def _numpy(table: Any, name: str, dtype: Any = float) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(dtype)


def _strings(table: Any, name: str) -> np.ndarray:
    """A text column as a numpy array of str ("" for none), via its dictionary."""
    import pyarrow.compute as pc

    column = pc.fill_null(table.column(name).cast("string"), "").combine_chunks().dictionary_encode()
    return np.asarray(column.dictionary.to_pylist(), dtype=object)[column.indices.to_numpy()] \
        if len(column) else np.asarray([], dtype=object)


def _cell_detail(cell_dir: Path) -> dict[str, Any]:
    """One cell's output-length histogram (successful requests, all cycles) and its power
    samples per device (strided to MAX_POWER_POINTS) with the cycle and steady windows and
    the spans of the phases before the cycles (`phases`: [phase, first t, last t]).
    Read with pyarrow and numpy (no pandas): at 10,000 cells this is most of the report's time."""
    from llm_energy.analysis.cell_figures import PHASE_COLOURS, WINDOW_COLUMNS, windows_of

    out: dict[str, Any] = {"lengths": None, "power": [], "windows": [], "phases": []}
    req = _read(Path(cell_dir) / "requests.parquet", ["output_tokens", "success"])
    if req is not None:
        ok = req.column("success").fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
        lengths = _numpy(req, "output_tokens")[ok]
        lengths = lengths[~np.isnan(lengths)]
        if len(lengths):
            out["lengths"] = histogram(lengths, np.histogram_bin_edges(lengths, bins=HISTOGRAM_BINS))
    table = _read(Path(cell_dir) / "timeseries.parquet",
                  ["t_s", "device", "power_w", "power_source", "phase"])
    if table is None:
        return out
    t_all, w = _numpy(table, "t_s"), _numpy(table, "power_w")
    devices, sources = _strings(table, "device"), _strings(table, "power_source")
    phases = _strings(table, "phase")
    keep = ~np.isnan(w)
    order = np.argsort(t_all[keep], kind="stable")
    t, w, devices, sources = (a[keep][order] for a in (t_all, w, devices, sources))
    for device in sorted(set(devices)):
        mine = devices == device
        step = max(1, -(-int(mine.sum()) // MAX_POWER_POINTS))
        source = next((s for s in sources[mine] if s), "")
        out["power"].append({"device": str(device), "source": str(source),
                             "t_s": _strided(t[mine], step), "power_w": _strided(w[mine], step)})

    def span(phase: str) -> tuple[float, float] | None:
        times = t_all[phases == phase]
        times = times[~np.isnan(times)]
        return (float(times.min()), float(times.max())) if len(times) else None

    out["phases"] = [[p, *s] for p in sorted(PHASE_COLOURS) if (s := span(p)) is not None]
    runs = _read(Path(cell_dir) / "runs.parquet", WINDOW_COLUMNS)
    if runs is not None:
        out["windows"] = [[float(a), float(b), None if s is None else [float(x) for x in s]]
                          for a, b, s in windows_of(runs.to_pylist(),
                                                    lambda p: (span(p) or (None,))[0])]
    return out


#: From this many cells on, the details are read in `workers` processes.
PARALLEL_FROM = 200


def cell_details(cell_dirs: Mapping[str, Path], workers: int = 1) -> dict[str, dict[str, Any]]:
    """`cell_detail` of every cell (cell id → detail), in worker processes for many cells."""
    ids, dirs = [c for c in sorted(cell_dirs)], [cell_dirs[c] for c in sorted(cell_dirs)]
    if workers <= 1 or len(ids) < PARALLEL_FROM:
        return dict(zip(ids, map(cell_detail, dirs)))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent already runs Arrow's thread pools.
    with ProcessPoolExecutor(max_workers=workers,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip(ids, pool.map(cell_detail, dirs, chunksize=64)))
