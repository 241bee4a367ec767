"""The paper style every figure shares: colour-blind-safe palette (Okabe-Ito), embedded
TrueType fonts, single- and double-column sizes, saving as PDF (vector), SVG and PNG; the
Pareto frontier and the small helpers the study and cell figures draw with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
