"""The vocabulary of the column registry (`results.schema`): a column's kind, how it
aggregates across a cell's cycles, and the `Column` declaration itself; the latency
percentiles every latency column is reported at."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import pyarrow as pa

SCHEMA_VERSION = 1

#: Latency metrics with per-request values, and the percentiles every file and view reports.
LATENCIES = {"ttft": "time to first token", "itl": "inter-token latency (every gap)",
             "tpot": "time per output token after the first", "e2e": "end-to-end latency"}
PERCENTILES = (50, 90, 95, 99)


def percentile_column(latency: str, q: int) -> str:
    """`ttft`, 50 → `ttft_ms_p50`."""
    return f"{latency}_ms_p{q}"


class Kind(str, Enum):
    KEY = "key"
    SETTING = "setting"
    METRIC = "per-cycle metric"
    REQUEST = "per-request"
    TIMESERIES = "time series"
    STATUS = "provenance/status"
    SUMMARY = "summary"


@dataclass(frozen=True)
class Agg:
    """How cycles aggregate into the summary. `mean`, `ratio` and `weighted` are all a ratio
    of sums over the cell's successful cycles: mean = Σx / n; ratio = Σnum / Σden;
    weighted = Σ(x·w) / Σw. `first`, `max`, `sum`, `join` (sep), `union` (of lists) and `all`
    (of booleans, over the successful cycles) are what they say."""

    how: str
    num: str | None = None
    den: str | None = None
    sep: str = ""

    def describe(self, name: str) -> str:
        if self.how == "ratio":
            return f"Σ`{self.num}` ÷ Σ`{self.den}`"
        if self.how == "weighted":
            return f"Σ(`{name}`·`{self.den}`) ÷ Σ`{self.den}`"
        if self.how == "join":
            return f"distinct values joined by `{self.sep}`"
        return {"mean": "mean", "first": "first", "max": "max", "sum": "sum",
                "union": "union of all cycles'", "all": "true when every cycle's is"}[self.how]


FIRST, MEAN, MAX, SUM, UNION, ALL = (Agg("first"), Agg("mean"), Agg("max"), Agg("sum"),
                                     Agg("union"), Agg("all"))


def ratio(num: str, den: str) -> Agg:
    return Agg("ratio", num, den)


def weighted(weight: str) -> Agg:
    return Agg("weighted", den=weight)


def join(sep: str) -> Agg:
    return Agg("join", sep=sep)


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pa.DataType | None
    kind: Kind
    unit: str
    description: str
    #: Aggregation into summary.parquet; None: not in the summary.
    agg: Agg | None = None
    #: The summary adds `_std`, `_ci95_low`, `_ci95_high` (docs/methodology.md).
    interval: bool = False
    #: Positive by nature: its interval is taken on the log scale, so it stays positive.
    positive: bool = False
    label: str | None = None
    digits: int = 3
    #: Where the number comes from, for the report's badge: energy (the cell's energy
    #: source), timing (host clock) or flops (analytic count ÷ measured time).
    basis: str = "timing"
    #: Position in the report's table (None: not shown there).
    report: int | None = None
    #: A default metric of `llm-energy compare`.
    compare: bool = False
    #: ML.ENERGY leaderboard field, and the energy window it belongs to (None: either).
    export: str | None = None
    export_window: str | None = None
    #: Written only by some backends (then the column is absent elsewhere).
    optional: str | None = None

    @property
    def display(self) -> str:
        return self.label or self.name


_F, _I, _S, _B = pa.float64(), pa.int64(), pa.string(), pa.bool_()
M, K, ST = Kind.METRIC, Kind.KEY, Kind.STATUS
