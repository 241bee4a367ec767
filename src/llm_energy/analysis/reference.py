"""Published measurements read as a reference (`references:` in the study config), so the
figures and the report put the study's cells beside them: "your H100 against ML.ENERGY's H100".

Readers, one per `references[].kind` (`study.sections.ReferenceKind`):

- `mlenergy-leaderboard`: a task file of the ML.ENERGY leaderboard app, `data/tasks/<task>.json`
  (`TaskData` of ml-energy/leaderboard `src/types.ts`): one row per `Configuration`. A file
  written by this project's export (`analysis.export`) reads the same way, its namespaced
  `llm_energy` object giving backend, settings and device.
- `mlenergy-benchmark`: an ml-energy/benchmark `results.json` (`mlenergy/benchmark/llm/
  benchmark.py`, `main`), turned into the leaderboard's fields by the leaderboard's own rules
  (ml-energy/data `mlenergy_data/records/runs.py`, `_llm_row`): energy per token, power and
  throughput of the steady-state window (GPU energy), `avg_output_len` = output tokens ÷
  completed requests, ITL percentiles over the successful requests' client-side gaps with
  chunked tokens spread evenly, the average batch from `prometheus.json` beside it.

Field names become this project's column names by inverting the export's one mapping (the
column registry's export names, `schema.export_columns()`, and `export.KEY_FIELDS` /
`ROLE_FIELDS`): ML.ENERGY's numbers are the steady-state window's, so a field with a column
per window maps to its steady-state column (`energy_per_token_joules` ->
`steady_state_energy_per_output_token_j`). Each row also has `source` ("reference: <label>")
and the keys it is matched by: `model_id`, `gpu_model`, `num_gpus`. A row matches a cell of
the same model (the study model whose `hub_id`, else name, is the row's model id; or
`references[].models`), on the same device kind, whose device name contains every word of the
row's GPU name ("H100" matches "NVIDIA H100 80GB HBM3"); `matched_cells` lists them."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llm_energy.analysis.export import KEY_FIELDS, ROLE_FIELDS
from llm_energy.backends import registry
from llm_energy.results import schema

#: ml-energy/benchmark serves every LLM with vLLM (benchmark.py `spawn_vllm`): the registry
#: backend whose settings its `max_num_seqs` and tensor parallelism are.
ENGINE = "vllm"
#: The window ML.ENERGY's energy, power and throughput are measured in.
WINDOW = "steady_state"
#: ML.ENERGY measures GPU energy only, with Zeus's NVML energy counter.
ENERGY_SOURCE = "nvml-counter"
KEYS = ("model_id", "gpu_model", "num_gpus")


def field_columns(window: str = WINDOW) -> dict[str, str]:
    """ML.ENERGY field -> this project's column in `window`: the export's mapping inverted."""
    return {field: by_window.get(window) or by_window[None]
            for field, by_window in schema.export_columns().items()
            if by_window.get(window) or by_window.get(None)}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def to_row(config: Mapping[str, Any], label: str, index: int) -> dict[str, Any]:
    """One leaderboard `Configuration` as a row with this project's column names."""
    ours = config.get("llm_energy") or {}
    backend = ours.get("backend") or ENGINE
    spec = registry.find(backend)
    row: dict[str, Any] = {
        "source": f"reference: {label}", "reference_id": f"{label}#{index}",
        **{k: config.get(k) for k in KEYS}, "status": "ok", "backend": backend,
        "device": ours.get("device") or "cuda",
        "device_name": ours.get("device_name") or config.get("gpu_model"),
        "energy_source": ours.get("energy_source") or ENERGY_SOURCE,
        **{k: v for k, v in (ours.get("settings") or {}).items()}}
    row["num_gpus"] = _int(row["num_gpus"])
    for field, column in KEY_FIELDS.items():
        if config.get(field) is not None:
            row[column] = config[field]
    for field, role in ROLE_FIELDS.items():
        setting = getattr(spec, role, None) if spec is not None else None
        if setting and config.get(field) is not None:
            row[setting] = _int(config[field])
    # This project's export keeps the fields the app has no place for in `llm_energy`.
    for field, column in field_columns(ours.get("energy_window") or WINDOW).items():
        value = config[field] if field in config else ours.get(field)
        if value is not None:
            row[column] = _number(value)
    return row


def _frame(configs: Sequence[Mapping[str, Any]], label: str, where: str) -> pd.DataFrame:
    for i, config in enumerate(configs):
        for field in ("model_id", "gpu_model", "energy_per_token_joules"):
            if not isinstance(config, Mapping) or config.get(field) is None:
                raise ValueError(f"{where}: configuration {i} has no '{field}'")
    return pd.DataFrame([to_row(c, label, i) for i, c in enumerate(configs)])


def read_leaderboard(path: str | Path, label: str) -> pd.DataFrame:
    """A leaderboard task file (`data/tasks/<task>.json`) as reference rows."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("configurations"), list):
        raise ValueError(f"{path}: not a leaderboard task file (no 'configurations' list)")
    return _frame(doc["configurations"], label, str(path))


def _spread_chunks(gaps: Sequence[float]) -> list[float]:
    """Client-side inter-token gaps with chunked tokens spread evenly, as the leaderboard does:
    leading zeros dropped; a gap followed by k zero gaps (k + 1 tokens in one chunk) becomes
    k + 1 gaps of a (k + 1)-th of it."""
    out: list[float] = []
    values = [float(g) for g in gaps]
    i = next((k for k, g in enumerate(values) if g > 0), len(values))
    while i < len(values):
        if values[i] <= 0:  # a zero after a negative value: nothing to spread
            i += 1
            continue
        j = i + 1
        while j < len(values) and values[j] == 0:
            j += 1
        out += [values[i] / (j - i)] * (j - i)
        i = j
    return out


def benchmark_configuration(results: Mapping[str, Any],
                            prometheus: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An ml-energy/benchmark `results.json` (and its `prometheus.json`) as the leaderboard's
    `Configuration` fields (ml-energy/data's `_llm_row`), plus the export's other fields it has
    (`total_energy_joules`, `steady_state_duration_seconds`, `duration_seconds`,
    `total_output_tokens`, `num_requests`)."""
    def need(key: str) -> float:
        value = _number(results.get(key))
        if value is None:
            raise ValueError(f"no '{key}'")
        return value

    energy, duration = need("steady_state_energy"), need("steady_state_duration")
    per_token = need("steady_state_energy_per_token")
    if duration <= 0:
        raise ValueError(f"'steady_state_duration' is {duration}: no steady state")
    completed, tokens = _number(results.get("completed")), _number(results.get("total_output_tokens"))
    avg_out = tokens / completed if completed and tokens is not None else None
    throughput = energy / per_token / duration if per_token > 0 \
        else _number(results.get("output_throughput"))
    gaps = [g for r in results.get("results") or [] if r.get("success")
            for g in _spread_chunks(r.get("itl") or [])]
    if gaps:
        ms = np.asarray(gaps) * 1000.0
        itl = {f"{'median' if q == 50 else f'p{q}'}_itl_ms": float(np.percentile(ms, q))
               for q in (50, 90, 95, 99)}
    else:  # per-request gaps stripped: the benchmark's own (unspread) percentiles
        itl = {k: _number(results.get(k)) for k in ("median_itl_ms", "p90_itl_ms",
                                                     "p95_itl_ms", "p99_itl_ms")}
    batch = ((prometheus or {}).get("steady_state_stats") or {}).get("vllm:num_requests_running")
    return {
        "model_id": results.get("model_id"), "gpu_model": results.get("gpu_model"),
        "num_gpus": _int(results.get("num_gpus")), "max_num_seqs": _int(results.get("max_num_seqs")),
        "energy_per_token_joules": per_token,
        "energy_per_request_joules": per_token * avg_out if avg_out and per_token > 0 else None,
        "avg_output_len": avg_out, "avg_power_watts": energy / duration,
        "output_throughput_tokens_per_sec": throughput, **itl,
        "avg_batch_size": _number(batch), "total_energy_joules": energy,
        "steady_state_duration_seconds": duration,
        "duration_seconds": _number(results.get("duration")),
        "total_output_tokens": _int(tokens), "num_requests": _int(completed),
    }


def read_benchmark(path: str | Path, label: str) -> pd.DataFrame:
    """An ml-energy/benchmark `results.json` (one run) as one reference row."""
    path = Path(path)
    results = json.loads(path.read_text())
    prom = path.with_name("prometheus.json")
    try:
        config = benchmark_configuration(results, json.loads(prom.read_text())
                                         if prom.is_file() else None)
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"{path}: not an ML.ENERGY benchmark results.json: {exc}") from None
    return _frame([config], label, str(path))


#: `references[].kind` -> reader (the kinds are declared in `study.sections.ReferenceKind`).
READERS = {"mlenergy-leaderboard": read_leaderboard, "mlenergy-benchmark": read_benchmark}


def _words(name: Any) -> set[str]:
    return set(re.findall(r"[A-Z0-9]+", str(name or "").upper()))


def same_gpu(reference_name: Any, device_name: Any) -> bool:
    """Every word of the reference's GPU name is a word of the cell's device name."""
    words = _words(reference_name)
    return bool(words) and words <= _words(device_name)


def match(reference: pd.DataFrame, summary: pd.DataFrame,
          model_ids: Mapping[str, str]) -> pd.DataFrame:
    """`reference` with `model` set to the study model each row matches (else its model id)
    and `matched_cells`: the successful cells of that model on the same GPU."""
    ok = summary[summary["status"] == "ok"] if len(summary) else summary
    out = reference.copy()
    models, cells = [], []
    for _, row in reference.iterrows():
        names = [m for m, i in model_ids.items()
                 if str(i).lower() == str(row["model_id"]).lower()]
        found: list[str] = []
        for name in names:
            mine = ok[(ok["model"] == name) & (ok["device"] == row["device"])] \
                if len(ok) else ok
            found += [c["cell_id"] for _, c in mine.iterrows()
                      if same_gpu(row["device_name"], c.get("device_name"))]
        models.append(names[0] if names else row["model_id"])
        cells.append(found)
    out["model"], out["matched_cells"] = models, cells
    return out


def load_references(references: Sequence[Mapping[str, Any]], summary: pd.DataFrame,
                    model_ids: Mapping[str, str]) -> pd.DataFrame | None:
    """The study's `references` (their config entries) read and matched to `summary`; None
    when the study has none."""
    if not references:
        return None
    frames = []
    for ref in references:
        frame = READERS[ref["kind"]](Path(ref["path"]).expanduser(), ref["label"])
        frames.append(match(frame, summary, {**model_ids, **(ref.get("models") or {})}))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- report section

_SHOWN = ("energy_per_token_joules", "output_throughput_tokens_per_sec", "avg_power_watts",
          "median_itl_ms", "avg_batch_size")


def _fmt(value: Any, digits: int = 4) -> str:
    number = _number(value)
    return "—" if number is None else f"{number:.{digits}g}"


def _matches(row: pd.Series) -> list[str]:
    """The study cells a reference row matches (none when it was not matched, e.g. rows
    built by hand without `matched_cells`)."""
    cells = row.get("matched_cells")
    return [] if cells is None or (isinstance(cells, float) and pd.isna(cells)) else list(cells)


def report_section(reference: pd.DataFrame | None, summary: pd.DataFrame) -> str:
    """The report's "Reference data" section: every reference row, what it is matched by and
    the study's cells it matches (with their steady-state energy per token)."""
    if reference is None:
        return ""
    esc = html.escape
    columns = field_columns()
    energy = columns["energy_per_token_joules"]
    by_cell = summary.set_index("cell_id") if len(summary) else summary
    head = ["reference", "model id", "GPU", "GPUs", "batch", "precision",
            # The labels of the same metrics' whole-cycle columns (the report table's).
            *(schema.column(field_columns("cycle")[f]).display for f in _SHOWN),
            "matching cells of this study (steady-state J/token)"]
    rows = []
    for _, r in reference.iterrows():
        mine = [f"<code>{esc(c)}</code> (b={registry.batch_limit_of(by_cell.loc[c]) or '—'}: "
                f"{_fmt(by_cell.loc[c].get(energy))})" for c in _matches(r)]
        cells = [r["source"], r.get("model_id"), r.get("gpu_model"), r.get("num_gpus"),
                 registry.batch_limit_of(r), r.get("dtype")]
        rows.append("<tr>" + "".join(f'<td class="t">{esc(str(_show(v)))}</td>' for v in cells)
                    + "".join(f"<td>{_fmt(r.get(columns[f]))}</td>" for f in _SHOWN)
                    + f'<td class="t">{", ".join(mine) or "none (no cell of this model on this GPU)"}'
                    + "</td></tr>")
    matched = int(sum(bool(_matches(r)) for _, r in reference.iterrows()))
    return ("<h2 id=\"reference\">Reference data</h2>"
            f"<p>{len(reference)} reference row(s), {matched} matching cells of this study "
            "(same model, same GPU). Reference numbers are the publisher's, not measured here: "
            "ML.ENERGY's energy is GPU energy only, in the steady-state window; compare with "
            "the cells' steady-state columns (figures <code>reference_*</code>).</p>"
            '<table class="reference"><thead><tr>'
            + "".join(f'<th class="t">{esc(h)}</th>' for h in head)
            + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _show(value: Any) -> Any:
    return "—" if value is None or (isinstance(value, float) and not np.isfinite(value)) \
        else value
