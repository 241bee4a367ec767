"""What a workload is made of, as validated config: a dataset (or the built-in corpus), length
policies as numbers or seeded distributions, and an arrival process.

Pydantic only (no heavy imports): `study.config.WorkloadConfig` is built from these, and
`llm_energy.workload.build` turns them into token ids, target lengths and arrival offsets.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

#: File suffixes read as data files, and the `datasets` packaged builder that reads each.
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
#: Dataset layouts: one text per record, OpenAI chat `messages`, ShareGPT `conversations`.
DatasetFormat = Literal["prompt", "messages", "sharegpt"]
#: Field of the records that holds the prompt, per format, when `prompt_field` is not given.
DEFAULT_PROMPT_FIELD = {"prompt": "prompt", "messages": "messages", "sharegpt": "conversations"}


class _Strict(BaseModel):
    # As study.config's: unknown keys refused, every float finite, no type coercion.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class DatasetConfig(_Strict):
    """A local dataset: a JSONL/JSON/CSV/Parquet file or a directory written by the `datasets`
    library's `save_to_disk`. Never downloaded: the path must exist when the study is checked."""

    path: str = Field(min_length=1, description="local file or save_to_disk directory")
    format: DatasetFormat = Field(
        "prompt", description="prompt: one text per record; messages: OpenAI chat messages "
        "(the final assistant message is the reply); sharegpt: conversations (first human turn "
        "is the prompt, the next turn the reply)")
    prompt_field: str | None = Field(
        None, min_length=1,
        description="record field of the prompt; default: prompt / messages / conversations")
    reply_field: str | None = Field(
        None, min_length=1,
        description="format prompt: record field of the reply text, whose length in tokens is "
        "the record's target output length")
    split: str = Field("train", min_length=1,
                       description="split of a save_to_disk DatasetDict")
    chat_template: bool = Field(
        True, description="apply the tokenizer's chat template (when it has one) with the "
        "generation prompt")
    min_input_tokens: int = Field(1, gt=0, description="drop records with fewer prompt tokens")
    max_input_tokens: int | None = Field(
        None, gt=0, description="drop records with more prompt tokens (after the template)")
    min_output_tokens: int | None = Field(
        None, gt=0, description="drop records whose reply has fewer tokens")
    max_output_tokens: int | None = Field(
        None, gt=0, description="drop records whose reply has more tokens")

    @field_validator("path")
    @classmethod
    def _local(cls, value: str) -> str:
        path = Path(value).expanduser()
        if "://" in value:
            raise ValueError(f"{value!r} is not a local path: download the dataset first")
        if not path.exists():
            raise ValueError(f"no dataset at {value}")
        if path.is_file() and path.suffix.lower() not in DATA_FILE_BUILDERS:
            raise ValueError(f"unknown dataset file type {path.suffix!r}: give one of "
                             f"{', '.join(DATA_FILE_BUILDERS)} or a save_to_disk directory")
        if path.is_dir() and not ((path / "state.json").is_file()
                                  or (path / "dataset_dict.json").is_file()):
            raise ValueError(f"{value} is a directory but not one written by the datasets "
                             "library's save_to_disk")
        return value

    @model_validator(mode="after")
    def _readable_text(self) -> DatasetConfig:
        """Text files (JSONL, JSON, CSV) checked before any job: not empty and UTF-8
        throughout (streamed). Fields, records, and what needs the tokenizer (lengths, the
        context) are checked when the study is planned (llm_energy.execution.preflight), or by
        the workload rule where the tokenizer needs a job."""
        path = Path(self.path).expanduser()
        if not path.is_file() or path.suffix.lower() == ".parquet":
            return self
        import codecs

        decoder, blank, seen = codecs.getincrementaldecoder("utf-8")(), True, 0
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                try:
                    text = decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    raise ValueError(f"dataset {self.path} is not UTF-8 text (byte "
                                     f"{seen + exc.start}: {exc.reason})") from None
                seen += len(chunk)
                blank = blank and not text.strip()
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as exc:
                raise ValueError(f"dataset {self.path} is not UTF-8 text (it ends inside a "
                                 f"character: {exc.reason})") from None
        if blank:
            raise ValueError(f"dataset {self.path} is empty")
        return self

    @model_validator(mode="after")
    def _order(self) -> DatasetConfig:
        if self.max_input_tokens is not None and self.max_input_tokens < self.min_input_tokens:
            raise ValueError("max_input_tokens must be >= min_input_tokens")
        if (self.max_output_tokens is not None and self.min_output_tokens is not None
                and self.max_output_tokens < self.min_output_tokens):
            raise ValueError("max_output_tokens must be >= min_output_tokens")
        if self.reply_field is not None and self.format != "prompt":
            raise ValueError(f"reply_field is for format 'prompt'; format {self.format!r} "
                             "takes the reply from the conversation")
        return self

    @property
    def field(self) -> str:
        return self.prompt_field or DEFAULT_PROMPT_FIELD[self.format]

    @property
    def has_replies(self) -> bool:
        return self.format != "prompt" or self.reply_field is not None


class _Bounded(_Strict):
    min: int = Field(1, gt=0, description="smallest length, tokens (inclusive)")
    max: int = Field(gt=0, description="largest length, tokens (inclusive)")

    @model_validator(mode="after")
    def _bounds(self) -> _Bounded:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class UniformLengths(_Bounded):
    """Integers drawn uniformly from [min, max]."""

    distribution: Literal["uniform"]


class NormalLengths(_Bounded):
    """A normal distribution truncated to [min, max] (out-of-bounds draws are redrawn), rounded
    to integers."""

    distribution: Literal["normal"]
    mean: float = Field(gt=0, description="tokens, before truncation")
    std: float = Field(gt=0, description="tokens, before truncation")

    @model_validator(mode="after")
    def _mass_inside(self) -> NormalLengths:
        if not _has_mass((self.mean - (self.min - 0.5)) / self.std,
                         (self.mean - (self.max + 0.5)) / self.std):
            raise ValueError(f"bounds [{self.min}, {self.max}] hold almost none of "
                             f"normal(mean={self.mean}, std={self.std})")
        return self


class LognormalLengths(_Bounded):
    """A lognormal distribution whose own mean and standard deviation (in tokens) are `mean`
    and `std`, truncated to [min, max] (out-of-bounds draws are redrawn), rounded to integers.
    The underlying normal has sigma² = ln(1 + std²/mean²) and mu = ln(mean) - sigma²/2."""

    distribution: Literal["lognormal"]
    mean: float = Field(gt=0, description="tokens, before truncation")
    std: float = Field(gt=0, description="tokens, before truncation")

    @property
    def mu_sigma(self) -> tuple[float, float]:
        sigma2 = math.log1p((self.std / self.mean) ** 2)
        return math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2)

    @model_validator(mode="after")
    def _mass_inside(self) -> LognormalLengths:
        mu, sigma = self.mu_sigma
        if not _has_mass((mu - math.log(self.min - 0.5)) / sigma,
                         (mu - math.log(self.max + 0.5)) / sigma):
            raise ValueError(f"bounds [{self.min}, {self.max}] hold almost none of "
                             f"lognormal(mean={self.mean}, std={self.std})")
        return self


#: Below this probability of a draw falling inside the bounds, a distribution is refused:
#: redrawing would take too long and the result would not be the distribution asked for.
MIN_MASS_INSIDE = 1e-3


def _has_mass(z_lo: float, z_hi: float) -> bool:
    """Whether a normal puts at least MIN_MASS_INSIDE between its bounds, given as
    (mean - bound) / std for the rounded bounds min - 0.5 and max + 0.5."""
    def cdf(z: float) -> float:
        return 0.5 * math.erfc(z / math.sqrt(2))
    return cdf(z_hi) - cdf(z_lo) >= MIN_MASS_INSIDE


LengthDistribution = Annotated[UniformLengths | NormalLengths | LognormalLengths,
                               Field(discriminator="distribution")]
#: A fixed number of tokens, a seeded distribution, or each dataset record's own length.
LengthPolicy = Annotated[int, Field(gt=0)] | LengthDistribution | Literal["dataset"]

_DISTRIBUTION: TypeAdapter[Any] = TypeAdapter(LengthDistribution)

Arrival = Literal["closed", "poisson", "gamma", "constant", "trace"]

#: How long outputs are: `fixed` (EOS ignored, each request exactly its `output_tokens`
#: target), `dataset` (EOS ignored, each record's reply length), `natural` (EOS allowed,
#: `output_tokens` is each request's cap).
OutputPolicy = Literal["fixed", "dataset", "natural"]
#: Policies under which every request must produce exactly its target (EOS ignored).
EXACT_OUTPUT_POLICIES: tuple[str, ...] = ("fixed", "dataset")


def exact_outputs(policy: str) -> bool:
    """Whether `policy` forces each output to exactly its target length (EOS ignored)."""
    return policy in EXACT_OUTPUT_POLICIES


class WorkloadSpec(_Strict):
    """Everything that decides a workload's token ids, target lengths and arrival offsets."""

    num_prompts: int = Field(16, gt=0, le=1_000_000, description="requests per cycle")
    input_tokens: LengthPolicy = Field(
        64, description="prompt length, tokens: a number, a distribution, or 'dataset' (each "
        "record's own length; the default when a dataset is given)")
    output_tokens: LengthPolicy = Field(
        32, description="output length, tokens: a number, a distribution, or 'dataset' (each "
        "record's reply length); the exact target under output_policy fixed/dataset, the "
        "per-request cap under natural")
    output_policy: OutputPolicy = Field(
        "fixed", description="fixed: EOS ignored, each request exactly its output_tokens; "
        "dataset: EOS ignored, each record's reply length (same as output_tokens: dataset); "
        "natural: EOS allowed, output_tokens is each request's cap")
    seed: int = 0
    dataset: DatasetConfig | None = None
    # How server backends receive the requests; offline engines always get all of them at once.
    arrival: Arrival = Field(
        "closed", description="closed loop (concurrency), poisson, gamma (burstiness), constant "
        "(request_rate_per_s), or trace (offsets from trace_path)")
    concurrency: int | None = Field(
        None, gt=0, description="closed loop: requests in flight; default: all at once")
    request_rate_per_s: float | None = Field(
        None, gt=0, description="poisson, gamma, constant: mean arrival rate, requests per second")
    burstiness: float | None = Field(
        None, gt=0, description="gamma: shape factor as vLLM's bench serve defines it (1: "
        "Poisson; below 1 burstier, above 1 more regular)")
    trace_path: str | None = Field(
        None, min_length=1, description="trace: file of arrival offsets in seconds, one per "
        "line (text/CSV, first column) or a JSON list, sorted; the first num_prompts are used")

    @field_validator("input_tokens", "output_tokens", mode="before")
    @classmethod
    def _one_length_error(cls, value: Any) -> Any:
        # One clear error instead of one per member of the union.
        if isinstance(value, dict):
            try:
                return _DISTRIBUTION.validate_python(value)
            except ValidationError as exc:
                error = exc.errors()[0]
                where = ".".join(str(p) for p in error["loc"][1:] if p != "distribution"
                                 or len(error["loc"]) == 1)
                raise ValueError(f"{where + ': ' if where else ''}"
                                 f"{error['msg'].removeprefix('Value error, ')}") from None
        if value == "dataset":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError("give a positive number of tokens, a distribution (uniform, "
                             "normal, lognormal) or 'dataset'")
        return value

    @model_validator(mode="before")
    @classmethod
    def _dataset_lengths_by_default(cls, data: Any) -> Any:
        # With a dataset and no input_tokens, prompts keep their own length.
        if isinstance(data, dict) and data.get("dataset") is not None \
                and "input_tokens" not in data:
            data = {**data, "input_tokens": "dataset"}
        # output_tokens 'dataset' and output_policy 'dataset' say the same: one implies the
        # other (contradictions are refused by `_output_policy`).
        if isinstance(data, dict):
            if data.get("output_tokens") == "dataset" and "output_policy" not in data:
                data = {**data, "output_policy": "dataset"}
            elif data.get("output_policy") == "dataset" and "output_tokens" not in data:
                data = {**data, "output_tokens": "dataset"}
        return data

    @model_validator(mode="after")
    def _output_policy(self) -> WorkloadSpec:
        policy, tokens = self.output_policy, self.output_tokens
        if policy == "dataset" and tokens != "dataset":
            raise ValueError("output_policy 'dataset' takes each record's reply length: "
                             "remove output_tokens or set it to 'dataset'")
        if policy == "fixed" and tokens == "dataset":
            raise ValueError("output_tokens 'dataset' contradicts output_policy 'fixed': "
                             "set output_policy to 'dataset' (or remove it)")
        if policy == "natural" and tokens == "dataset":
            raise ValueError("output_policy 'natural' takes output_tokens as each request's "
                             "cap: give a number or a distribution, not 'dataset'")
        return self

    @property
    def exact_outputs(self) -> bool:
        """Each request produces exactly its target (EOS ignored): `fixed` and `dataset`."""
        return exact_outputs(self.output_policy)

    @model_validator(mode="after")
    def _consistent(self) -> WorkloadSpec:
        for key in ("input_tokens", "output_tokens"):
            if getattr(self, key) == "dataset" and self.dataset is None:
                raise ValueError(f"{key} 'dataset' needs a workload.dataset")
        # A study's workload may sweep datasets (`WorkloadSweep`): every one must fit.
        if self.output_tokens == "dataset" and any(
                not d.has_replies for d in _as_list(self.dataset)):
            raise ValueError("output_tokens 'dataset' needs replies: set dataset.reply_field, "
                             "or use format messages or sharegpt")
        rated = ("poisson", "gamma", "constant")
        if self.arrival in rated and self.request_rate_per_s is None:
            raise ValueError(f"request_rate_per_s is required when arrival is {self.arrival!r}")
        if self.arrival not in rated and self.request_rate_per_s is not None:
            raise ValueError(f"request_rate_per_s is not used with arrival {self.arrival!r}: "
                             "remove it or set arrival to poisson, gamma or constant")
        if (self.arrival == "gamma") != (self.burstiness is not None):
            raise ValueError("burstiness is required with arrival 'gamma' and only used there")
        if (self.arrival == "trace") != (self.trace_path is not None):
            raise ValueError("trace_path is required with arrival 'trace' and only used there")
        if self.trace_path is not None and not Path(self.trace_path).expanduser().is_file():
            raise ValueError(f"trace_path: no trace file at {self.trace_path}")
        if self.trace_path is not None:
            # Unreadable, unsorted, negative or too short: refused before any job.
            from llm_energy.loadgen.arrivals import read_trace

            try:
                read_trace(Path(self.trace_path).expanduser(), self.num_prompts)
            except ValueError as exc:
                raise ValueError(f"trace_path: {exc}") from None
        return self


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else value if isinstance(value, list) else [value]


def longest_tokens(policy: Any, datasets: list[Any] | None) -> int | None:
    """The most tokens a length policy can give: the number, a distribution's `max`, the
    datasets' (largest) `max_input_tokens` for `dataset`; None when unknown before the build."""
    if isinstance(policy, int):
        return policy
    if policy == "dataset":
        limits = [getattr(d, "max_input_tokens", None) for d in datasets or []]
        return max(limits) if limits and None not in limits else None  # type: ignore[type-var]
    return getattr(policy, "max", None)


WORKLOAD_KEY_LENGTH = 16
#: Where built workloads live, relative to the working directory, one file per key.
WORKLOAD_DIR = "resources/workloads"


def workload_key(spec: dict[str, Any], model: dict[str, Any]) -> str:
    """Content key of a workload file: a hash of the workload's settings and of the model whose
    tokenizer encodes it (both as JSON dicts). The dataset's and trace's contents are not in
    the key: they are inputs of the rule that builds the file, so editing them rebuilds it.
    `output_policy` enters only when not `fixed`, so files built before it existed keep
    their key (and the measurements that read them are not rerun)."""
    if spec.get("output_policy", "fixed") == "fixed":
        spec = {k: v for k, v in spec.items() if k != "output_policy"}
    canonical = json.dumps({"workload": spec, "model": model}, sort_keys=True,
                           separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:WORKLOAD_KEY_LENGTH]


def workload_path(spec: dict[str, Any], model: dict[str, Any]) -> str:
    return f"{WORKLOAD_DIR}/{workload_key(spec, model)}.parquet"
