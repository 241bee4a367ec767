"""Figures: the Pareto set against a hand-computed one, and every figure written in PDF,
SVG and PNG, opened and checked (PNG size, PDF page count, fonts embedded)."""

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from test_report_browser import png_size

from llm_energy.analysis import figures
from llm_energy.analysis.cell_figures import draw_cells, power_timeseries
from llm_energy.analysis.figures import (
    FIGURES,
    FORMATS,
    draw_study,
    pareto_cells,
    pareto_front,
)


def pdf_page_count(path: Path) -> int:
    """Pages of an uncompressed-xref PDF (matplotlib's): the /Count of the root /Pages node,
    cross-checked against the number of /Type /Page objects."""
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF"), f"{path} is not a PDF"
    pages = len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))
    counts = [int(c) for c in re.findall(rb"/Type\s*/Pages\b[^>]*?/Count\s+(\d+)", data, re.S)]
    counts += [int(c) for c in re.findall(rb"/Count\s+(\d+)[^>]*?/Type\s*/Pages\b", data, re.S)]
    assert counts and max(counts) == pages, (counts, pages)
    return pages


def check_figure_files(stem: Path) -> None:
    for fmt in FORMATS:
        assert stem.with_suffix(f".{fmt}").stat().st_size > 1000, f"{stem}.{fmt}"
    width, height = png_size(stem.with_suffix(".png"))
    assert 300 <= width <= 3000 and 200 <= height <= 2000, (width, height)
    assert pdf_page_count(stem.with_suffix(".pdf")) == 1
    # fonttype 42: TrueType fonts embedded, so the PDF renders the same anywhere.
    assert b"/FontFile2" in stem.with_suffix(".pdf").read_bytes()
    assert b"<svg" in stem.with_suffix(".svg").read_bytes()[:2000]


# (cell, model, batch, J/token, median ITL ms, tokens/s)
TABLE = [
    ("a", "m", 1, 0.50, 2.0, 100.0),
    ("b", "m", 2, 0.30, 4.0, 180.0),
    ("c", "m", 4, 0.35, 5.0, 150.0),   # dominated by b on both axes
    ("d", "m", 8, 0.20, 8.0, 300.0),
    ("e", "m", 16, 0.20, 9.0, 320.0),  # same energy as d, slower: dominated (ITL); fastest (tput)
    ("f", "n", 1, 0.90, 3.0, 50.0),    # another model: its own frontier
    ("g", "m", 32, 0.10, 50.0, 310.0),
]


def small_summary(failed: bool = True) -> pd.DataFrame:
    rows = [{"cell_id": c, "model": m, "backend": "transformers", "batch_size": b,
             "dtype": "float32", "status": "ok", "cycles": 3, "energy_source": "estimate",
             "energy_per_output_token_j": e, "energy_per_output_token_j_ci95_low": e * 0.9,
             "energy_per_output_token_j_ci95_high": e * 1.1, "itl_ms_p50": i,
             "itl_ms_p50_ci95_low": i - 0.5, "itl_ms_p50_ci95_high": i + 0.5,
             "output_tokens_per_s": t, "output_tokens_per_s_ci95_low": t - 5,
             "output_tokens_per_s_ci95_high": t + 5} for c, m, b, e, i, t in TABLE]
    if failed:  # a failed cell has no numbers and is never on a frontier
        rows.append({"cell_id": "x", "model": "m", "backend": "transformers", "batch_size": 64,
                     "dtype": "float32", "status": "failed", "cycles": 0})
    return pd.DataFrame(rows)


def test_pareto_front_by_hand():
    points = [(2, 0.5), (4, 0.3), (5, 0.35), (8, 0.2), (9, 0.2), (50, 0.1)]
    assert pareto_front(points) == [0, 1, 3, 5]
    # Ties on both coordinates are both kept.
    assert pareto_front([(1, 1), (1, 1), (2, 2)]) == [0, 1]
    # Maximising x (throughput) while minimising y.
    assert pareto_front([(100, 0.5), (180, 0.3), (150, 0.35), (300, 0.2), (320, 0.2)],
                        (False, True)) == [4]


def test_pareto_cells_per_model_against_hand_computed_sets():
    summary = small_summary()
    # min J/token vs min ITL: c (worse than b on both) and e (same energy as d, slower) drop out.
    assert sorted(pareto_cells(summary, "itl_ms_p50", "energy_per_output_token_j", True)) == \
        ["a", "b", "d", "f", "g"]
    # min J/token vs max throughput: e (320 tok/s) beats d (300, same energy); g is the
    # cheapest; a, b, c are beaten by d on both axes.
    assert sorted(pareto_cells(summary, "output_tokens_per_s", "energy_per_output_token_j", False)) == \
        ["e", "f", "g"]


def test_study_figures_in_three_formats(tmp_path):
    summary = small_summary()
    rng = np.random.default_rng(0)
    requests = pd.DataFrame([{"cell_id": c, "cycle": k % 3, "success": True,
                              "ttft_ms": float(rng.gamma(2.0, 10.0 * b))}
                             for c, _, b, *_ in TABLE for k in range(12)])
    paths = draw_study(summary, requests, tmp_path)
    assert len(paths) == len(FIGURES) * len(FORMATS)
    for name in FIGURES:
        check_figure_files(tmp_path / name)


def test_figures_without_successful_cells(tmp_path):
    summary = small_summary().iloc[-1:]  # only the failed cell
    draw_study(summary, None, tmp_path)
    for name in FIGURES:
        check_figure_files(tmp_path / name)


def test_power_timeseries_with_steady_window(tmp_path):
    t = np.arange(0, 6, 0.1)
    ts = pd.DataFrame({"t_s": t, "device": "cpu", "power_w": 10 + 5 * (t > 3),
                       "power_source": "estimate",
                       "phase": ["load" if x < 1 else "idle" if x < 2 else "warmup" if x < 3
                                 else f"cycle{int((x - 3) // 1)}" for x in t]})
    runs = pd.DataFrame({"cycle": [0, 1, 2], "status": "ok", "duration_s": 0.9,
                         "cycle_start_s": [3.0, 4.0, 5.0], "steady_state_start_s": 0.1,
                         "steady_state_end_s": 0.8})
    power_timeseries(runs, ts, tmp_path / "power", "a cell")
    check_figure_files(tmp_path / "power")
    # Files from before cycle_start_s existed: the cycles come from the phase labels.
    power_timeseries(runs.drop(columns=["cycle_start_s"]), ts, tmp_path / "old", None)
    check_figure_files(tmp_path / "old")


def test_power_timeseries_idle_and_cycle_shading_differ_and_are_in_the_legend(tmp_path, monkeypatch):
    """Idle and the measured cycles are told apart: a colour each, both named in the legend."""
    from matplotlib.colors import to_rgb

    from llm_energy.analysis import cell_figures

    t = np.arange(0, 4, 0.1)
    ts = pd.DataFrame({"t_s": t, "device": "cpu", "power_w": 10.0, "power_source": "rapl",
                       "phase": ["idle" if x < 2 else "cycle0" for x in t]})
    runs = pd.DataFrame({"cycle": [0], "status": "ok", "duration_s": 1.9, "cycle_start_s": [2.0],
                         "steady_state_start_s": 0.5, "steady_state_end_s": 1.5})
    seen = {}
    monkeypatch.setattr(cell_figures, "save", lambda fig, stem: seen.setdefault("fig", fig) and [])
    power_timeseries(runs, ts, tmp_path / "p", None)
    legend = seen["fig"].legends[0]
    colours = {text.get_text(): to_rgb(handle.get_facecolor())
               for text, handle in zip(legend.get_texts(), legend.legend_handles)
               if hasattr(handle, "get_facecolor")}  # the shaded spans, not the power line
    assert {"idle", "cycle", "steady state"} <= set(colours)
    assert colours["idle"] != colours["cycle"] != colours["steady state"]
    assert colours["idle"] == to_rgb("#e6f0f8") and colours["cycle"] == to_rgb("#CC79A7")


def _cell_dir(root: Path, cell_id: str, power_w: float) -> Path:
    cell = root / "cells" / "m" / "transformers" / cell_id
    cell.mkdir(parents=True)
    t = np.arange(0, 4, 0.1)
    pd.DataFrame({"t_s": t, "device": "cpu", "power_w": power_w + t, "power_source": "estimate",
                  "phase": ["idle" if x < 2 else "cycle0" for x in t]}).to_parquet(
        cell / "timeseries.parquet")
    pd.DataFrame({"model": ["m"], "backend": "transformers", "batch_size": 2, "dtype": "float32",
                  "cycle": [0], "status": "ok", "duration_s": 2.0, "cycle_start_s": 2.0}).to_parquet(
        cell / "runs.parquet")
    return cell


def test_power_figures_of_unchanged_cells_are_reused_and_changed_ones_redrawn(tmp_path):
    cells = [_cell_dir(tmp_path, f"c{k}", 10.0 * (k + 1)) for k in range(3)]
    broken = tmp_path / "cells" / "m" / "transformers" / "broken"
    broken.mkdir()
    (broken / "runs.parquet").write_text("not parquet")
    (broken / "timeseries.parquet").write_text("not parquet")
    cache, out = tmp_path / "cache", tmp_path / "figures"

    def draw(workers=1):
        logged: list[str] = []
        paths = draw_cells([*cells, broken], out, cache_dir=cache, workers=workers,
                           log=logged.append)
        return paths, logged

    paths, logged = draw(workers=2)  # two spawned processes
    assert logged[0] == "drawing 4 power figure(s), 0 unchanged (cached), 2 processes"
    assert any(m.startswith(f"no power figure for {broken}") for m in logged)
    assert sorted(p.name for p in paths) == sorted(f"c{k}.{f}" for k in range(3) for f in FORMATS)
    for k in range(3):
        check_figure_files(out / "power" / f"c{k}")
    first_png = (out / "power" / "c1.png").read_bytes()

    shutil.rmtree(out)  # what Snakemake does before rerunning the rule
    paths, logged = draw()
    # Only the unreadable cell is tried again.
    assert logged[0] == "drawing 1 power figure(s), 3 unchanged (cached)"
    assert logged[1].startswith(f"no power figure for {broken}: ArrowInvalid")
    assert (out / "power" / "c1.png").read_bytes() == first_png and len(paths) == 9

    # A remeasured cell (new files) is drawn again; its old cached figure is dropped.
    shutil.rmtree(cells[1])
    _cell_dir(tmp_path, "c1", 500.0)
    paths, logged = draw()
    assert logged[0] == "drawing 2 power figure(s), 2 unchanged (cached)"
    assert (out / "power" / "c1.png").read_bytes() != first_png
    assert len(list(cache.glob("c1-*.png"))) == 1


def test_error_bars_never_below_zero(tmp_path, monkeypatch):
    # Intervals of a positive quantity that reach below zero (a symmetric t-interval over
    # non-stationary cycles, as older summaries have) are drawn from zero at the lowest.
    summary = small_summary(failed=False)
    summary["energy_per_output_token_j_ci95_low"] = -summary["energy_per_output_token_j"]
    summary["output_tokens_per_s_ci95_low"] = -10.0
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.append(fig) or [])
    figures.energy_vs_throughput(summary, tmp_path / "t")
    figures.energy_throughput_vs_batch(summary, tmp_path / "b")
    lowest = []
    for fig in drawn:
        for ax in fig.axes:
            for collection in ax.collections:
                for segment in getattr(collection, "get_segments", lambda: [])():
                    lowest.append(np.min(np.asarray(segment)[:, 1]))
                    lowest.append(np.min(np.asarray(segment)[:, 0]))
    assert lowest and min(lowest) >= 0


def test_tensorrt_llm_cells_are_on_the_batch_axis(tmp_path):
    """TensorRT-LLM's batch limit is `max_batch_size`: its cells are on the batch figure
    (the axis comes from each backend's registered batch setting, not a list of names)."""
    from llm_energy.analysis.figures import batch_column, energy_throughput_vs_batch

    summary = small_summary(failed=False).head(3).assign(backend="tensorrt-llm", dtype="bfloat16")
    summary = summary.rename(columns={"batch_size": "max_batch_size"})
    assert list(batch_column(summary)) == [1, 2, 4]
    paths = energy_throughput_vs_batch(summary, tmp_path / "batch")
    svg = next(p for p in paths if p.suffix == ".svg").read_text()
    assert "no successful cells with a batch size" not in svg


def _rate_sweep_summary() -> pd.DataFrame:
    """A vLLM server cell at 3 offered rates: goodput falls behind the rate at 4 req/s, where
    attainment (0.5) misses the 0.9 target; an offline cell has no rate."""
    rows = []
    for i, (rate, attainment) in enumerate(((1.0, 1.0), (2.0, 0.95), (4.0, 0.5))):
        rows.append({"cell_id": f"c{i}", "model": "m", "backend": "vllm", "status": "ok",
                     "mode": "server", "request_rate_per_s": rate, "slo_attainment": attainment,
                     "goodput_requests_per_s": rate * attainment,
                     "energy_per_slo_request_j": 10.0 / attainment,
                     "energy_source": "estimate", "slo_ttft_ms": 500.0, "slo_tpot_ms": None,
                     "slo_e2e_ms": None, "slo_target_attainment": 0.9})
    rows.append({**rows[0], "cell_id": "off", "mode": "offline", "request_rate_per_s": None})
    return pd.DataFrame(rows)


def test_energy_vs_goodput_uses_the_rate_axis_and_marks_the_slo(tmp_path):
    summary = _rate_sweep_summary()
    assert figures.rate_sweep(summary[summary["status"] == "ok"])
    assert figures.slo_text(summary) == "SLO: TTFT ≤ 500 ms; target 90%"
    figures.energy_vs_goodput(summary, tmp_path / "energy_vs_goodput")
    check_figure_files(tmp_path / "energy_vs_goodput")
    svg = (tmp_path / "energy_vs_goodput.svg").read_text()
    # 2 req/s is the highest rate whose attainment (0.95) meets the 0.9 target.
    assert "SLO met up to 2 req/s" in svg and "Offered request rate" in svg
    assert "SLO: TTFT ≤ 500 ms; target 90%" in svg
    # Without a rate sweep: energy against goodput.
    figures.energy_vs_goodput(summary.iloc[:1], tmp_path / "one")
    assert "Offered request rate" not in (tmp_path / "one.svg").read_text()


def test_per_cell_power_figures_are_opt_in_and_analysis_only(tmp_path):
    """`figures.power_per_cell` (default off): the workflow plans the per-cell power figures
    only when asked, and the key changes no cell id."""
    import yaml
    from conftest import dry_run_jobs

    from llm_energy.study.config import validate_study
    from llm_energy.study.identity import roles
    from llm_energy.study.matrix import expand

    study = {"name": "opt-in", "models": [{"name": "tiny", "demo": {}}],
             "backends": {"transformers": {"batch_size": [1, 2]}}}
    on = study | {"figures": {"power_per_cell": True}}
    assert roles()["figures"] == "analysis-only"
    assert validate_study(study).figures.power_per_cell is False
    ids = [c.cell_id for c in expand(validate_study(study))[0]]
    assert [c.cell_id for c in expand(validate_study(on))[0]] == ids and len(ids) == 2
    jobs = {}
    for name, config in (("off", study), ("on", on)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        jobs[name] = dry_run_jobs(tmp_path / name, path)
    assert "power_figures" not in jobs["off"] and jobs["off"]["report"] == 1
    assert jobs["on"]["power_figures"] == 1
    assert jobs["on"]["figures"] == jobs["off"]["figures"] == 1


def test_ttft_boxes_are_per_model_and_backend_past_the_cell_limit(tmp_path, monkeypatch):
    """Past MAX_CELL_BOXES cells the TTFT box plot has one box per model and backend,
    holding all their cells' successful requests."""
    summary = pd.DataFrame([{"cell_id": f"c{k}", "model": f"m{k % 2}", "backend": "transformers",
                             "batch_size": k + 1, "dtype": "float32", "status": "ok"}
                            for k in range(4)])
    requests = pd.DataFrame([{"cell_id": f"c{k}", "ttft_ms": 10.0 * k + r, "success": r < 2}
                             for k in range(4) for r in range(3)])
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.append(fig) or [])
    monkeypatch.setattr(figures, "MAX_CELL_BOXES", 3)
    figures.ttft_distribution(summary, requests, tmp_path / "t")
    ax = drawn[-1].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["m0 · transformers",
                                                            "m1 · transformers"]
    # m0: cells 0 and 2, successful requests r = 0, 1: TTFT 0, 1, 20, 21 -> median 10.5.
    # m1: cells 1 and 3: TTFT 10, 11, 30, 31 -> median 20.5.
    medians = [line.get_ydata()[0] for line in ax.lines
               if line.get_color() == figures.OKABE_ITO[3]]
    assert medians == [10.5, 20.5]
    monkeypatch.setattr(figures, "MAX_CELL_BOXES", 4)
    figures.ttft_distribution(summary, requests, tmp_path / "t")
    assert len(drawn[-1].axes[0].get_xticklabels()) == 4  # one box per cell


def test_many_points_are_rasterized_without_batch_labels(tmp_path):
    """Below RASTER_FROM points every point is a vector mark labelled by its batch size; from
    RASTER_FROM on (10,000 cells made a 12.5 MB SVG and minutes of text layout) the points
    and bars are one embedded image in the SVG, the labels are left out and the figure says
    so, and a legend of many series sits beside the axes."""
    def summary(n: int, models: int) -> pd.DataFrame:
        return pd.DataFrame([{
            "cell_id": f"c{k}", "model": f"m{k % models}", "backend": "transformers",
            "batch_size": 7 + k % 3, "dtype": "float32", "status": "ok",
            "energy_per_output_token_j": 0.1 + k / n, "itl_ms_p50": 1.0 + (k * 7919 % n) / n,
            "output_tokens_per_s": 100.0 + k} for k in range(n)])

    few = figures.energy_vs_itl(summary(figures.RASTER_FROM - 1, 2), tmp_path / "few")
    svg = few[1].read_text()
    assert "<image" not in svg and svg.count(">7<") + svg.count(">8<") + svg.count(">9<") > 0
    assert "batch labels left out" not in svg
    many = figures.energy_vs_itl(summary(figures.RASTER_FROM, 20), tmp_path / "many")
    svg = many[1].read_text()
    assert svg.count("<image") >= 1
    assert f"{figures.RASTER_FROM} points: batch labels left out" in svg
    # 20 series + the frontier: beside the axes, so the saved figure is wider than the axes'.
    assert png_size(many[2])[0] > png_size(few[2])[0] * 1.3
    for path in many:
        assert path.stat().st_size < 400_000, path
