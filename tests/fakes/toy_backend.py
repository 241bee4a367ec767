"""A toy backend declared entirely outside the package (test-only): its settings class, its
`BackendSpec` and its implementation live here, and it is registered for a run with
`LLM_ENERGY_EXTRA_BACKENDS=fakes.toy_backend` and `tests/` on PYTHONPATH. No file under src/
names it, so a run that measures, summarises, plots, reports and exports its cells shows that
a backend is added by registration alone.

It "generates" by sleeping `step_ms` per decoding step for up to `slots` requests at once (its
batch limit), so its throughput grows with `slots`; the token ids are made up."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from llm_energy.backends.base import (
    Backend,
    LoadInfo,
    RequestRecord,
    check_output_lengths,
    per_request,
)
from llm_energy.backends.registry import BackendSpec
from llm_energy.backends.settings import BackendSettings, PositiveIntAxis


class ToyConfig(BackendSettings):
    slots: PositiveIntAxis = [1]
    step_ms: float = Field(20.0, gt=0, description="time of one decoding step")


class ToyBackend(Backend):
    name = "toy"
    config = ToyConfig

    def load(self) -> LoadInfo:
        start = time.perf_counter()
        time.sleep(0.05)
        return LoadInfo(time.perf_counter() - start, self.device, "float32", parameters=1)

    def generate(self, prompts: list[list[int]], output_tokens: int | Sequence[int],
                 exact: bool = True) -> list[RequestRecord]:
        # No EOS here: natural outputs run to their cap too.
        targets = per_request(output_tokens, len(prompts))
        slots, step_s = int(self.settings["slots"]), float(self.settings["step_ms"]) / 1000
        arrival = time.perf_counter()
        records = [RequestRecord(i, len(p), n, arrival)
                   for i, (p, n) in enumerate(zip(prompts, targets))]
        for first in range(0, len(records), slots):
            batch = records[first:first + slots]
            scheduled = time.perf_counter()
            for record in batch:
                record.scheduled_s = scheduled
            for step in range(max(r.output_tokens for r in batch)):
                time.sleep(step_s)
                now = time.perf_counter()
                for record in batch:
                    if step < record.output_tokens:
                        record.token_times_s.append(now)
        for record in records:
            record.output_token_ids = [1] * record.output_tokens
        check_output_lengths(records, targets, exact, "toy")
        return records


def _prune(settings: Any, device: str) -> str | None:
    return "the toy backend does not take more than 64 slots" if settings["slots"] > 64 else None


SPEC = BackendSpec(
    name="toy",
    config=ToyConfig,
    implementation="fakes.toy_backend:ToyBackend",
    batch_setting="slots",
    prune=_prune,
    devices=("cpu",),
    import_name="pydantic",
    requirements=None,
    install_hint="part of the test suite: put tests/ on PYTHONPATH",
    base_mem_mb=1024,
)
