"""The paper style every figure shares: colour-blind-safe palette (Okabe-Ito), embedded
TrueType fonts, single- and double-column sizes, saving as PDF (vector), SVG and PNG; the
Pareto frontier and the small helpers the study and cell figures draw with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from llm_energy.backends import registry

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


def pareto_front(points: Sequence[tuple[float, float]], minimize: tuple[bool, bool] = (True, True)) -> list[int]:
    """Indices of points no other point beats on both coordinates (ties kept), in order.
    One sweep in x order (O(n log n)): a point is beaten when a point of smaller x has a y
    at most its own, or a point of the same x a smaller y."""
    sign = [1 if m else -1 for m in minimize]
    keyed = sorted((sign[0] * x, sign[1] * y, i) for i, (x, y) in enumerate(points))
    front, best, k = [], float("inf"), 0
    while k < len(keyed):
        x, group_y = keyed[k][0], keyed[k][1]  # sorted: the first of an x has its smallest y
        end = k
        while end < len(keyed) and keyed[end][0] == x:
            end += 1
        if best > group_y:
            front += [i for _, y, i in keyed[k:end] if y == group_y]
        best = min(best, group_y)
        k = end
    return sorted(front)


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


def series_labels(frame: pd.DataFrame) -> pd.Series:
    """`series_label` of every row at once (a row Series each was seconds at 10,000 cells)."""
    backend = frame["backend"].astype(str)
    if "dtype" not in frame:
        return backend
    dtype = frame["dtype"]
    text = dtype.map(lambda d: isinstance(d, str))
    return backend.where(~text, backend + " " + dtype.where(text, ""))


def batches_of(frame: pd.DataFrame) -> list[int | None]:
    """`batch_of` of every row, from records of only the backends' settings."""
    names = {"backend", *registry.setting_names()}
    return [batch_of(r) for r in frame[[c for c in frame.columns if c in names]].to_dict("records")]


#: From this many points on, a figure's points and error bars are rasterized in the PDF and
#: SVG (10,000 vector points made a 12.5 MB SVG and minutes of drawing; axes, text and the
#: Pareto rings stay vector) and the trade-off figures leave out the per-point batch labels.
RASTER_FROM = 300
#: Past this many legend entries the legend goes beside the axes in columns (placing it
#: "best" over thousands of points took minutes).
LEGEND_INSIDE_UP_TO = 12


def rasterize(container: Any) -> None:
    """Rasterize (in the PDF and SVG) every artist of a container, e.g. what `errorbar`
    returns: its line, markers, bars and caps."""
    for artist in container.get_children():
        artist.set_rasterized(True)


def legend(ax: plt.Axes, points: int) -> None:
    """The legend: inside, placed "best", for a few entries over a few points; else in a
    fixed place (beside the axes, in columns of up to 30, for many entries)."""
    entries = len(ax.get_legend_handles_labels()[1])
    if entries > LEGEND_INSIDE_UP_TO:
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=5,
                  ncol=-(-entries // 30))
    else:
        ax.legend(frameon=False, loc="best" if points < RASTER_FROM else "upper right")


def batch_of(row: pd.Series) -> int | None:
    """The cell's batch limit: its backend's batch setting (backend registry)."""
    return registry.batch_limit_of(row)


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
    # Every quantity drawn is positive: a bar never reaches below zero, even from a summary
    # written before intervals respected the sign.
    return [(df[metric] - df[low].clip(lower=0)).fillna(0).clip(lower=0).tolist(),
            (df[high] - df[metric]).fillna(0).clip(lower=0).tolist()]


def _estimate_note(fig: plt.Figure, summary: pd.DataFrame) -> None:
    if "energy_source" in summary and summary["energy_source"].fillna("").str.contains("estimate").any():
        fig.text(0.99, 0.01, "energy: estimate", ha="right", va="bottom", fontsize=6, color="0.4")


def _empty(ax: plt.Axes, text: str = "no successful cells") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _series_name(ok: pd.DataFrame, model: str, series: str) -> str:
    return series if ok["model"].nunique() == 1 else f"{model}: {series}"
