"""Figures in one paper style: colour-blind-safe palette (Okabe-Ito), embedded TrueType
fonts, single- and double-column sizes; each figure saved as PDF (vector), SVG and PNG.

Study figures: energy per output token vs median ITL (the ML.ENERGY time-energy tradeoff)
and vs throughput, with the Pareto frontier ringed; energy per token and throughput vs batch
size; the TTFT distribution per cell; goodput and energy per SLO-meeting request against the
offered request rate (a rate sweep) or energy against goodput, the SLO marked. With
`references:`, the same two tradeoffs in ML.ENERGY's steady-state window with the matching
reference rows beside the cells (`REFERENCE_FIGURES`). Error bars are the 95% intervals across
cycles, never below zero for the positive quantities drawn. Per-cell power figures:
`cell_figures`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from llm_energy.analysis.figure_style import (  # noqa: F401 - re-exported: figures' names
    DOUBLE_COLUMN_IN,
    FORMATS,
    OKABE_ITO,
    RASTER_FROM,
    SINGLE_COLUMN_IN,
    STYLE,
    _empty,
    _errors,
    _estimate_note,
    _series_name,
    _wide,
    batch_of,
    batches_of,
    legend,
    pareto_cells,
    pareto_front,
    rasterize,
    save,
    series_label,
    series_labels,
)
from llm_energy.analysis.reference import field_columns


def tradeoff_data(summary: pd.DataFrame, x: str, y: str,
                  reference: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a tradeoff figure draws: the successful cells with both values, and the
    reference rows with both values that match one of those cells (same model and GPU)."""
    def both(frame: pd.DataFrame) -> pd.DataFrame:
        if x not in frame or y not in frame:
            return frame.iloc[0:0]
        return frame[(frame["status"] == "ok") & frame[x].notna() & frame[y].notna()].copy()

    ok = both(summary)
    if reference is None or reference.empty:
        return ok, pd.DataFrame(columns=["source", "model", x, y])
    ref = both(reference)
    shown = set(ok["cell_id"])
    return ok, ref[ref["matched_cells"].map(lambda cells: bool(set(cells) & shown))]


def _draw_reference(ax: plt.Axes, ok: pd.DataFrame, ref: pd.DataFrame, x: str, y: str) -> None:
    """Reference rows: hollow diamonds on a dotted line, grey, one series per reference,
    model and GPU count, labelled "reference: <label>" in the legend."""
    ref = ref.assign(_gpus=ref["num_gpus"].fillna(1) if "num_gpus" in ref else 1)
    series = ref.groupby(["source", "model", "_gpus"], sort=True)
    for i, ((source, model, gpus), group) in enumerate(series):
        group = group.sort_values(x)
        name = source if ok["model"].nunique() <= 1 else f"{model}: {source}"
        name += f" ({gpus:g} GPUs)" if gpus > 1 else ""
        ax.plot(group[x], group[y], linestyle=":", marker="D", markersize=4,
                markerfacecolor="none", color=("0.35", "0.6", "0.15")[i % 3], label=name)
        for _, row in group.iterrows():
            batch = batch_of(row)
            if batch is not None:
                ax.annotate(str(batch), (row[x], row[y]), textcoords="offset points",
                            xytext=(3, -7), fontsize=5, color="0.35")


def tradeoff(summary: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, stem: Path,
             minimize_x: bool, title: str | None = None, log_x: bool | None = None,
             log_y: bool | None = None, reference: pd.DataFrame | None = None) -> list[Path]:
    """One line per backend/precision, points labelled by batch size (up to RASTER_FROM
    points; from there points and bars are rasterized in the PDF/SVG), the Pareto set ringed;
    with `reference`, the matching reference rows beside them (`tradeoff_data`).
    `log_x`/`log_y` None: logarithmic when the values span more than 20×."""
    ok, ref = tradeoff_data(summary, x, y, reference)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=SINGLE_COLUMN_IN)
        if ok.empty:
            _empty(ax)
        ok["_series"] = series_labels(ok) if len(ok) else []
        ok["_batch"] = batches_of(ok) if len(ok) else []
        many = len(ok) >= RASTER_FROM
        for (model, series), group in ok.groupby(["model", "_series"], sort=True):
            group = group.sort_values(x)
            bars = ax.errorbar(group[x], group[y], xerr=_errors(group, x), yerr=_errors(group, y),
                               marker="o", capsize=2, label=_series_name(ok, model, series))
            for px, py, batch in zip(group[x], group[y], group["_batch"]) if not many else ():
                if batch is not None and not pd.isna(batch):
                    ax.annotate(str(int(batch)), (px, py), textcoords="offset points",
                                xytext=(3, 3), fontsize=6)
            if many:
                rasterize(bars)
        if many:  # thousands of labels are ink, not text, and took minutes to lay out
            ax.text(0.01, 0.01, f"{len(ok)} points: batch labels left out (the report's "
                    "hover names each point)", transform=ax.transAxes, fontsize=5, color="0.4")
        if not ok.empty:
            front = set(pareto_cells(ok, x, y, minimize_x))
            labelled = False
            for _, group in ok.groupby("model", sort=True):
                pts = group[group["cell_id"].isin(front)].sort_values(x)
                ax.plot(pts[x], pts[y], linestyle="--", color="0.4", linewidth=0.8, zorder=0)
                ax.scatter(pts[x], pts[y], s=60, facecolors="none", edgecolors="0.2",
                           linewidths=0.8, label=None if labelled else "Pareto frontier", zorder=3)
                labelled = True
            _draw_reference(ax, ok, ref, x, y)
            legend(ax, len(ok))
            drawn = pd.concat([ok[[x, y]], ref[[x, y]]])
            if log_x if log_x is not None else _wide(drawn[x]):
                ax.set_xscale("log")
            if log_y if log_y is not None else _wide(drawn[y]):
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
    return pd.Series(batches_of(summary), index=summary.index) if len(summary) \
        else pd.Series(dtype=float)


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
            ok["_series"] = series_labels(ok)
            for ax, (metric, label) in zip(axes, panels):
                for (model, series), group in ok.groupby(["model", "_series"], sort=True):
                    group = group[group[metric].notna()].sort_values("_batch")
                    bars = ax.errorbar(group["_batch"], group[metric], yerr=_errors(group, metric),
                                       marker="o", capsize=2, label=_series_name(ok, model, series))
                    if len(ok) >= RASTER_FROM:
                        rasterize(bars)
                ax.set_xscale("log", base=2)
                ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
                ax.set_xticks(sorted(ok["_batch"].unique()))
                ax.minorticks_off()
                if _wide(ok[metric].dropna()):
                    ax.set_yscale("log")
                ax.set_xlabel("Batch size (max concurrent requests)")
                ax.set_ylabel(label)
            legend(axes[0], len(ok))
        fig.tight_layout()
        _estimate_note(fig, summary)
        return save(fig, stem)


def cell_label(row: pd.Series, with_model: bool = False) -> str:
    batch = batch_of(row)
    label = series_label(row) + (f" b={batch}" if batch is not None else "")
    return f"{row['model']}: {label}" if with_model else label


#: Above this many cells the TTFT box plot has one box per model and backend (a box per
#: cell is unreadable there, and 10,000 boxes took minutes to draw).
MAX_CELL_BOXES = 40


def ttft_distribution(summary: pd.DataFrame, requests: pd.DataFrame | None, stem: Path) -> list[Path]:
    """Box plot of time to first token per cell (all successful requests of its successful
    cycles): median, quartiles, whiskers at 1.5 IQR, outliers as points. Above
    MAX_CELL_BOXES cells, one box per model and backend (all their cells' requests)."""
    ok = summary[summary["status"] == "ok"].copy()
    ok["_batch"] = batch_column(ok)
    ok = ok.sort_values(["model", "backend", "_batch"]) if len(ok) else ok
    data, labels = [], []
    if requests is not None and len(requests) and len(ok) > MAX_CELL_BOXES:
        good = requests[requests["success"].fillna(False).astype(bool) & requests["ttft_ms"].notna()]
        good = good.merge(ok[["cell_id", "model", "backend"]], on="cell_id")
        for (model, backend), group in good.groupby(["model", "backend"], sort=True):
            data.append(group["ttft_ms"].to_numpy())
            labels.append(f"{model} · {backend}")
    elif requests is not None and len(requests):
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


def reference_tradeoff(summary: pd.DataFrame, reference: pd.DataFrame | None, x_field: str,
                       xlabel: str, stem: Path, minimize_x: bool) -> list[Path]:
    """Energy per token (y) against an ML.ENERGY field (x), both in ML.ENERGY's window (the
    steady state: the export's mapping inverted), the cells beside the reference rows."""
    columns = field_columns()
    return tradeoff(summary, columns[x_field], columns["energy_per_token_joules"], xlabel,
                    "Energy per output token,\nsteady state (J)", stem, minimize_x,
                    reference=reference)


def slo_text(summary: pd.DataFrame) -> str | None:
    """The study's SLO in words (`slo_*` summary columns), or None without one."""
    first = summary.iloc[0] if len(summary) else pd.Series(dtype=object)
    limits = [f"{name} ≤ {first[f'slo_{name.lower()}_ms']:g} ms" for name in ("TTFT", "TPOT", "E2E")
              if pd.notna(first.get(f"slo_{name.lower()}_ms"))]
    if not limits:
        return None
    target = first.get("slo_target_attainment")
    return "SLO: " + ", ".join(limits) + (f"; target {target:.0%}" if pd.notna(target) else "")


def rate_sweep(ok: pd.DataFrame) -> bool:
    """Whether the cells sweep the offered request rate (`request_rate_per_s`)."""
    return "request_rate_per_s" in ok and ok["request_rate_per_s"].dropna().nunique() > 1


def energy_vs_goodput(summary: pd.DataFrame, stem: Path) -> list[Path]:
    """Goodput (left) and energy per SLO-meeting request (right), one line per backend and
    precision. On a rate sweep both against the offered request rate (left: the dashed line is
    goodput = rate, every request meeting the SLO; the dotted line marks the highest rate
    whose cells meet the target attainment); otherwise energy against goodput. Filled markers
    meet the SLO's target attainment, hollow ones miss it. Cells without a rate (offline
    engines) are left out of a rate sweep's axes."""
    needed = ("goodput_requests_per_s", "energy_per_slo_request_j")
    ok = summary[summary["status"] == "ok"].copy() if "status" in summary else summary.iloc[:0]
    ok = ok[ok[list(needed)].notna().all(axis=1)] if all(c in ok for c in needed) else ok.iloc[:0]
    sweep = rate_sweep(ok)
    x = "request_rate_per_s" if sweep else "goodput_requests_per_s"
    ok = ok[ok[x].notna()] if len(ok) else ok
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=DOUBLE_COLUMN_IN)
        if ok.empty:
            for ax in axes:
                _empty(ax, "no SLO (`slo:`) or no successful cells")
        else:
            target = ok.get("slo_target_attainment")
            ok["_meets"] = (ok["slo_attainment"] >= target) if target is not None \
                else pd.Series(True, index=ok.index)
            ok["_series"] = series_labels(ok)
            panels = (("goodput_requests_per_s", "Goodput (SLO-meeting requests/s)"),
                      ("energy_per_slo_request_j", "Energy per SLO-meeting request (J)"))
            for ax, (metric, label) in zip(axes, panels):
                for i, ((model, series), group) in enumerate(
                        ok.groupby(["model", "_series"], sort=True)):
                    group = group.sort_values(x)
                    colour = OKABE_ITO[i % len(OKABE_ITO)]
                    ax.errorbar(group[x], group[metric], yerr=_errors(group, metric),
                                color=colour, capsize=2, label=_series_name(ok, model, series))
                    met = group[group["_meets"].astype(bool)]
                    missed = group[~group["_meets"].astype(bool)]
                    ax.scatter(met[x], met[metric], color=colour, zorder=3)
                    ax.scatter(missed[x], missed[metric], facecolors="white", edgecolors=colour,
                               zorder=3)
                if sweep:
                    meeting = ok.loc[ok["_meets"].astype(bool), x]
                    if len(meeting):
                        ax.axvline(meeting.max(), color="0.3", linestyle=":", linewidth=0.9,
                                   label=f"SLO met up to {meeting.max():g} req/s")
                    ax.set_xlabel("Offered request rate (requests/s)")
                else:
                    ax.set_xlabel("Goodput (SLO-meeting requests/s)")
                ax.set_ylabel(label)
            if sweep:
                top = float(ok[x].max())
                axes[0].plot([0, top], [0, top], color="0.5", linestyle="--", linewidth=0.8,
                             label="goodput = rate")
            axes[0].scatter([], [], facecolors="white", edgecolors="0.3", label="misses SLO target")
            axes[0].legend(frameon=False)
            fig.suptitle(slo_text(ok) or "", fontsize=8)
        fig.tight_layout()
        _estimate_note(fig, summary)
        return save(fig, stem)


Draw = Callable[[pd.DataFrame, "pd.DataFrame | None", Path], list[Path]]

# Study-level figures: name → draw(summary, requests, stem). Requests (all cells'
# requests.parquet) are only read by the figures that need them.
FIGURES: dict[str, Draw] = {
    "energy_vs_itl": lambda summary, requests, stem: energy_vs_itl(summary, stem),
    "energy_vs_throughput": lambda summary, requests, stem: energy_vs_throughput(summary, stem),
    "energy_throughput_vs_batch": lambda summary, requests, stem: energy_throughput_vs_batch(summary, stem),
    "ttft_distribution": ttft_distribution,
    "energy_vs_goodput": lambda summary, requests, stem: energy_vs_goodput(summary, stem),
}

# Drawn only for a study with `references:`: name -> draw(summary, reference, stem).
REFERENCE_FIGURES: dict[str, Callable[[pd.DataFrame, pd.DataFrame | None, Path], list[Path]]] = {
    "reference_energy_vs_itl": lambda summary, reference, stem: reference_tradeoff(
        summary, reference, "median_itl_ms", "Median inter-token latency (ms)", stem, True),
    "reference_energy_vs_throughput": lambda summary, reference, stem: reference_tradeoff(
        summary, reference, "output_throughput_tokens_per_sec",
        "Throughput, steady state (output tokens/s)", stem, False),
}


def figure_names(with_reference: bool) -> list[str]:
    """The study figures a study draws (the reference ones only with `references:`)."""
    return [*FIGURES, *(REFERENCE_FIGURES if with_reference else ())]


CAPTIONS = {
    "energy_vs_itl": "Energy per output token against median inter-token latency (the time-energy "
                     "tradeoff), one line per backend and precision, points labelled by batch size "
                     f"(below {RASTER_FROM} points; from there rasterized, unlabelled); "
                     "ringed points form the Pareto frontier (lowest energy for a latency).",
    "energy_vs_throughput": "Energy per output token against output throughput; ringed points form "
                            "the Pareto frontier (lowest energy for a throughput).",
    "energy_throughput_vs_batch": "Energy per output token (left) and output throughput (right) "
                                  "against batch size, log scale.",
    "ttft_distribution": "Time to first token of every request, per cell (box: quartiles and "
                         "median; whiskers: 1.5 IQR).",
    "reference_energy_vs_itl": "Energy per output token against median inter-token latency in "
                               "the steady-state window (ML.ENERGY's), the study's cells beside "
                               "the reference rows of the same model and GPU (hollow diamonds, "
                               "dotted, labelled by batch size). Reference energy is what its "
                               "publisher measured (ML.ENERGY: GPU energy only); the cells' is "
                               "their energy source's domains (the report's energy column).",
    "reference_energy_vs_throughput": "Energy per output token against output throughput, both "
                                      "in the steady-state window, the cells beside the "
                                      "matching reference rows (hollow diamonds).",
    "energy_vs_goodput": "Goodput (left) and energy per SLO-meeting request (right) against the "
                         "offered request rate on a rate sweep (else energy against goodput); "
                         "filled points meet the SLO's target attainment, hollow ones miss it; "
                         "the dotted line marks the highest rate that meets it. Empty without "
                         "an `slo:` section.",
    "power": "Power over one cell's run: load, idle baseline, warmup and the measured cycles; "
             "the steady-state window of each cycle is shaded darker.",
}


def draw_study(summary: pd.DataFrame, requests: pd.DataFrame | None, out_dir: Path,
               reference: pd.DataFrame | None = None) -> list[Path]:
    """The study figures; with `reference` (a study with `references:`, even when no row
    matches) the reference figures too."""
    paths: list[Path] = []
    for name, draw in FIGURES.items():
        paths += draw(summary, requests, Path(out_dir) / name)
    for name, draw_reference in (REFERENCE_FIGURES.items() if reference is not None else ()):
        paths += draw_reference(summary, reference, Path(out_dir) / name)
    return paths
