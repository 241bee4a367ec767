"""Latency SLOs per request and the per-cycle counts the summary aggregates into SLO
attainment, goodput and energy per SLO-meeting request (columns declared in
`results.schema.DERIVED`; method: docs/methodology.md#slos-and-goodput).

A request meets the SLO when it succeeded and each threshold of the study's `slo:` section
holds for it: `ttft_ms`, `tpot_ms`, `e2e_ms` of requests.parquet ≤ the threshold. This is the
per-request test of vLLM's `bench serve --goodput` and aiperf's `--goodput`. A missing TPOT
(an answer of one token has no gap) meets a TPOT threshold, as vLLM counts it as 0 ms; any
other missing latency does not meet its threshold."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

#: The per-cycle counts added to the runs table (numerators and denominators of the ratios).
CYCLE_COLUMNS = ("requests_sent", "slo_requests", "slo_output_tokens")
#: Summary column of each threshold: `slo_<requests column>`; and of the target.
SUMMARY_PREFIX = "slo_"
TARGET_COLUMN = "slo_target_attainment"


def _config(slo: Mapping[str, Any] | Any):
    from llm_energy.study.config import SloConfig

    return slo if isinstance(slo, SloConfig) else SloConfig(**dict(slo))


def meets_slo(requests: pd.DataFrame, slo: Mapping[str, Any] | Any) -> np.ndarray:
    """Per row of `requests` (requests.parquet columns), True when the request succeeded and
    met every threshold set in `slo` (an `SloConfig` or its dict). Shape: (len(requests),)."""
    config = _config(slo)
    ok = requests["success"].fillna(False).astype(bool).to_numpy().copy()
    for column, limit in config.thresholds().items():
        values = pd.to_numeric(requests[column], errors="coerce").to_numpy(dtype=float)
        within = values <= limit
        if column == "tpot_ms":
            within |= np.isnan(values)
        ok = ok & within
    return ok


def with_slo_columns(runs: pd.DataFrame, requests: pd.DataFrame | None,
                     slo: Mapping[str, Any] | Any) -> pd.DataFrame:
    """`runs` with `requests_sent`, `slo_requests` and `slo_output_tokens` per (cell, cycle),
    counted from `requests` (null for cycles without request rows)."""
    runs = runs.copy()
    counts: dict[tuple[str, int], tuple[int, int, int]] = {}
    if requests is not None and len(requests):
        good = meets_slo(requests, slo)
        tokens = pd.to_numeric(requests["output_tokens"], errors="coerce").fillna(0).to_numpy()
        frame = pd.DataFrame({"cell_id": requests["cell_id"].to_numpy(),
                              "cycle": pd.to_numeric(requests["cycle"], errors="coerce"),
                              "sent": 1, "good": good.astype(int), "tokens": tokens * good})
        grouped = frame.groupby(["cell_id", "cycle"])[["sent", "good", "tokens"]].sum()
        counts = {(c, int(k)): (int(v.sent), int(v.good), int(v.tokens))
                  for (c, k), v in grouped.iterrows()}
    found = [counts.get((c, int(k))) if not pd.isna(k) else None
             for c, k in zip(runs["cell_id"], runs["cycle"])]
    for i, name in enumerate(CYCLE_COLUMNS):
        runs[name] = pd.array([f[i] if f else None for f in found], dtype="Int64")
    return runs


def slo_settings(slo: Mapping[str, Any] | Any) -> dict[str, float | None]:
    """The summary's record of the SLO used: `slo_<threshold>` (null: not checked) and
    `slo_target_attainment`."""
    config = _config(slo)
    out: dict[str, float | None] = {
        SUMMARY_PREFIX + name: getattr(config, name)
        for name in type(config).model_fields if name.endswith("_ms")}
    out[TARGET_COLUMN] = config.target_attainment
    return out
