"""Dataset workloads checked when the study is planned, before any job: the workload rule's
own code (`build.checked_workload`: `make_workload` then `check_context`) run in memory with
the model's tokenizer, so a missing field, a dataset without usable records, nothing left
after the length filters, or a prompt that cannot fit a cell's context is one line naming
the key (`llm-energy: config error: workload.dataset.max_input_tokens: ...`), not a failed
first job.

Only workloads with a dataset: without one every length is in the config, which the study's
validation checks. The tokenizer is the one the rule will use, had without a job:
- a model directory that exists (`path:`, or a demo or GGUF model the DAG built before);
- a GGUF file (`gguf:`): transformers reads its tokenizer from the file (`gguf_file=`), the
  same ids as the converted directory's;
- a demo model (`demo:`): its tokenizer trained in a temporary directory, as the rule
  `demo_model` trains it (deterministic for the spec; ~5 s here).
Hub models (nothing may be downloaded at plan time) and models with `trust_remote_code`
(their code would run in the Snakemake process) are left to the workload rule, which runs
the same checks as the study's first job.

Each result (passed, or its one-line error) is cached per workload key under `CACHE_DIR`,
with a fingerprint of everything it depends on (the key: settings and model; the dataset's
and trace's files by size and mtime; the tokenizer's files or spec; the context limits; the
versions of transformers and tokenizers; this code), so a repeated invocation reads one small
JSON file per workload and imports nothing heavy."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from llm_energy.study.config import ConfigError
from llm_energy.study.plan import WEIGHT_SUFFIXES, Plan

#: Cached results, one JSON file per workload key, relative to the working directory.
CACHE_DIR = ".snakemake/llm-energy/preflight"
#: Code whose change may change a result (under src/llm_energy/): the cache is refreshed when
#: one changes.
_CODE = ("workload/build.py", "workload/dataset.py", "workload/lengths.py", "models/demo.py",
         "execution/preflight.py")


def _stat(path: Path) -> list[Any]:
    try:
        info = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), info.st_size, info.st_mtime_ns]


def _files(path: Path) -> list[list[Any]]:
    if path.is_dir():
        return [_stat(p) for p in sorted(path.rglob("*")) if p.is_file()]
    return [_stat(path)]


def tokenizer_source(plan: Plan, model_name: str) -> tuple[str, Any] | None:
    """Where the preflight gets a model's tokenizer without a job: ("dir", directory),
    ("gguf", file) or ("demo", DemoModelSpec); None for hub models and `trust_remote_code`."""
    model = plan.models[model_name]
    if model.trust_remote_code or model.hub_id is not None:
        return None
    directory = Path(plan.model_path(model_name)).expanduser()
    if (directory / "config.json").is_file():
        return "dir", directory
    if model.gguf is not None:
        return "gguf", model.gguf.file_path()
    if model.demo is not None:
        return "demo", model.demo
    return None


def _source_identity(source: tuple[str, Any]) -> Any:
    kind, where = source
    if kind == "dir":
        return [kind, [_stat(p) for p in sorted(where.iterdir())
                       if p.is_file() and p.suffix not in WEIGHT_SUFFIXES]]
    if kind == "gguf":
        return [kind, _stat(where)]
    return [kind, where.model_dump(mode="json"), sys.version]  # trained on the stdlib


def load_tokenizer(source: tuple[str, Any]) -> Any:
    """The tokenizer the workload rule would load for `source` (`tokenizer_source`)."""
    from transformers import AutoTokenizer

    kind, where = source
    if kind == "dir":
        return AutoTokenizer.from_pretrained(str(where))
    if kind == "gguf":
        return AutoTokenizer.from_pretrained(str(where.parent), gguf_file=where.name)
    from llm_energy.models.demo import train_tokenizer

    with tempfile.TemporaryDirectory(prefix="llm-energy-preflight-") as tmp:
        train_tokenizer(where.vocab_size, Path(tmp))
        return AutoTokenizer.from_pretrained(tmp)


def _versions() -> list[str | None]:
    found: list[str | None] = []
    for package in ("transformers", "tokenizers", "datasets"):
        try:
            found.append(metadata.version(package))
        except metadata.PackageNotFoundError:
            found.append(None)
    package = Path(__file__).resolve().parents[1]
    code = hashlib.sha256(b"".join((package / name).read_bytes() for name in _CODE)).hexdigest()
    return [*found, code]


def fingerprint(plan: Plan, key: str, source: tuple[str, Any],
                versions: list[str | None]) -> str:
    """What a workload's preflight result depends on, hashed (see the module docstring)."""
    spec, _ = plan.workloads[key]
    files = []
    dataset = (spec.get("dataset") or {}).get("path")
    if dataset:
        files += _files(Path(dataset).expanduser())
    if spec.get("trace_path"):
        files += _files(Path(spec["trace_path"]).expanduser())
    facts = {"key": key, "files": files, "tokenizer": _source_identity(source),
             "limits": sorted(plan.workload_context_limits(key)), "versions": versions}
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_cache(path: Path, stamp: str) -> dict[str, Any] | None:
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cached if isinstance(cached, dict) and cached.get("fingerprint") == stamp else None


def _write_cache(path: Path, record: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only working directory: checked again next time


def preflight(plan: Plan, cache_dir: str | Path = CACHE_DIR,
              loader: Callable[[tuple[str, Any]], Any] = load_tokenizer) -> dict[str, str]:
    """Check every dataset workload of `plan` whose tokenizer can be had without a job.
    Returns workload key -> `checked`, `cached` or `left to the workload rule` (also when the
    tokenizer fails to load: the rule reports that); raises `ConfigError` (one line naming
    the key) for the first that fails, cached or not."""
    results: dict[str, str] = {}
    tokenizers: dict[str, Any] = {}
    versions: list[str | None] | None = None
    for key, (spec, model_name) in sorted(plan.workloads.items()):
        source = tokenizer_source(plan, model_name) if spec.get("dataset") else None
        if source is None:
            if spec.get("dataset"):
                results[key] = "left to the workload rule"
            continue
        versions = versions or _versions()
        stamp = fingerprint(plan, key, source, versions)
        path = Path(cache_dir) / f"{key}.json"
        cached = _read_cache(path, stamp)
        if cached is None:
            from llm_energy.workload.build import checked_workload  # numpy etc.: when needed

            started = time.perf_counter()
            if model_name not in tokenizers:
                try:
                    tokenizers[model_name] = loader(source)
                except Exception as exc:  # no verdict on the input: the rule will say
                    tokenizers[model_name] = exc
            if isinstance(tokenizers[model_name], Exception):
                first = str(tokenizers[model_name]).strip().splitlines()[:1]
                results[key] = f"left to the workload rule (tokenizer: {''.join(first)[:200]})"
                continue
            try:
                checked_workload(spec, tokenizers[model_name], plan.workload_context_limits(key))
                error = None
            except ValueError as exc:  # DatasetError included: one line
                error = f"{exc} (workload of model '{model_name}')"
            cached = {"fingerprint": stamp, "error": error, "model": model_name,
                      "seconds": round(time.perf_counter() - started, 3)}
            _write_cache(path, cached)
            results[key] = "checked"
        else:
            results[key] = "cached"
        if cached.get("error"):
            raise ConfigError(str(cached["error"]))
    return results


def preflight_or_exit(plan: Plan, cache_dir: str | Path = CACHE_DIR) -> dict[str, str]:
    """For the Snakefile: `preflight`; a failure is one line on stderr and exit status 1."""
    try:
        return preflight(plan, cache_dir)
    except ConfigError as exc:
        sys.stderr.write(f"llm-energy: config error: {exc}\n")
        raise SystemExit(1) from None
