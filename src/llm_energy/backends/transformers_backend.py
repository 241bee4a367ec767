"""PyTorch + transformers, direct: static batches through `generate`, with a streamer that
timestamps every decoding step so TTFT and inter-token latencies are real.

Per-request output lengths in one batch: the batch decodes until its longest request is done
(exact outputs: `min_new_tokens` = the batch's longest target, so EOS cannot end it; natural
outputs: until every row has produced EOS or reached its own cap, a per-row stopping
criterion). Each record keeps only its own tokens: the first `target` (exact), or up to and
including the first EOS within its cap (natural); the steps a static batch spends on rows
that are already done are measured (energy, time) but not counted as output tokens."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from typing import Any

from llm_energy.backends.base import (
    Backend,
    BackendUnavailable,
    LoadInfo,
    RequestRecord,
    check_output_lengths,
    per_request,
)
from llm_energy.backends.transformers_spec import TransformersConfig

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class _StepClock:
    """A transformers streamer that only records when each decoding step's tokens exist.

    `put` is called once with the prompt, then once per step with the new tokens (already
    copied to the host, so the time is after the device finished the step)."""

    def __init__(self) -> None:
        self.step_times_s: list[float] = []
        self._seen_prompt = False

    def put(self, value: Any) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        self.step_times_s.append(time.perf_counter())

    def end(self) -> None:
        pass


class TransformersBackend(Backend):
    name = "transformers"
    config = TransformersConfig

    #: Extra provenance for LoadInfo (e.g. how the weights were made).
    load_extra: dict[str, Any] = {}

    def load(self) -> LoadInfo:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise BackendUnavailable(
                f"transformers backend needs torch and transformers ({exc}); run `make venv`"
            ) from None
        self._torch = torch
        if self.settings["torch_compile"] and not self.device.startswith("cuda") \
                and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            # Inductor builds C++ kernels on CPU; without a compiler it fails deep in the
            # first warmup run with a long traceback.
            raise BackendUnavailable("torch_compile on CPU needs a C++ compiler "
                                     "(e.g. `apt install g++`); none is on PATH")
        start = time.perf_counter()
        dtype = getattr(torch, _DTYPES[self.settings["dtype"]])
        model = self.build_model(dtype)
        self._set_compiled(model)
        self.model = model
        self.eos_token_id = model.config.eos_token_id
        self.synchronize()
        return LoadInfo(
            duration_s=time.perf_counter() - start,
            device=self.device,
            dtype=str(dtype).removeprefix("torch."),
            parameters=sum(p.numel() for p in model.parameters()),
            extra=dict(self.load_extra),
        )

    def _set_compiled(self, model: Any) -> None:
        """`model.forward` compiled in the cell's mode, or eager when compilation is off.

        Idempotent per model object, so a model reused across cells (bench/gpu_validation.py)
        keeps its compiled graphs and is never wrapped twice."""
        eager = getattr(model, "_eager_forward", None) or model.forward
        mode = self.settings["torch_compile_mode"] \
            if self.settings["torch_compile"] else None
        if getattr(model, "_compiled_mode", None) == mode:
            return
        model._eager_forward = eager
        model.forward = eager if mode is None else self._torch.compile(eager, mode=mode)
        model._compiled_mode = mode

    def build_model(self, dtype: Any) -> Any:
        """The model on `self.device` in eval mode, read from `self.model_path`."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            self.model_path,
            dtype=dtype,
            attn_implementation=self.settings["attn_implementation"],
            trust_remote_code=bool(self.settings.get("trust_remote_code", False)),
        )
        model.to(self.device)
        return model.eval()

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()

    def _eos_ids(self) -> set[int]:
        """The token ids that end a natural output: the generation config's EOS, else the
        model config's."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = self.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}

    def generate(self, prompts: list[list[int]], output_tokens: int | Sequence[int],
                 exact: bool = True) -> list[RequestRecord]:
        torch = self._torch
        targets = per_request(output_tokens, len(prompts))
        batch_size = int(self.settings["batch_size"])
        arrival_s = time.perf_counter()
        records: list[RequestRecord] = []
        pad_id = self.eos_token_id if isinstance(self.eos_token_id, int) else 0
        eos_ids = set() if exact else self._eos_ids()
        for first in range(0, len(prompts), batch_size):
            batch = prompts[first : first + batch_size]
            caps = targets[first : first + batch_size]
            # Prompts have equal length by construction (workload truncation); left-pad otherwise.
            width = max(len(p) for p in batch)
            input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch],
                                     device=self.device)
            attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch],
                                          device=self.device)
            if exact:  # EOS suppressed until the longest target: no row ends early
                lengths: dict[str, Any] = {"min_new_tokens": max(caps)}
            else:
                lengths = {"stopping_criteria": _row_caps(torch, caps, width),
                           "eos_token_id": sorted(eos_ids) or None}
            clock = _StepClock()
            scheduled_s = time.perf_counter()
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=max(caps),
                    **lengths,
                    do_sample=False,
                    pad_token_id=pad_id,
                    streamer=clock,
                    # Only what the cell's settings say runs: transformers would otherwise
                    # compile the forward pass on its own whenever the cache is static.
                    cache_implementation=(
                        "static" if self.settings["cache_implementation"] == "static"
                        else None),
                    disable_compile=True,
                )
            new_tokens = output[:, width:].tolist()
            for offset, prompt in enumerate(batch):
                ids = produced_tokens(new_tokens[offset], caps[offset], eos_ids)
                records.append(
                    RequestRecord(
                        request_id=first + offset,
                        input_tokens=len(prompt),
                        output_tokens=len(ids),
                        arrival_s=arrival_s,
                        scheduled_s=scheduled_s,
                        token_times_s=list(clock.step_times_s[: len(ids)]),
                        output_token_ids=ids,
                    )
                )
        check_output_lengths(records, targets, exact, "transformers")
        return records

    def close(self) -> None:
        self.model = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


def produced_tokens(row: list[int], cap: int, eos_ids: set[int]) -> list[int]:
    """The tokens one request produced from its row of a batch's output: at most `cap`, and
    with natural outputs (`eos_ids` given) up to and including the first EOS; what follows
    (padding, or tokens decoded only because other rows were not done) is not its output."""
    row = row[:cap]
    for index, token in enumerate(row):
        if token in eos_ids:
            return row[: index + 1]
    return row


def _row_caps(torch: Any, caps: list[int], width: int) -> Any:
    """A stopping criterion that ends each row of a batch at its own cap (EOS ends rows
    through transformers' own criterion); the batch stops when every row has ended."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class RowCaps(StoppingCriteria):
        def __init__(self) -> None:
            self.caps: Any = None

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            if self.caps is None:
                self.caps = torch.tensor(caps, device=input_ids.device)
            return (input_ids.shape[1] - width) >= self.caps

    return StoppingCriteriaList([RowCaps()])
