"""Checks of a cycle's requests themselves: failed requests (the cycle's metrics then cover its
successful requests only; a phase in which every request failed fails the cell, with the
reason) and how their tokens arrived (several to a streamed chunk, a count that disagreed with
the server's `usage`, bursty delivery). Flags go to the cycle's `warnings`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import pairwise

from llm_energy.backends.base import RequestRecord

#: Two arrivals of one request closer than this (ms) were not two decode steps: an engine
#: step takes well over a millisecond even for small models on fast GPUs, and a server emits
#: at most one chunk per request per step. Chunks that close were held back and read from one
#: network buffer (a starved server, a buffering proxy, or a client too busy to read).
BURST_GAP_MS = 0.2
#: A request with at least this share of its observed gaps under BURST_GAP_MS was delivered
#: in bursts (e.g. TTFT close to E2E): its ITL and TPOT measure delivery, not generation.
BURST_REQUEST_SHARE = 0.5


def _common_error(records: Sequence[RequestRecord]) -> str:
    errors = Counter(r.error or "no error message" for r in records if not r.success)
    error, count = errors.most_common(1)[0]
    others = sum(errors.values()) - count
    return error + (f" (and {others} other error(s))" if others else "")


def all_failed_error(records: Sequence[RequestRecord], phase: str) -> str | None:
    """The reason a phase failed when every one of its requests did, else None."""
    if not records or any(r.success for r in records):
        return None
    return f"every request of {phase} failed ({len(records)}): {_common_error(records)}"


def raise_if_all_failed(records: Sequence[RequestRecord], phase: str) -> None:
    """Raise RuntimeError (the cell fails with this reason) when every request failed."""
    error = all_failed_error(records, phase)
    if error is not None:
        raise RuntimeError(error)


def success_rate(records: Sequence[RequestRecord]) -> float | None:
    """Share of requests that succeeded (0..1); None without requests."""
    return sum(r.success for r in records) / len(records) if records else None


def failure_warning(cycle: int, records: Sequence[RequestRecord]) -> str | None:
    failed = sum(not r.success for r in records)
    if not failed:
        return None
    return (f"{failed} of {len(records)} requests failed in cycle {cycle} "
            f"({_common_error(records)}): this cycle's metrics cover its "
            f"{len(records) - failed} successful request(s) only")


def observed_gaps_ms(r: RequestRecord) -> list[float]:
    """Gaps (ms) between the arrivals that were observed on their own (chunk receipt times,
    engine step times), leaving out times shared within a chunk or interpolated."""
    flags = r.token_time_observed
    times = r.token_times_s if flags is None else [t for t, seen in zip(r.token_times_s, flags)
                                                    if seen]
    return [(b - a) * 1000.0 for a, b in pairwise(times)]


def arrival_warnings(cycle: int, records: Sequence[RequestRecord]) -> list[str]:
    """Flags of how the (successful) requests' tokens arrived in a cycle."""
    warnings = []
    bundled = [r for r in records if r.token_time_observed is not None]
    if bundled:
        shared = sum(not seen for r in bundled for seen in r.token_time_observed or ())
        total = sum(len(r.token_times_s) for r in records)
        warnings.append(
            f"{shared} of {total} output tokens in cycle {cycle} ({len(bundled)} request(s)) "
            "arrived several to a streamed chunk: their arrival times are spread evenly over the "
            "gap since the previous chunk (in the first chunk they share its time), so ITL "
            "percentiles and steady-state token counts rest on interpolated times; TPOT and "
            "end-to-end latency use the real token count")
    notes = [r.count_note for r in records if r.count_note]
    if notes:
        warnings.append(f"{len(notes)} request(s) in cycle {cycle} whose streamed token count "
                        f"is not confirmed by the server: {notes[0]}")
    gaps = [observed_gaps_ms(r) for r in records]
    short = [sum(g < BURST_GAP_MS for g in request_gaps) for request_gaps in gaps]
    if sum(short):
        bursty = sum(1 for n, request_gaps in zip(short, gaps)
                     if request_gaps and n >= BURST_REQUEST_SHARE * len(request_gaps))
        warnings.append(
            f"{sum(short)} of {sum(map(len, gaps))} inter-token gaps in cycle {cycle} are under "
            f"{BURST_GAP_MS:g} ms, shorter than any decode step ({bursty} request(s) delivered "
            f"mostly in bursts, at least {BURST_REQUEST_SHARE:.0%} of their gaps): tokens were "
            "held back and delivered together, so ITL and TPOT there measure delivery, not "
            "generation")
    return warnings
