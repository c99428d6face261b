"""The pipeline, declared once: its steps, their order, its parameters and its gate condition.

Both backends are built from this module: `pipelines/kfp_pipeline.py` (KFP IR, also run locally through
kfp.local) and `pipelines/sagemaker_pipeline.py` (SageMaker Pipelines). Neither lists steps or parameters of
its own; each adapter only knows how to turn one declared step into its backend's task, and refuses a step it
has not been taught (`AdapterError`). `tests/pipelines/test_parity.py` compiles both and checks they agree.

Parameters are not listed here either: they are exactly the union of the step configs' user-facing fields
(`ncf.config.param(..., pipeline=True)`), in step order, with the configs' defaults.
"""

from __future__ import annotations

import dataclasses
import graphlib
import importlib
import typing
from typing import Any

from ncf.config import field_types, pipeline_fields

PIPELINE_NAME = "ncf-recommender"
DESCRIPTION = ("Neural Collaborative Filtering: preprocess -> train -> evaluate+gate -> deploy the champion; "
               "nightly top-K of the champion for every user")


class AdapterError(Exception):
    """A backend adapter cannot build the declared pipeline (usually: a step it has not been taught)."""


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    config: str  # "module:Class" of the step's typed config, imported only when needed
    after: tuple[str, ...] = ()
    description: str = ""

    def config_class(self) -> type:
        module, _, cls = self.config.partition(":")
        return getattr(importlib.import_module(module), cls)


@dataclasses.dataclass(frozen=True)
class Gate:
    """`guarded` steps run only when `step`'s single boolean output equals `equals`.

    The gate step returns `GateResult.promoted` as its one output: kfp.local only evaluates `dsl.If` on a
    component's single return value, and SageMaker reads the same field from the gate's evaluation JSON.
    """

    step: str
    output: str
    equals: bool
    guarded: tuple[str, ...]


STEPS: tuple[Step, ...] = (
    Step("preprocess", "spark.preprocess:PreprocessConfig", (), "raw logs -> dt=YYYY-MM-DD partition"),
    Step("train", "ncf.train:TrainConfig", ("preprocess",), "train NCF on the partition -> model package"),
    Step("gate", "ncf.gate:GateConfig", ("train",), "register, score challenger vs champion, move alias"),
    Step("deploy", "serving.deploy:DeployConfig", ("gate",), "serve the champion"),
    # Not guarded by the gate: the champion (new or kept) recommends every night; with no champion yet it skips.
    Step("recommend", "ncf.recommend:RecommendConfig", ("gate",),
         "the champion's top-K for every user -> recommendations/dt=YYYY-MM-DD"),
)

GATE = Gate(step="gate", output="promoted", equals=True, guarded=("deploy",))


@dataclasses.dataclass(frozen=True)
class Parameter:
    name: str
    type: type  # str, int, float or bool
    default: Any  # dataclasses.MISSING when the parameter is required
    help: str
    steps: tuple[str, ...]  # the steps whose configs declare it

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


_PARAMETER_TYPES = (str, int, float, bool)


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def parameters(steps: tuple[Step, ...] = STEPS) -> list[Parameter]:
    """The union of the steps' user-facing config fields, in step order then field order.

    A field shared by several steps (`tracking_uri`, `model_name`) is one parameter; the steps must agree on
    its type and default, otherwise the declaration is ambiguous and this raises naming both.
    """
    found: dict[str, Parameter] = {}
    for step in steps:
        cls = step.config_class()
        types = field_types(cls)
        for field in pipeline_fields(cls):
            tp = types[field.name]
            if tp not in _PARAMETER_TYPES:
                raise AdapterError(
                    f"{cls.__name__}.{field.name}: type {typing.get_type_hints(cls)[field.name]} cannot be a "
                    f"pipeline parameter (use str, int, float or bool)"
                )
            default = _field_default(field)
            if default is None:
                raise AdapterError(f"{cls.__name__}.{field.name}: a pipeline parameter cannot default to None")
            new = Parameter(field.name, tp, default, field.metadata.get("help", ""), (step.name,))
            old = found.get(field.name)
            if old is None:
                found[field.name] = new
                continue
            if (old.type, old.default) != (new.type, new.default):
                raise AdapterError(
                    f"parameter {field.name!r} is declared differently by steps {old.steps} "
                    f"({old.type.__name__} = {old.default!r}) and {step.name!r} ({tp.__name__} = {default!r})"
                )
            found[field.name] = dataclasses.replace(old, steps=old.steps + (step.name,))
    return list(found.values())


def step_parameters(step: Step) -> list[str]:
    """Names of the pipeline parameters one step's config takes."""
    return [f.name for f in pipeline_fields(step.config_class())]


def dependency_order(steps: tuple[Step, ...] = STEPS) -> list[str]:
    """Step names in dependency order (ties broken by declaration order)."""
    names = [s.name for s in steps]
    for step in steps:
        for dep in step.after:
            if dep not in names:
                raise AdapterError(f"step {step.name!r} runs after undeclared step {dep!r}")
    sorter = graphlib.TopologicalSorter({s.name: s.after for s in steps})
    sorter.prepare()
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=names.index)
        order.extend(ready)
        sorter.done(*ready)
    return order


def edges(steps: tuple[Step, ...] = STEPS) -> set[tuple[str, str]]:
    """(upstream, downstream) pairs."""
    return {(dep, s.name) for s in steps for dep in s.after}


def check_adapter(adapter: str, builders: dict[str, Any], steps: tuple[Step, ...] = STEPS) -> None:
    """Raise `AdapterError` naming the adapter and the steps it does not know how to build."""
    missing = [s.name for s in steps if s.name not in builders]
    if missing:
        raise AdapterError(
            f"the {adapter} adapter does not implement declared step(s) {missing}: teach it in "
            f"pipelines/{adapter}_pipeline.py (a builder for each step in pipelines/definition.py STEPS)"
        )
