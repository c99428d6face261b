"""Pipeline parameter values from a YAML file (config/pipeline-params.yaml) and `--param name=value` flags.

Values are checked against the declared parameters (pipelines/definition.py): an unknown name or a value of
the wrong type is a UserError naming the file / flag and the parameter.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from ncf.errors import UserError
from pipelines import definition

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS_FILE = REPO_ROOT / "config" / "pipeline-params.yaml"


def _coerce(param: definition.Parameter, value: Any, source: str) -> Any:
    if param.type is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise UserError(f"{source}: {param.name} must be true/false, got {value!r}")
    if param.type in (int, float) and isinstance(value, bool):
        raise UserError(f"{source}: {param.name} must be a number, got {value!r}")
    try:
        coerced = param.type(value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: {param.name} must be {param.type.__name__}, got {value!r}") from None
    if param.type is int and isinstance(value, float) and value != coerced:
        raise UserError(f"{source}: {param.name} must be an integer, got {value!r}")
    return coerced


def validate(values: dict[str, Any], source: str, steps=definition.STEPS) -> dict[str, Any]:
    """Typed copy of `values`; raises naming `source` on unknown names or bad values."""
    declared = {p.name: p for p in definition.parameters(steps)}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise UserError(f"{source}: unknown pipeline parameter(s) {unknown}; known: {sorted(declared)}")
    return {name: _coerce(declared[name], value, source) for name, value in values.items()}


def load_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of parameter name -> value")
    return validate(data, str(path))


def parse_flags(flags: list[str]) -> dict[str, Any]:
    """`["epochs=3", "lr=0.01"]` -> typed values."""
    values: dict[str, Any] = {}
    for flag in flags:
        name, sep, value = flag.partition("=")
        if not sep or not name:
            raise UserError(f"--param {flag!r}: expected NAME=VALUE")
        values[name.strip()] = value
    return validate(values, "--param")


def add_arguments(parser: argparse.ArgumentParser, params_file_default: Path | None = DEFAULT_PARAMS_FILE) -> None:
    parser.add_argument(
        "--params",
        default=str(params_file_default) if params_file_default else None,
        help="YAML file of pipeline parameter values" + (
            f" (default: {params_file_default.relative_to(REPO_ROOT)})" if params_file_default else ""
        ),
    )
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="set one pipeline parameter (repeatable; wins over --params)",
    )


def from_args(args: argparse.Namespace) -> dict[str, Any]:
    values = load_file(args.params) if args.params else {}
    values.update(parse_flags(args.param))
    return values
