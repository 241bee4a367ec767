"""Any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp server ...) driven by the load
generator (`llm_energy.loadgen.client`): streamed `/v1/completions` with token-id prompts.

The server is not started here; it runs wherever `base_url` points. Energy is what the meters
of the host running this measurement see: measure on the machine that serves (a remote
server's energy is not seen at all, only this client's). The API key is read from the
environment variable named by `api_key_env` when the cell starts; it is never part of the
configuration, the cell id or the provenance.

The study's model entry must be the model the server serves: its tokenizer builds the prompt
token ids and its config.json gives the FLOPs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from llm_energy.backends.base import (
    Backend,
    BackendUnavailable,
    LoadInfo,
    RequestRecord,
)
from llm_energy.backends.openai_server_spec import OpenAIServerConfig

_REACH_TIMEOUT_S = 30.0


class OpenAIServerBackend(Backend):
    name = "openai-server"
    config = OpenAIServerConfig

    def __init__(self, model_path: str, settings: dict[str, Any], device: str) -> None:
        super().__init__(model_path, settings, device)
        self.endpoint: Any = None
        self._scraper: Any = None

    # ------------------------------------------------------------ helpers shared with vllm

    def _load_spec(self) -> Any:
        from dataclasses import replace

        from llm_energy.loadgen.client import LoadSpec

        spec = LoadSpec.from_workload(self.workload)
        # The protocol sends R repetitions of the workload as one stream (R x num_prompts
        # requests): a closed loop without a concurrency keeps num_prompts in flight, as in
        # one repetition, rather than R x num_prompts.
        if spec.arrival == "closed" and spec.concurrency is None and self.workload:
            spec = replace(spec, concurrency=int(self.workload["num_prompts"]))
        return spec

    def _scrape_period_s(self) -> float:
        return 1.0 / float((self.measurement or {}).get("sampler_hz", 10.0))

    def _start_scraper(self, metrics_url: str) -> None:
        from llm_energy.loadgen.prometheus import MetricsScraper

        self._scraper = MetricsScraper(metrics_url, self._scrape_period_s()).start()

    def telemetry(self) -> list[Any]:
        return list(self._scraper.samples) if self._scraper is not None else []

    def cycle_columns(self, start_s: float, end_s: float) -> dict[str, Any]:
        if self._scraper is None:
            return {}
        from llm_energy.loadgen.prometheus import server_cycle_columns

        return server_cycle_columns(self._scraper.snapshot(), start_s, end_s,
                                    self._scrape_period_s())

    def cycle_warnings(self, cycle: int, start_s: float, end_s: float) -> list[str]:
        if self._scraper is None:
            return []
        from llm_energy.loadgen.prometheus import scrape_coverage_warning

        warning = scrape_coverage_warning(self._scraper.snapshot(), cycle, start_s, end_s,
                                          self._scrape_period_s())
        return [warning] if warning else []

    def _run(self, prompts: list[list[int]], output_tokens: int | Sequence[int],
             exact: bool = True) -> list[RequestRecord]:
        from llm_energy.loadgen.client import run_load

        if self.endpoint is None:
            raise RuntimeError(f"{type(self).__name__}.generate called before load()")
        return run_load(self.endpoint, prompts, output_tokens, self._load_spec(), exact).records

    # ------------------------------------------------------------ Backend

    def load(self) -> LoadInfo:
        try:
            import httpx
        except ImportError as exc:
            raise BackendUnavailable(f"the openai-server backend needs httpx ({exc}): "
                                     "run `make venv`") from None
        from llm_energy.loadgen.client import Endpoint, is_loopback
        from llm_energy.loadgen.prometheus import parse_prometheus

        start = time.perf_counter()
        base_url = str(self.settings["base_url"])
        api_key = None
        key_env = self.settings["api_key_env"]
        if key_env:
            api_key = os.environ.get(key_env)
            if not api_key:
                raise RuntimeError(f"backends.openai-server.api_key_env names {key_env}, which "
                                   "is not set in the environment of the measurement")
        probe = Endpoint(base_url, "", api_key)
        with httpx.Client(timeout=_REACH_TIMEOUT_S, trust_env=not is_loopback(base_url)) as client:
            try:
                response = client.get(base_url.rstrip("/") + "/models", headers=probe.headers())
            except httpx.HTTPError as exc:
                raise RuntimeError(f"cannot reach the OpenAI-compatible server at {base_url}: "
                                   f"{type(exc).__name__}: {exc}") from None
            if response.status_code != 200:
                raise RuntimeError(f"{base_url}/models answered HTTP {response.status_code}: "
                                   f"{response.text[:200]}")
            served = [m.get("id") for m in response.json().get("data", [])]
            model = self.settings["served_model"]
            if model is None:
                if len(served) != 1:
                    raise RuntimeError(f"the server at {base_url} serves {served}: set "
                                       "backends.openai-server.served_model to one of them")
                model = served[0]
            elif served and model not in served:
                raise RuntimeError(f"the server at {base_url} does not serve {model!r} "
                                   f"(it serves {served})")
            self.endpoint = Endpoint(base_url, str(model), api_key,
                                     extensions=bool(self.settings["server_extensions"]))
            # Scrape /metrics when the server has one we understand (vLLM, SGLang).
            metrics_url = self.endpoint.root_url + "/metrics"
            try:
                metrics = client.get(metrics_url)
                has_metrics = metrics.status_code == 200 and bool(parse_prometheus(metrics.text))
            except httpx.HTTPError:
                has_metrics = False
        if has_metrics:
            self._start_scraper(metrics_url)
        return LoadInfo(
            duration_s=time.perf_counter() - start, device=self.device, dtype="server",
            extra={"base_url": base_url, "served_model": model, "served_models": served,
                   "metrics_scraped": has_metrics,
                   "energy_scope": "meters of the measuring host only"},
        )

    def generate(self, prompts: list[list[int]], output_tokens: int | Sequence[int],
                 exact: bool = True) -> list[RequestRecord]:
        records = self._run(prompts, output_tokens, exact)
        if records and not any(r.success for r in records):
            raise RuntimeError(f"every request to {self.endpoint.base_url} failed: "
                               f"{records[0].error}")
        return records

    def close(self) -> None:
        # The scraper's samples stay readable after close: the protocol collects telemetry()
        # once the backend is closed.
        if self._scraper is not None:
            self._scraper.stop()
