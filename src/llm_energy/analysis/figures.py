"""Figures in one paper style: colour-blind-safe palette (Okabe-Ito), embedded TrueType
fonts, single- and double-column sizes; each figure saved as PDF (vector), SVG and PNG.

Study figures: energy per output token vs median ITL (the ML.ENERGY time-energy tradeoff)
and vs throughput, with the Pareto frontier ringed; energy per token and throughput vs batch
size; the TTFT distribution per cell. Per cell: power over time with the measured cycles and
their steady-state windows shaded. Error bars are the 95% confidence intervals across cycles."""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
SINGLE_COLUMN_IN = (3.5, 2.6)
DOUBLE_COLUMN_IN = (7.0, 3.2)
FORMATS = ("pdf", "svg", "png")

STYLE = {
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
    "font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "lines.linewidth": 1.2,
    "lines.markersize": 4, "savefig.dpi": 200, "savefig.bbox": "tight",
    "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO),
}

BATCH_AXES = ("batch_size", "max_num_seqs")


def pareto_front(points: Sequence[tuple[float, float]], minimize: tuple[bool, bool] = (True, True)) -> list[int]:
    """Indices of points no other point beats on both coordinates (ties kept)."""
    sign = [1 if m else -1 for m in minimize]
    keyed = [(sign[0] * x, sign[1] * y) for x, y in points]
    front = []
    for i, (x, y) in enumerate(keyed):
        dominated = any(
            (ox <= x and oy <= y) and (ox < x or oy < y) for j, (ox, oy) in enumerate(keyed) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def pareto_cells(summary: pd.DataFrame, x: str, y: str, minimize_x: bool = True) -> list[str]:
    """cell_ids of the successful cells on the (x, y) Pareto frontier, y minimised, per model
    (configurations of different models answer different questions)."""
    ok = summary[(summary["status"] == "ok") & summary[x].notna() & summary[y].notna()]
    out: list[str] = []
    for _, group in ok.groupby("model", sort=True):
        front = pareto_front(list(zip(group[x], group[y])), (minimize_x, True))
        out += list(group.iloc[front]["cell_id"])
    return out


def _wide(values: pd.Series, ratio: float = 20.0) -> bool:
    """Log scale when the positive values span more than `ratio`."""
    positive = values[values > 0]
    return len(positive) >= 2 and positive.max() / positive.min() > ratio


def series_label(row: pd.Series) -> str:
    dtype = row.get("dtype")
    return f"{row['backend']} {dtype}" if isinstance(dtype, str) else str(row["backend"])


def batch_of(row: pd.Series) -> int | None:
    for axis in BATCH_AXES:
        value = row.get(axis)
        if value is not None and not pd.isna(value):
            return int(value)
    return None


def save(fig: plt.Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, format=fmt, metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def _errors(df: pd.DataFrame, metric: str) -> list[list[float]] | None:
    low, high = f"{metric}_ci95_low", f"{metric}_ci95_high"
    if low not in df or df[low].isna().all():
        return None
    return [(df[metric] - df[low]).fillna(0).clip(lower=0).tolist(),
            (df[high] - df[metric]).fillna(0).clip(lower=0).tolist()]


def _estimate_note(fig: plt.Figure, summary: pd.DataFrame) -> None:
    if "energy_source" in summary and summary["energy_source"].fillna("").str.contains("estimate").any():
        fig.text(0.99, 0.01, "energy: estimate", ha="right", va="bottom", fontsize=6, color="0.4")


def _empty(ax: plt.Axes, text: str = "no successful cells") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _series_name(ok: pd.DataFrame, model: str, series: str) -> str:
    return series if ok["model"].nunique() == 1 else f"{model}: {series}"


def tradeoff(summary: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, stem: Path,
             minimize_x: bool, title: str | None = None, log_x: bool | None = None,
             log_y: bool | None = None) -> list[Path]:
    """One line per backend/precision, points labelled by batch size, the Pareto set ringed.
    `log_x`/`log_y` None: logarithmic when the values span more than 20×."""
    ok = summary[(summary["status"] == "ok") & summary[x].notna() & summary[y].notna()].copy()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=SINGLE_COLUMN_IN)
        if ok.empty:
            _empty(ax)
        ok["_series"] = ok.apply(series_label, axis=1) if len(ok) else []
        for (model, series), group in ok.groupby(["model", "_series"], sort=True):
            group = group.sort_values(x)
            ax.errorbar(group[x], group[y], xerr=_errors(group, x), yerr=_errors(group, y),
                        marker="o", capsize=2, label=_series_name(ok, model, series))
            for _, row in group.iterrows():
                batch = batch_of(row)
                if batch is not None:
                    ax.annotate(str(batch), (row[x], row[y]), textcoords="offset points",
                                xytext=(3, 3), fontsize=6)
        if not ok.empty:
            front = set(pareto_cells(ok, x, y, minimize_x))
            labelled = False
            for _, group in ok.groupby("model", sort=True):
                pts = group[group["cell_id"].isin(front)].sort_values(x)
                ax.plot(pts[x], pts[y], linestyle="--", color="0.4", linewidth=0.8, zorder=0)
                ax.scatter(pts[x], pts[y], s=60, facecolors="none", edgecolors="0.2",
                           linewidths=0.8, label=None if labelled else "Pareto frontier", zorder=3)
                labelled = True
            ax.legend(frameon=False)
            if log_x if log_x is not None else _wide(ok[x]):
                ax.set_xscale("log")
            if log_y if log_y is not None else _wide(ok[y]):
                ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        _estimate_note(fig, summary)
        return save(fig, stem)


def energy_vs_throughput(summary: pd.DataFrame, stem: Path) -> list[Path]:
    return tradeoff(summary, "output_tokens_per_s", "energy_per_output_token_j",
                    "Throughput (output tokens/s)", "Energy per output token (J)", stem,
                    minimize_x=False)


def energy_vs_itl(summary: pd.DataFrame, stem: Path) -> list[Path]:
    return tradeoff(summary, "itl_ms_p50", "energy_per_output_token_j",
                    "Median inter-token latency (ms)", "Energy per output token (J)", stem,
                    minimize_x=True)


def batch_column(summary: pd.DataFrame) -> pd.Series:
    return summary.apply(batch_of, axis=1) if len(summary) else pd.Series(dtype=float)


def energy_throughput_vs_batch(summary: pd.DataFrame, stem: Path) -> list[Path]:
    """Two panels sharing a log2 batch-size axis: energy per output token, and throughput."""
    ok = summary[summary["status"] == "ok"].copy()
    ok["_batch"] = batch_column(ok)
    ok = ok[ok["_batch"].notna()]
    panels = (("energy_per_output_token_j", "Energy per output token (J)"),
              ("output_tokens_per_s", "Throughput (output tokens/s)"))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=DOUBLE_COLUMN_IN)
        if ok.empty:
            for ax in axes:
                _empty(ax, "no successful cells with a batch size")
        else:
            ok["_series"] = ok.apply(series_label, axis=1)
            for ax, (metric, label) in zip(axes, panels):
                for (model, series), group in ok.groupby(["model", "_series"], sort=True):
                    group = group[group[metric].notna()].sort_values("_batch")
                    ax.errorbar(group["_batch"], group[metric], yerr=_errors(group, metric),
                                marker="o", capsize=2, label=_series_name(ok, model, series))
                ax.set_xscale("log", base=2)
                ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
                ax.set_xticks(sorted(ok["_batch"].unique()))
                ax.minorticks_off()
                if _wide(ok[metric].dropna()):
                    ax.set_yscale("log")
                ax.set_xlabel("Batch size (max concurrent requests)")
                ax.set_ylabel(label)
            axes[0].legend(frameon=False)
        fig.tight_layout()
        _estimate_note(fig, summary)
        return save(fig, stem)


def cell_label(row: pd.Series, with_model: bool = False) -> str:
    batch = batch_of(row)
    label = series_label(row) + (f" b={batch}" if batch is not None else "")
    return f"{row['model']}: {label}" if with_model else label


def ttft_distribution(summary: pd.DataFrame, requests: pd.DataFrame | None, stem: Path) -> list[Path]:
    """Box plot of time to first token per cell (all successful requests of its successful
    cycles): median, quartiles, whiskers at 1.5 IQR, outliers as points."""
    ok = summary[summary["status"] == "ok"].copy()
    ok["_batch"] = batch_column(ok)
    ok = ok.sort_values(["model", "backend", "_batch"]) if len(ok) else ok
    data, labels = [], []
    if requests is not None and len(requests):
        good = requests[requests["success"].fillna(False).astype(bool) & requests["ttft_ms"].notna()]
        by_cell = dict(tuple(good.groupby("cell_id")))
        for _, row in ok.iterrows():
            values = by_cell.get(row["cell_id"])
            if values is not None and len(values):
                data.append(values["ttft_ms"].to_numpy())
                labels.append(cell_label(row, with_model=ok["model"].nunique() > 1))
    width = SINGLE_COLUMN_IN if len(data) <= 6 else DOUBLE_COLUMN_IN
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(width[0], width[1] + 0.4))
        if not data:
            _empty(ax, "no requests")
        else:
            ax.boxplot(data, flierprops={"markersize": 2}, medianprops={"color": OKABE_ITO[3]})
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=45, ha="right")
            if _wide(pd.Series([v for d in data for v in d])):
                ax.set_yscale("log")
        ax.set_ylabel("Time to first token (ms)")
        ax.grid(axis="x", visible=False)
        return save(fig, stem)


PHASE_COLOURS = {"load": "0.92", "idle": "#e6f0f8", "warmup": "#fdf2dc"}


def power_timeseries(runs: pd.DataFrame, timeseries: pd.DataFrame, stem: Path,
                     title: str | None = None) -> list[Path]:
    """Power per device over the whole cell (load, idle, warmup, cycles), and the measured
    cycles zoomed in, each cycle shaded and its steady-state window shaded darker."""
    ts = timeseries[timeseries["power_w"].notna()].sort_values("t_s")
    cycles = runs[(runs["status"] == "ok") & runs["cycle"].notna()].sort_values("cycle") \
        if len(runs) else runs
    windows = []  # (cycle start, cycle end, steady start, steady end) on the timeseries clock
    for _, r in cycles.iterrows():
        start = r.get("cycle_start_s")
        if start is None or pd.isna(start):
            # Files from before cycle_start_s existed: the phase labels bound the cycle.
            phase = ts[ts["phase"] == f"cycle{int(r['cycle'])}"]["t_s"]
            if phase.empty:
                continue
            start = phase.min()
        s0, s1 = r.get("steady_state_start_s"), r.get("steady_state_end_s")
        steady = None if s0 is None or pd.isna(s0) else (start + s0, start + s1)
        windows.append((start, start + r["duration_s"], steady))
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
                ax.axvspan(a, b, color=OKABE_ITO[5], alpha=0.15, lw=0, zorder=0,
                           label="cycle" if j == 0 else None)
                if steady is not None:
                    ax.axvspan(*steady, color=OKABE_ITO[2], alpha=0.35, lw=0, zorder=0,
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


Draw = Callable[[pd.DataFrame, "pd.DataFrame | None", Path], list[Path]]

# Study-level figures: name → draw(summary, requests, stem). Requests (all cells'
# requests.parquet) are only read by the figures that need them.
FIGURES: dict[str, Draw] = {
    "energy_vs_itl": lambda summary, requests, stem: energy_vs_itl(summary, stem),
    "energy_vs_throughput": lambda summary, requests, stem: energy_vs_throughput(summary, stem),
    "energy_throughput_vs_batch": lambda summary, requests, stem: energy_throughput_vs_batch(summary, stem),
    "ttft_distribution": ttft_distribution,
}

CAPTIONS = {
    "energy_vs_itl": "Energy per output token against median inter-token latency (the time-energy "
                     "tradeoff), one line per backend and precision, points labelled by batch size; "
                     "ringed points form the Pareto frontier (lowest energy for a latency).",
    "energy_vs_throughput": "Energy per output token against output throughput; ringed points form "
                            "the Pareto frontier (lowest energy for a throughput).",
    "energy_throughput_vs_batch": "Energy per output token (left) and output throughput (right) "
                                  "against batch size, log scale.",
    "ttft_distribution": "Time to first token of every request, per cell (box: quartiles and "
                         "median; whiskers: 1.5 IQR).",
    "power": "Power over one cell's run: load, idle baseline, warmup and the measured cycles; "
             "the steady-state window of each cycle is shaded darker.",
}


def power_stem(out_dir: Path, cell_id: str) -> Path:
    return Path(out_dir) / "power" / cell_id


def draw_study(summary: pd.DataFrame, requests: pd.DataFrame | None, out_dir: Path) -> list[Path]:
    paths: list[Path] = []
    for name, draw in FIGURES.items():
        paths += draw(summary, requests, Path(out_dir) / name)
    return paths


@functools.lru_cache(maxsize=1)
def _code_digest() -> bytes:
    return hashlib.sha256(Path(__file__).read_bytes()).digest()


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
    except Exception as exc:  # noqa: BLE001 - aggregation reports unreadable cells by path
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
