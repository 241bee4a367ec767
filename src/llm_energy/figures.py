"""Tradeoff figures in one paper style: colour-blind-safe palette (Okabe-Ito), embedded
TrueType fonts, single-column size; each figure saved as PDF (vector), SVG and PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

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


def tradeoff(summary: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, stem: Path,
             minimize_x: bool, title: str | None = None, log_x: bool = False) -> list[Path]:
    """One line per backend/precision, points labelled by batch size, the Pareto set ringed."""
    ok = summary[(summary["status"] == "ok") & summary[x].notna() & summary[y].notna()].copy()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=SINGLE_COLUMN_IN)
        if ok.empty:
            ax.text(0.5, 0.5, "no successful cells", ha="center", va="center", transform=ax.transAxes)
        ok["_series"] = ok.apply(series_label, axis=1)
        for label, group in ok.groupby(["model", "_series"], sort=True):
            group = group.sort_values(x)
            name = f"{label[1]}" if ok["model"].nunique() == 1 else f"{label[0]}: {label[1]}"
            ax.errorbar(group[x], group[y], xerr=_errors(group, x), yerr=_errors(group, y),
                        marker="o", capsize=2, label=name)
            for _, row in group.iterrows():
                batch = batch_of(row)
                if batch is not None:
                    ax.annotate(str(batch), (row[x], row[y]), textcoords="offset points",
                                xytext=(3, 3), fontsize=6)
        if not ok.empty:
            front = pareto_front(list(zip(ok[x], ok[y])), (minimize_x, True))
            pts = ok.iloc[front].sort_values(x)
            ax.plot(pts[x], pts[y], linestyle="--", color="0.4", linewidth=0.8, zorder=0)
            ax.scatter(pts[x], pts[y], s=60, facecolors="none", edgecolors="0.2", linewidths=0.8,
                       label="Pareto frontier", zorder=3)
            ax.legend(frameon=False)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        if summary["energy_source"].fillna("").str.contains("estimate").any():
            fig.text(0.99, 0.01, "energy: estimate", ha="right", va="bottom", fontsize=6, color="0.4")
        return save(fig, stem)


def energy_vs_throughput(summary: pd.DataFrame, stem: Path) -> list[Path]:
    return tradeoff(summary, "output_tokens_per_s", "energy_per_output_token_j",
                    "Throughput (output tokens/s)", "Energy per output token (J)", stem,
                    minimize_x=False)


def energy_vs_itl(summary: pd.DataFrame, stem: Path) -> list[Path]:
    return tradeoff(summary, "itl_ms_p50", "energy_per_output_token_j",
                    "Median inter-token latency (ms)", "Energy per output token (J)", stem,
                    minimize_x=True)


FIGURES = {
    "energy_vs_throughput": energy_vs_throughput,
    "energy_vs_itl": energy_vs_itl,
}
