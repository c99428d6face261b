"""Typed step configs <-> command-line flags and pipeline parameters.

Every step has one dataclass config. A field's metadata may carry:
  help      -- the flag's help text
  pipeline  -- True when the field is a user-facing pipeline parameter (the pipeline's parameters are
               exactly the union of these fields over all steps)
  choices   -- allowed values
Flags are the field names with '_' -> '-' (`--factor-num`); the seed's hyperparameter names are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from ncf.errors import UserError

T = TypeVar("T")

_SCALARS = (str, int, float, bool)


def _scalar_type(tp: Any) -> Any:
    """The scalar type behind `X`, `X | None` or `Optional[X]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: _scalar_type(hints[f.name]) for f in dataclasses.fields(cls)}


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--flag` per dataclass field; fields without a default are required."""
    types_by_name = field_types(cls)
    for f in dataclasses.fields(cls):
        tp = types_by_name[f.name]
        # argparse formats help with %: a literal one ("80% of the memory") must be doubled
        kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help", "").replace("%", "%%")}
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
            kwargs["help"] += f" (default: {f.default!r})"
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            kwargs["default"] = f.default_factory()  # type: ignore[misc]
        else:
            kwargs["required"] = True
        if tp is bool:
            kwargs["type"] = _parse_bool
            kwargs["metavar"] = "{true,false}"
        elif tp in _SCALARS:
            kwargs["type"] = tp
        else:
            kwargs["type"] = json.loads
            kwargs["metavar"] = "JSON"
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def from_namespace(cls: type[T], namespace: argparse.Namespace) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in vars(namespace).items() if k in names})


def from_dict(cls: type[T], values: dict[str, Any], *, source: str = "config") -> T:
    """Build a config from a mapping, rejecting unknown keys with a message that names them."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"{source}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise UserError(f"{source}: {exc}") from exc


def pipeline_fields(cls: type) -> list[dataclasses.Field]:
    """The user-facing fields of a step config: those that become pipeline parameters."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("pipeline")]


def param(default: Any = dataclasses.MISSING, help: str = "", pipeline: bool = False, **extra: Any) -> Any:
    """Shorthand for a documented config field: `lr: float = param(0.001, "learning rate", pipeline=True)`."""
    metadata = {"help": help, "pipeline": pipeline, **extra}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
