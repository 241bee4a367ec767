"""Per-cell figures: power over time with the measured cycles and their steady-state windows
shaded, drawn for many cells at once (in worker processes) and cached by content, in the
paper style of `figures`."""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from llm_energy.analysis import figure_style, figures
from llm_energy.analysis.figures import (
    DOUBLE_COLUMN_IN,
    FORMATS,
    OKABE_ITO,
    STYLE,
    _empty,
    cell_label,
    plt,
    save,
)

PHASE_COLOURS = {"load": "0.92", "idle": "#e6f0f8", "warmup": "#fdf2dc"}
#: The measured cycles' shading: a hue of its own (not idle's blue), steady state darker.
CYCLE_COLOUR, STEADY_COLOUR = OKABE_ITO[4], OKABE_ITO[2]


#: The runs.parquet columns `cycle_windows` reads.
WINDOW_COLUMNS = ("cycle", "status", "cycle_start_s", "duration_s", "steady_state_start_s",
                  "steady_state_end_s")


def _missing(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


def windows_of(runs: Iterable[Mapping[str, Any]], phase_start: Callable[[str], float | None],
               ) -> list[tuple[float, float, tuple[float, float] | None]]:
    """`cycle_windows` of runs given as records (WINDOW_COLUMNS); `phase_start("cycle<k>")`:
    the first sample time of a phase (for files from before cycle_start_s existed)."""
    cycles = sorted((r for r in runs if r.get("status") == "ok" and not _missing(r.get("cycle"))),
                    key=lambda r: r["cycle"])
    windows: list[tuple[float, float, tuple[float, float] | None]] = []
    for r in cycles:
        start = r.get("cycle_start_s")
        if _missing(start):
            # Files from before cycle_start_s existed: the phase labels bound the cycle.
            start = phase_start(f"cycle{int(r['cycle'])}")
            if start is None:
                continue
        s0, s1 = r.get("steady_state_start_s"), r.get("steady_state_end_s")
        steady = None if _missing(s0) else (start + s0, start + s1)
        windows.append((start, start + r["duration_s"], steady))
    return windows


def cycle_windows(runs: pd.DataFrame, ts: pd.DataFrame) -> list[tuple[float, float, tuple[float, float] | None]]:
    """(cycle start, cycle end, (steady start, steady end) or None) of each measured cycle, on
    the timeseries clock (seconds from model load)."""
    def phase_start(phase: str) -> float | None:
        times = ts[ts["phase"] == phase]["t_s"]
        return None if times.empty else times.min()

    records = runs.to_dict("records") if len(runs) else []
    return windows_of(records, phase_start)


def power_timeseries(runs: pd.DataFrame, timeseries: pd.DataFrame, stem: Path,
                     title: str | None = None) -> list[Path]:
    """Power per device over the whole cell (load, idle, warmup, cycles), and the measured
    cycles zoomed in, each cycle shaded and its steady-state window shaded darker."""
    ts = timeseries[timeseries["power_w"].notna()].sort_values("t_s")
    windows = cycle_windows(runs, ts)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=DOUBLE_COLUMN_IN,
                                 gridspec_kw={"width_ratios": [3, 2]})
        for i, ax in enumerate(axes):
            if ts.empty:
                _empty(ax, "no power samples")
                continue
            for device, group in ts.groupby("device", sort=True):
                source = group["power_source"].dropna()
                label = f"{device}" + (f" ({source.iloc[0]})" if len(source) else "")
                ax.plot(group["t_s"], group["power_w"], marker="." if i else None,
                        markersize=2, label=label)
            if i == 0:
                for phase, colour in PHASE_COLOURS.items():
                    times = ts[ts["phase"] == phase]["t_s"]
                    if len(times):
                        ax.axvspan(times.min(), times.max(), color=colour, zorder=0, lw=0,
                                   label=phase)
            for j, (a, b, steady) in enumerate(windows):
                ax.axvspan(a, b, color=CYCLE_COLOUR, alpha=0.15, lw=0, zorder=0,
                           label="cycle" if j == 0 else None)
                if steady is not None:
                    ax.axvspan(*steady, color=STEADY_COLOUR, alpha=0.35, lw=0, zorder=0,
                               label="steady state" if j == 0 else None)
            if i == 1 and windows:
                span = windows[-1][1] - windows[0][0]
                ax.set_xlim(windows[0][0] - 0.05 * span - 0.05, windows[-1][1] + 0.05 * span + 0.05)
                ax.set_title("measured cycles")
            ax.set_xlabel("Time since model load (s)")
            ax.set_ylabel("Power (W)")
        if title:
            fig.suptitle(title, fontsize=8)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        if not ts.empty:
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, frameon=False, fontsize=6, ncol=len(labels),
                       loc="lower center")
        if ts["power_source"].fillna("").str.contains("estimate").any():
            fig.text(0.99, 0.01, "power: estimate", ha="right", va="bottom", fontsize=6, color="0.4")
        return save(fig, stem)


def power_stem(out_dir: Path, cell_id: str) -> Path:
    return Path(out_dir) / "power" / cell_id


@functools.lru_cache(maxsize=1)
def _code_digest() -> bytes:
    """This module and the style it draws with."""
    return hashlib.sha256(b"".join(Path(m.__file__).read_bytes()
                                   for m in (sys.modules[__name__], figures, figure_style))).digest()


def cell_figure_key(cell_dir: Path) -> str:
    """Changes when the cell's result files or the figure code change."""
    digest = hashlib.sha256(_code_digest())
    for name in ("runs.parquet", "timeseries.parquet"):
        stat = (Path(cell_dir) / name).stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def draw_cell(cell_dir: Path, stem: Path) -> list[Path]:
    """The power figure of one cell directory (raises when its files are unreadable)."""
    runs = pd.read_parquet(Path(cell_dir) / "runs.parquet")
    timeseries = pd.read_parquet(Path(cell_dir) / "timeseries.parquet")
    if "model" not in runs.columns:
        raise ValueError("not a runs.parquet of llm-energy")
    first: Any = runs.iloc[0] if len(runs) else None
    title = None if first is None else f"{first['model']} / {cell_label(first)} ({Path(cell_dir).name})"
    return power_timeseries(runs, timeseries, stem, title)


def _draw_cell_or_error(cell_dir: Path, stem: Path) -> list[Path] | str:
    try:
        return draw_cell(cell_dir, stem)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _place(cached: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(cached, target)
    except OSError:  # another file system, or no hard links: a copy
        shutil.copyfile(cached, target)


def draw_cells(cell_dirs: Sequence[Path], out_dir: Path, cache_dir: Path | None = None,
               workers: int = 1, log: Callable[[str], None] = print) -> list[Path]:
    """One power figure per cell directory that has runs and timeseries, in
    `out_dir/power/<cell_id>.<fmt>`.

    With `cache_dir`, a cell whose result files (and this module) have not changed since its
    figure was drawn is not drawn again: Snakemake deletes the figure directory before every
    rerun, and redrawing 1,000 unchanged cells costs ~10 min. `workers` > 1 draws in
    that many processes."""
    out_power = Path(out_dir, "power")
    out_power.mkdir(parents=True, exist_ok=True)
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    stems: dict[Path, Path] = {}
    todo: list[tuple[Path, Path]] = []
    for cell_dir in map(Path, cell_dirs):
        try:
            key = cell_figure_key(cell_dir)
        except OSError as exc:
            log(f"no power figure for {cell_dir}: {type(exc).__name__}: {exc}")
            continue
        stem = (Path(cache_dir) / f"{cell_dir.name}-{key}" if cache_dir is not None
                else power_stem(out_dir, cell_dir.name))
        stems[cell_dir] = stem
        if cache_dir is None or not all(stem.with_suffix(f".{f}").is_file() for f in FORMATS):
            todo.append((cell_dir, stem))
    if todo:
        log(f"drawing {len(todo)} power figure(s), {len(stems) - len(todo)} unchanged "
            f"(cached){f', {workers} processes' if workers > 1 and len(todo) > 1 else ''}")
    failed: set[Path] = set()
    for done, ((cell_dir, _), result) in enumerate(zip(todo, _map(todo, workers)), start=1):
        if isinstance(result, str):
            log(f"no power figure for {cell_dir}: {result}")
            failed.add(cell_dir)
        if done % 100 == 0 or (done == len(todo) and done >= 100):
            log(f"power figures: {done}/{len(todo)}")
    paths: list[Path] = []
    for cell_dir, stem in stems.items():
        if cell_dir in failed:
            continue
        for fmt in FORMATS:
            path = stem.with_suffix(f".{fmt}")
            if cache_dir is not None:
                target = power_stem(out_dir, cell_dir.name).with_suffix(f".{fmt}")
                _place(path, target)
                path = target
            paths.append(path)
    if cache_dir is not None:
        # The cache mirrors this study: figures of older results and of cells no longer in
        # the study go (one listing, not one per cell).
        keep = {stem.with_suffix(f".{fmt}").name for stem in stems.values() for fmt in FORMATS}
        for entry in Path(cache_dir).iterdir():
            if entry.name not in keep:
                entry.unlink(missing_ok=True)
    return paths


def _map(todo: list[tuple[Path, Path]], workers: int) -> Iterator[list[Path] | str]:
    if workers <= 1 or len(todo) <= 1:
        return (_draw_cell_or_error(cell_dir, stem) for cell_dir, stem in todo)
    # spawn, not fork: the parent already runs Arrow's thread pools.
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)),
                               mp_context=multiprocessing.get_context("spawn"))

    def results() -> Iterator[list[Path] | str]:
        with pool:
            yield from pool.map(_draw_cell_or_error, *zip(*todo), chunksize=4)

    return results()
