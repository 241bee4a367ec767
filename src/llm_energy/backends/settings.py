"""Base of every backend's configuration class (`backends.<name>` in a study file).

Light on purpose (pydantic only): the study side validates configurations with it and must
stay importable without torch or any engine."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Dtype = Literal["float32", "bfloat16", "float16"]

PositiveIntAxis = Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)]
DtypeAxis = Annotated[list[Dtype], Field(min_length=1)]
BoolAxis = Annotated[list[bool], Field(min_length=1)]


def _is_axis_annotation(annotation: Any) -> bool:
    return str(annotation).startswith("list") or "list[" in str(annotation)


class BackendSettings(BaseModel):
    """Per-backend sweep: list fields are axes, crossed with each other; scalars are fixed for
    all of the backend's cells. `enabled: false` keeps a section without running it."""

    # As in study.config: every float finite; strict: no bool as int, no string as number.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    enabled: bool = True

    @field_validator("*", mode="before")
    @classmethod
    def _scalar_to_axis(cls, value: Any, info: Any) -> Any:
        if _is_axis_annotation(cls.model_fields[info.field_name].annotation):
            return value if isinstance(value, list) else [value]
        return value

    def axes(self) -> dict[str, list[Any]]:
        return {
            name: list(getattr(self, name))
            for name in type(self).model_fields
            if isinstance(getattr(self, name), list)
        }

    def fixed(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name != "enabled" and not isinstance(getattr(self, name), list)
        }

    @classmethod
    def cell_defaults(cls) -> dict[str, Any]:
        """One cell's settings at the defaults: an axis's single default value, a fixed
        setting's default; required settings (no default) are left out. The one place a
        backend's code gets a default from (no copies of the pydantic defaults)."""
        out: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            if name == "enabled" or field.is_required():
                continue
            default = field.get_default(call_default_factory=True)
            if _is_axis_annotation(field.annotation):
                if len(default) != 1:
                    raise TypeError(f"{cls.__name__}.{name}: an axis default must hold one value")
                default = default[0]
            out[name] = default
        return out
