"""Scale benchmark: how planning, `snakemake -n` and aggregation grow with the cell count.

    .venv/bin/python bench/scale.py                 # 100, 1,000 and 10,000 cells (~10 min)
    .venv/bin/python bench/scale.py --quick         # 100 cells only (smoke test, ~30 s)
    .venv/bin/python bench/scale.py --sizes 10000 --json out.json
    .venv/bin/python bench/scale.py --commits OLD NEW --sizes 10000 --rounds 3 --doc docs/scale.md

With `--commits OLD NEW`, `snakemake -n` runs on each commit's own checkout (`git archive`
into the work directory; `.` names this working tree, uncommitted changes included), same
study and same snakemake, alternated ABBA... over `--rounds`, and NEW / OLD (medians) is
reported and, with `--doc`, written into the doc's block between the markers
`<!-- scale:commits -->` and `<!-- /scale:commits -->`.

Targets at 10,000 cells (docs/scale.md): config validation + matrix expansion < 2 s;
`snakemake -n` < 60 s; aggregation < 30 s and < 2 GiB peak memory.

The study: path models (all pointing to one tiny directory holding a config.json, as a
study over local checkpoints does) x the transformers backend's batch sizes x two dtypes,
100 cells per model. Aggregation reads synthetic cells written with `results.write_cell`
(3 cycles each): `runs` cells have no request rows (the summary of runs.parquet alone),
`requests` cells carry 16 requests x 3 cycles x 32 output tokens like the default study,
which adds the per-cell bootstrap of the latency percentiles.

Every stage runs in a fresh child process; its time is the child's own measurement, its
peak memory the child's maximum resident set size (os.wait4), Python and imports included.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

CELLS_PER_MODEL = 100
TARGETS_10K = {"plan": ("duration_s", 2.0), "dryrun": ("duration_s", 60.0),
               "aggregate_runs": ("duration_s", 30.0), "publish_total": ("duration_s", 300.0)}
MEMORY_TARGET_MIB = 2048
REQUESTS_PER_CYCLE, CYCLES, OUTPUT_TOKENS = 16, 3, 32


# ---------------------------------------------------------------- the study


def study_dict(n_cells: int, model_dir: Path) -> dict:
    if n_cells % 2:
        raise SystemExit("cell counts must be even (two dtypes per batch size)")
    per_model = min(n_cells, CELLS_PER_MODEL)
    if n_cells % per_model:
        raise SystemExit(f"cell counts above {CELLS_PER_MODEL} must be multiples of it")
    return {
        "name": f"scale-{n_cells}",
        "models": [{"name": f"model-{i:05d}", "path": str(model_dir)}
                   for i in range(n_cells // per_model)],
        "backends": {"transformers": {"batch_size": list(range(1, per_model // 2 + 1)),
                                      "dtype": ["float32", "bfloat16"]}},
        "measurement": {"threads": 1},
    }


def write_study(workdir: Path, n_cells: int) -> Path:
    import yaml

    model_dir = workdir / "tiny-model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(
        {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
         "vocab_size": 1000, "max_position_embeddings": 2048}))
    path = workdir / f"study-{n_cells}.yaml"
    path.write_text(yaml.safe_dump(study_dict(n_cells, model_dir), sort_keys=False))
    return path


# ---------------------------------------------------------------- stages (child processes)


def stage_plan(study_path: Path) -> dict:
    """What the Snakefile does before the DAG: parse, validate, expand, and answer every
    per-job question (inputs, params, resources) once per cell."""
    import yaml

    from llm_energy.study.plan import plan_from_config

    t0 = time.perf_counter()
    plan = plan_from_config(yaml.safe_load(study_path.read_text()), str(ROOT))
    t1 = time.perf_counter()
    plan.matrix_csv()
    plan.runs_files()
    for cell in plan.cells.values():
        plan.model_input(cell.model)
        plan.model_path(cell.model)
        plan.cell_params(cell.cell_id)
        plan.mem_mb(cell.model, cell.backend)
        plan.software(cell.backend)
    t2 = time.perf_counter()
    return {"cells": len(plan.cells), "duration_s": t2 - t0, "validate_expand_s": t1 - t0,
            "per_job_lookups_s": t2 - t1}


#: Power samples per synthetic cell of the publish stages (1 device, 10 Hz over 30 s).
POWER_SAMPLES = 300


def _synthetic_cell(args: tuple[Path, int, bool] | tuple[Path, int, bool, bool]) -> None:
    from llm_energy.results import io as results

    out, index, with_requests, *series = args
    rng = random.Random(index)
    cell_id = f"{index:012x}"
    settings = {"batch_size": index % 50 + 1, "dtype": ("float32", "bfloat16")[index % 2],
                "attn_implementation": "sdpa", "torch_compile": False}
    runs, requests = [], []
    for cycle in range(CYCLES):
        duration = 2.0 + rng.random()
        energy = 40.0 + 5 * rng.random()
        tokens = REQUESTS_PER_CYCLE * OUTPUT_TOKENS
        runs.append({
            "cell_id": cell_id, "cycle": cycle, "model": f"model-{index // CELLS_PER_MODEL:05d}",
            "backend": "transformers", **settings, "device": "cpu", "device_name": "cpu",
            "status": "ok", "warnings": ["energy is estimated"],
            "cpu_energy_j": energy, "cpu_energy_source": "estimate", "total_energy_j": energy,
            "energy_source": "estimate", "idle_power_w": 5.0, "net_energy_j": energy - 5 * duration,
            "duration_s": duration, "input_tokens": REQUESTS_PER_CYCLE * 64,
            "output_tokens": tokens, "requests": REQUESTS_PER_CYCLE,
            "energy_per_output_token_j": energy / tokens,
            "energy_per_request_j": energy / REQUESTS_PER_CYCLE,
            "output_tokens_per_s": tokens / duration, "avg_power_w": energy / duration,
            **{f"{m}_ms_p{q}": 10.0 + rng.random() for m in ("ttft", "itl", "tpot", "e2e")
               for q in (50, 90, 95, 99)},
            "flops_per_token": 1e6, "achieved_tflops": 1e-3, "peak_memory_mb": 300.0,
            "load_duration_s": 0.5, "warmup_runs": 1,
        })
        if not with_requests:
            continue
        for request in range(REQUESTS_PER_CYCLE):
            first = 0.05 + 0.01 * rng.random()
            itl = [20.0 + rng.random() for _ in range(OUTPUT_TOKENS - 1)]
            finish = first + sum(itl) / 1000
            requests.append({
                "cell_id": cell_id, "cycle": cycle, "request_id": request, "input_tokens": 64,
                "output_tokens": OUTPUT_TOKENS, "arrival_s": 0.0, "first_token_s": first,
                "finish_s": finish, "ttft_ms": first * 1000, "tpot_ms": sum(itl) / len(itl),
                "e2e_ms": finish * 1000, "itl_ms": itl,
                "energy_j": energy / REQUESTS_PER_CYCLE, "success": True})
    timeseries = [{"t_s": 0.1 * k, "device": "cpu", "power_w": 20.0 + 5 * rng.random(),
                   "power_source": "estimate", "phase": "idle" if k < 30 else f"cycle{k * 3 // 300}"}
                  for k in range(POWER_SAMPLES)] if series and series[0] else []
    results.write_cell(out / "cells" / runs[0]["model"] / "transformers" / cell_id,
                       runs, requests, timeseries,
                       {"cell_config": {"cell_id": cell_id}, "host": "scale-bench"})


def synthetic_results(workdir: Path, n_cells: int, with_requests: bool) -> Path:
    """N synthetic cells, written once and reused by later runs (the marker says so)."""
    out = workdir / f"results-{n_cells}-{'requests' if with_requests else 'runs'}"
    marker = out / ".complete"
    if not marker.exists():
        jobs = [(out, i, with_requests) for i in range(n_cells)]
        with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
            list(pool.map(_synthetic_cell, jobs, chunksize=64))
        marker.write_text(str(n_cells))
    return out


def publish_results(workdir: Path, n_cells: int) -> Path:
    """N synthetic cells with requests and POWER_SAMPLES power samples each (the input of
    the figures, report and export rules), written once and reused (the marker says so)."""
    out = workdir / f"results-{n_cells}-publish"
    marker = out / ".complete"
    if not marker.exists():
        jobs = [(out, i, True, True) for i in range(n_cells)]
        with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
            list(pool.map(_synthetic_cell, jobs, chunksize=64))
        marker.write_text(str(n_cells))
    return out


def _cell_dirs(results_dir: Path) -> list[Path]:
    return sorted(p.parent for p in results_dir.glob("cells/*/*/*/runs.parquet"))


def stage_figures(results_dir: Path) -> dict:
    """The figures rule's work by default (study figures; per-cell power figures are opt-in)."""
    import shutil

    from llm_energy.execution import stages

    shutil.rmtree(results_dir / "figures", ignore_errors=True)
    t0 = time.perf_counter()
    stages.figures(results_dir / "summary.parquet", _cell_dirs(results_dir), results_dir / "figures")
    return {"duration_s": time.perf_counter() - t0,
            "files": len(list((results_dir / "figures").glob("*")))}


def stage_report(results_dir: Path) -> dict:
    """The report rule's work (2 processes read the cells' details, as `--cores 2` gives)."""
    import pandas as pd

    from llm_energy.analysis.figures import figure_names
    from llm_energy.execution import stages

    dirs = _cell_dirs(results_dir)
    matrix = results_dir / "matrix.csv"
    pd.DataFrame({"cell_id": [d.name for d in dirs], "model": [d.parent.parent.name for d in dirs],
                  "backend": "transformers", "status": "planned"}).to_csv(matrix, index=False)
    figures = [results_dir / "figures" / f"{name}.png" for name in figure_names(False)]
    out = results_dir / "report.html"
    t0 = time.perf_counter()
    stages.report(results_dir / "summary.parquet", matrix, [f for f in figures if f.is_file()],
                  [d / "provenance.json" for d in dirs], [], out, "scale", cell_dirs=dirs,
                  workers=2)
    return {"duration_s": time.perf_counter() - t0, "mib": out.stat().st_size / 2**20}


def stage_export(results_dir: Path) -> dict:
    """The export_mlenergy rule's work (parameter counts from the study's tiny checkpoint)."""
    import shutil

    import pandas as pd

    from llm_energy.execution import stages

    shutil.rmtree(results_dir / "mlenergy", ignore_errors=True)
    summary = results_dir / "summary.parquet"
    models = sorted(pd.read_parquet(summary, columns=["model"])["model"].unique())
    t0 = time.perf_counter()
    stages.export(summary, results_dir / "mlenergy", "scale",
                  {m: str(results_dir.parent / "tiny-model") for m in models})
    return {"duration_s": time.perf_counter() - t0}


def stage_browser(report: Path) -> dict:
    """The report in headless Chromium (the browser tests' launcher): time to the `load`
    event (navigation start to load end, as the page measures it), then one filter change
    (unticking the first model: the tables and both charts redrawn, layout forced)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import tempfile

    from test_report_browser import Chromium

    with tempfile.TemporaryDirectory() as profile:
        chrome = Chromium(Path(profile))
        try:
            chrome.events.clear()
            t0 = time.perf_counter()
            chrome.send("Page.navigate", {"url": report.resolve().as_uri()}, session=True)
            chrome.wait_event("Page.loadEventFired", timeout=600)
            wall = time.perf_counter() - t0
            load_s = chrome.eval("(performance.timing.loadEventEnd||performance.now())"
                                 "-performance.timing.navigationStart") / 1000
            filter_s = chrome.eval("""(function(){var b=document.querySelector(
                'input[data-facet=model]');var t=performance.now();b.click();
                document.body.offsetHeight;return performance.now()-t;})()""") / 1000
            shown = chrome.eval("document.getElementById('shown-count').textContent")
        finally:
            chrome.close()
    return {"duration_s": load_s, "load_wall_s": wall, "filter_s": filter_s, "shown": shown}


#: The stages `--stages publish` times, each in a fresh process, after the aggregation.
PUBLISH = {"figures": stage_figures, "report": stage_report, "export": stage_export}
PUBLISH_TARGET_S = 300.0


def stage_aggregate(results_dir: Path) -> dict:
    """The aggregate rule's work: read every cell, summarise, write the summary."""
    from llm_energy.analysis.summary import aggregate, write_summary

    paths = sorted(str(p) for p in results_dir.glob("cells/*/*/*/runs.parquet"))
    t0 = time.perf_counter()
    agg = aggregate(paths)
    write_summary(agg, results_dir / "summary.parquet", results_dir / "summary.csv")
    duration = time.perf_counter() - t0
    return {"cells": len(agg.summary), "runs_rows": len(agg.runs), "problems": len(agg.problems),
            "duration_s": duration}


# ---------------------------------------------------------------- driver


def _measure(cmd: list[str], cwd: Path = ROOT, timeout_s: float = 3600) -> tuple[int, str, float, float]:
    """(exit status, stdout+stderr, wall seconds, peak RSS in MiB) of a child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    # Read before waiting (a full pipe would block the child); then wait4 for its rusage.
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    return proc.returncode, output, wall, usage.ru_maxrss / 1024  # Linux: KiB


def _child_stage(stage: str, arg: Path) -> dict:
    code, output, wall, rss = _measure([sys.executable, __file__, "--stage", stage, str(arg)])
    if code != 0:
        raise SystemExit(f"stage {stage} failed:\n{output[-3000:]}")
    result = json.loads(output.strip().splitlines()[-1])
    return {**result, "wall_s": wall, "peak_rss_mib": rss}


def run_dryrun(workdir: Path, study: Path, n_cells: int, snakefile: Path = ROOT / "Snakefile",
               target: Path | None = None) -> dict:
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    target = target or workdir / f"dryrun-{n_cells}"
    target.mkdir(exist_ok=True)
    code, output, wall, rss = _measure([snakemake, "-s", str(snakefile), "--directory",
                                        str(target), "--configfile", str(study), "-n", "--quiet",
                                        "rules", "--cores", "2"])
    if code != 0:
        raise SystemExit(f"snakemake -n failed:\n{output[-3000:]}")
    # One measure rule per backend (`measure_<backend>`; `measure` before the registry).
    # Snakemake prints the job-stats table more than once: one count per rule name.
    measure = {line.split()[0]: int(line.split()[1]) for line in output.splitlines()
               if len(line.split()) == 2 and line.split()[1].isdigit()
               and (line.split()[0] == "measure" or line.split()[0].startswith("measure_"))}
    return {"cells": sum(measure.values()), "duration_s": wall, "wall_s": wall,
            "peak_rss_mib": rss}


# ---------------------------------------------------------------- two commits side by side

DOC_BEGIN, DOC_END = "<!-- scale:commits -->", "<!-- /scale:commits -->"


def checkout(commit: str, workdir: Path) -> tuple[str, Path]:
    """(resolved name, directory) of `commit`'s files: `.` is this working tree itself; any
    other commit is exported once with `git archive` (no worktree, no change to the repo).
    The checkout shares this one's environments (.venv, .venvs), so both commits see the
    same installed packages."""
    if commit == ".":
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                               capture_output=True, text=True).stdout.strip()
        head = _git("rev-parse", "--short=12", "HEAD")
        return f"{head}{'+changes' if dirty else ''} (working tree)", ROOT
    sha = _git("rev-parse", "--short=12", f"{commit}^{{commit}}")
    tree = workdir / f"tree-{sha}"
    if not (tree / "Snakefile").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        for env in (".venv", ".venvs"):
            if (ROOT / env).exists() and not (tree / env).exists():
                (tree / env).symlink_to((ROOT / env).resolve())
    return sha, tree


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def compare_commits(commits: list[str], n_cells: int, rounds: int, workdir: Path) -> dict:
    """`snakemake -n` of one study on two commits' checkouts, alternated: round r runs
    A then B when r is even, B then A when odd (ABBA), so drift in the machine's load hits
    both alike. Each run has its own fresh --directory."""
    import statistics

    study = write_study(workdir, n_cells)
    trees = [checkout(c, workdir) for c in commits]
    times: list[list[float]] = [[], []]
    for r in range(rounds):
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):
            name, tree = trees[k]
            target = workdir / f"dryrun-{n_cells}-{k}-{r}"
            dry = run_dryrun(workdir, study, n_cells, snakefile=tree / "Snakefile",
                             target=target)
            assert dry["cells"] == n_cells, f"{name}: {dry['cells']} measure jobs, not {n_cells}"
            times[k].append(dry["duration_s"])
            print(f"dryrun {n_cells} cells  {commits[k]} ({name})  round {r + 1}: "
                  f"{dry['duration_s']:.2f} s", flush=True)
    medians = [statistics.median(t) for t in times]
    return {"n_cells": n_cells, "rounds": rounds,
            "commits": [{"given": c, "resolved": t[0], "dryrun_s": times[k],
                         "median_s": medians[k]} for k, (c, t) in enumerate(zip(commits, trees))],
            "ratio_new_over_old": medians[1] / medians[0]}


def commits_table(result: dict) -> str:
    """The Markdown block written into docs/scale.md."""
    old, new = result["commits"]
    lines = [DOC_BEGIN,
             f"`snakemake -n` on {result['n_cells']:,} cells, {result['rounds']} rounds "
             f"alternated (ABBA), measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
             f"with `bench/scale.py --commits {old['given']} {new['given']} --sizes "
             f"{result['n_cells']} --rounds {result['rounds']}` ({os.cpu_count()} CPUs, load "
             f"average {os.getloadavg()[0]:.1f} at the end):", "",
             "| commit | runs (s) | median (s) |", "|---|---|---|"]
    for c in (old, new):
        runs = ", ".join(f"{t:.1f}" for t in c["dryrun_s"])
        lines.append(f"| {c['given']} = `{c['resolved']}` | {runs} | {c['median_s']:.1f} |")
    lines += ["", f"new ÷ old = **{result['ratio_new_over_old']:.3f}** (target ≤ 1.1)", DOC_END]
    return "\n".join(lines)


def write_doc(doc: Path, block: str) -> None:
    """Replace the marked block in `doc` (appended under a heading when absent)."""
    text = doc.read_text() if doc.exists() else ""
    if DOC_BEGIN in text and DOC_END in text:
        head, rest = text.split(DOC_BEGIN, 1)
        text = head + block + rest.split(DOC_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Two commits side by side\n\n" + block + "\n"
    doc.write_text(text)


def publish(workdir: Path, n: int, record) -> None:
    """Aggregation (with the requests' bootstrap), then figures, report and export from
    scratch, each in a fresh process; their sum against PUBLISH_TARGET_S; then Chromium."""
    results_dir = publish_results(workdir, n)
    write_study(workdir, n)  # the tiny checkpoint the export reads parameter counts from
    agg = _child_stage("aggregate", results_dir)
    assert agg["cells"] == n and agg["problems"] == 0, agg
    record("aggregate_publish", n, agg)
    total = 0.0
    for stage in PUBLISH:
        result = _child_stage(stage, results_dir)
        record(stage, n, result)
        total += result["wall_s"]
    print(f"figures + report + export at {n} cells, from the summary: {total:.1f} s "
          f"(wall, processes included; the summary's bootstrap not included: "
          f"+{agg['wall_s']:.1f} s, {total + agg['wall_s']:.1f} s with it); target at 10,000 "
          f"cells < {PUBLISH_TARGET_S:g} s; load average {os.getloadavg()[0]:.1f}", flush=True)
    record("publish_total", n, {"duration_s": total, "wall_s": total, "peak_rss_mib": 0.0})
    try:
        result = _child_stage("browser", results_dir / "report.html")
    except SystemExit as error:  # no Chromium here: say so, keep the numbers
        print(f"browser stage skipped: {str(error).splitlines()[-1]}")
        return
    print(f"Chromium: load {result['duration_s']:.1f} s, one filter change "
          f"{result['filter_s']:.2f} s ({result['shown']})", flush=True)
    record("browser_load", n, result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 cells only (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", help="cell counts (default 100 1000 10000)")
    parser.add_argument("--request-sizes", type=int, nargs="*",
                        help="cell counts for aggregation with request rows (default: 100 "
                             "and 1000; 100 with --quick)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llm-energy-scale"),
                        help="studies and synthetic cells (kept: reused by the next run)")
    parser.add_argument("--json", type=Path, help="write all numbers here")
    parser.add_argument("--stages", nargs="+", default=["plan", "dryrun", "aggregate"],
                        choices=("plan", "dryrun", "aggregate", "publish"),
                        help="which stages to run (publish: aggregation with requests, then "
                             "figures, report and export from scratch, then the report in "
                             "Chromium)")
    parser.add_argument("--commits", nargs=2, metavar=("OLD", "NEW"),
                        help="time `snakemake -n` on two commits side by side (`.`: this "
                             "working tree); only the dry run, at each of --sizes")
    parser.add_argument("--rounds", type=int, default=3,
                        help="with --commits: runs per commit, alternated (default 3)")
    parser.add_argument("--doc", type=Path,
                        help="with --commits: write the table into this Markdown file")
    parser.add_argument("--max-ratio", type=float, default=1.1,
                        help="with --commits: exit 1 when NEW / OLD exceeds this")
    parser.add_argument("--stage", choices=("plan", "aggregate", "browser", *PUBLISH),
                        help=argparse.SUPPRESS)
    parser.add_argument("stage_arg", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.stage:  # inside a child: print one JSON line
        run = {"plan": stage_plan, "aggregate": stage_aggregate, "browser": stage_browser,
               **PUBLISH}[args.stage]
        print(json.dumps(run(args.stage_arg)))
        return 0

    sizes = args.sizes or ([100] if args.quick else [100, 1000, 10000])
    if args.commits:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = [compare_commits(args.commits, n, args.rounds, args.workdir) for n in sizes]
        for result in results:
            print(f"{result['n_cells']} cells: new / old = {result['ratio_new_over_old']:.3f}")
        if args.doc:
            write_doc(args.doc, "\n\n".join(commits_table(r) for r in results)
                      .replace(f"{DOC_END}\n\n{DOC_BEGIN}\n", "\n\n"))
        if args.json:
            args.json.write_text(json.dumps({"commits": results}, indent=2))
        return 0 if all(r["ratio_new_over_old"] <= args.max_ratio for r in results) else 1
    request_sizes = args.request_sizes if args.request_sizes is not None else \
        ([100] if args.quick else [100, 1000])
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def record(stage: str, n: int, result: dict) -> None:
        rows.append({"stage": stage, "n_cells": n, **result})
        print(f"{stage:<20} {n:>6} cells  {result['duration_s']:8.2f} s  "
              f"{result['peak_rss_mib']:7.0f} MiB peak RSS  "
              f"({1000 * result['duration_s'] / n:.2f} ms/cell)", flush=True)

    for n in sizes:
        study = write_study(args.workdir, n)
        if "plan" in args.stages:
            plan = _child_stage("plan", study)
            assert plan["cells"] == n, plan
            record("plan", n, plan)
        if "dryrun" in args.stages:
            dry = run_dryrun(args.workdir, study, n)
            assert dry["cells"] == n, f"snakemake -n planned {dry['cells']} measure jobs, not {n}"
            record("dryrun", n, dry)
        if "aggregate" in args.stages:
            agg = _child_stage("aggregate", synthetic_results(args.workdir, n, with_requests=False))
            assert agg["cells"] == n and agg["problems"] == 0, agg
            record("aggregate_runs", n, agg)
        if "publish" in args.stages:
            publish(args.workdir, n, record)
    for n in request_sizes if "aggregate" in args.stages else []:
        agg = _child_stage("aggregate", synthetic_results(args.workdir, n, with_requests=True))
        assert agg["cells"] == n and agg["problems"] == 0, agg
        record("aggregate_requests", n, agg)

    verdicts = []
    for stage, (key, limit) in TARGETS_10K.items():
        at = [r for r in rows if r["stage"] == stage and r["n_cells"] == 10000]
        if at:
            r = at[0]
            ok = r[key] < limit and (not stage.startswith("aggregate")
                                     or r["peak_rss_mib"] < MEMORY_TARGET_MIB)
            verdicts.append({"stage": stage, "limit_s": limit, "value_s": r[key], "met": ok})
            print(f"target {stage} at 10,000 cells < {limit:g} s"
                  f"{' and < 2 GiB' if stage.startswith('aggregate') else ''}: "
                  f"{'met' if ok else 'MISSED'}")
    for stage in ("plan", "dryrun", "aggregate_runs", "aggregate_requests"):
        points = sorted((r["n_cells"], r["duration_s"]) for r in rows if r["stage"] == stage)
        if len(points) >= 2:
            (n0, t0), (n1, t1) = points[0], points[-1]
            exponent = math.log(t1 / t0) / math.log(n1 / n0) if t0 > 0 and t1 > 0 else float("nan")
            print(f"growth {stage}: time ~ cells^{exponent:.2f} ({n0} -> {n1} cells)")
    if args.json:
        args.json.write_text(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count(),
                                         "rows": rows, "targets": verdicts}, indent=2))
    return 0 if all(v["met"] for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
