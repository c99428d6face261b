"""Are the compiled KFP IR and the SageMaker definition the same pipeline as the declaration?

Each compiled output is reduced to a `Shape` (declared step names in dependency order, dependency edges,
parameters with defaults, gate condition) and compared with the shape the declaration implies. Differences
come back as messages that name the backend, e.g. "SageMaker: step 'explain' is declared but missing".
`ncfctl compile` refuses to write dist/ when there are any; tests/pipelines/test_parity.py checks both ways.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import yaml

from pipelines import definition
from pipelines.definition import GATE, STEPS, Step


@dataclasses.dataclass(frozen=True)
class Shape:
    order: tuple[str, ...]  # declared step names, dependency order
    edges: frozenset[tuple[str, str]]  # transitive reduction
    parameters: dict[str, tuple[str, Any]]  # name -> (type name, default or None when required)
    gate: tuple[str, str, bool, tuple[str, ...]] | None  # (step, output field, equals, guarded steps)


def _reduce(nodes: list[str], edges: set[tuple[str, str]]) -> frozenset[tuple[str, str]]:
    """Transitive reduction: data edges that a longer path already implies are dropped."""

    def reachable(src: str, dst: str, skip: tuple[str, str]) -> bool:
        stack, seen = [src], set()
        while stack:
            node = stack.pop()
            for a, b in edges:
                if a == node and (a, b) != skip and b not in seen:
                    if b == dst:
                        return True
                    seen.add(b)
                    stack.append(b)
        return False

    return frozenset(e for e in edges if e[0] in nodes and e[1] in nodes and not reachable(e[0], e[1], e))


def _order(nodes: list[str], edges: frozenset[tuple[str, str]]) -> tuple[str, ...]:
    steps = tuple(Step(n, "", tuple(sorted(a for a, b in edges if b == n))) for n in nodes)
    return tuple(definition.dependency_order(steps))


def declared_shape(steps: tuple[Step, ...] = STEPS, overrides: dict[str, Any] | None = None) -> Shape:
    overrides = overrides or {}
    nodes = [s.name for s in steps]
    edges = _reduce(nodes, definition.edges(steps))
    params = {}
    for p in definition.parameters(steps):
        default = overrides.get(p.name, p.default)
        params[p.name] = (p.type.__name__, None if default is dataclasses.MISSING else p.type(default))
    return Shape(_order(nodes, edges), edges, params, (GATE.step, GATE.output, GATE.equals, GATE.guarded))


# --- KFP IR ---------------------------------------------------------------------------------------------------

_KFP_TYPES = {"STRING": "str", "NUMBER_INTEGER": "int", "NUMBER_DOUBLE": "float", "BOOLEAN": "bool"}
_KFP_CONDITION = re.compile(r"inputs\.parameter_values\['pipelinechannel--(?P<task>[\w-]+?)-Output'\] == (?P<value>true|false)$")


def kfp_shape(ir: str | dict) -> Shape:
    """Shape of a compiled KFP pipeline (IR YAML text or its first document as a dict).

    The gate component's single return value ("Output") is `GateResult.promoted`, so it maps to GATE.output.
    """
    spec = next(yaml.safe_load_all(ir)) if isinstance(ir, str) else ir
    components = spec["components"]
    tasks: dict[str, list[str]] = {}  # task -> upstream tasks
    groups: dict[str, dict] = {}  # condition group -> {deps, condition, members}

    def walk(dag_tasks: dict[str, Any], inherited: list[str]) -> None:
        for name, task in dag_tasks.items():
            deps = list(task.get("dependentTasks", [])) + inherited
            component = components[task["componentRef"]["name"]]
            if "dag" in component:  # a dsl.If group: its members run after the group's dependencies
                members = list(component["dag"]["tasks"])
                condition = task.get("triggerPolicy", {}).get("condition", "")
                groups[name] = {"deps": deps, "condition": condition, "members": members}
                walk(component["dag"]["tasks"], deps)
            else:
                tasks[name] = deps

    walk(spec["root"]["dag"]["tasks"], [])
    nodes = list(tasks)
    edges = {(dep, name) for name, deps in tasks.items() for dep in deps if dep in tasks}
    params = {}
    for name, p in spec["root"].get("inputDefinitions", {}).get("parameters", {}).items():
        tp = _KFP_TYPES.get(p["parameterType"], p["parameterType"])
        default = p.get("defaultValue")
        params[name] = (tp, None if default is None else {"int": int, "float": float}.get(tp, lambda v: v)(default))
    gate = None
    for group in groups.values():
        match = _KFP_CONDITION.match(group["condition"].strip())
        if match:
            gate = (match["task"], GATE.output, match["value"] == "true", tuple(group["members"]))
    edges_reduced = _reduce(nodes, edges)
    return Shape(_order(nodes, edges_reduced), edges_reduced, params, gate)


# --- SageMaker definition ------------------------------------------------------------------------------------

_SM_TYPES = {"String": "str", "Integer": "int", "Float": "float", "Boolean": "bool"}
_STEP_REF = re.compile(r"^Steps\.([\w-]+)")


def _references(obj: Any) -> set[str]:
    """Step names an argument tree reads from (`{"Get": "Steps.X..."}`)."""
    found: set[str] = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "Get" and isinstance(value, str) and (m := _STEP_REF.match(value)):
                found.add(m.group(1))
            else:
                found |= _references(value)
    elif isinstance(obj, list):
        for item in obj:
            found |= _references(item)
    return found


def sagemaker_shape(sm: dict, declared_steps: tuple[Step, ...] = STEPS) -> Shape:
    """Shape of a SageMaker pipeline definition (parsed JSON).

    SageMaker steps named like a declared step stand for it; `<step>-<part>` steps (deploy-register, ...) are
    that step's helpers and belong to it; the gate's Condition/Fail steps are the gate condition.
    """
    declared = {s.name for s in declared_steps}
    flat: dict[str, dict] = {}  # every SageMaker step by name
    guard_of: dict[str, str] = {}  # step inside a condition -> condition step
    conditions: list[dict] = []

    def walk(steps: list[dict], condition: str | None) -> None:
        for step in steps:
            flat[step["Name"]] = step
            if condition:
                guard_of[step["Name"]] = condition
            if step["Type"] == "Condition":
                conditions.append(step)
                walk(step["Arguments"].get("IfSteps", []), step["Name"])
                walk(step["Arguments"].get("ElseSteps", []), step["Name"])

    walk(sm["Steps"], None)

    def owner(name: str) -> str:
        if name in declared:
            return name
        base = name.split("-", 1)[0]
        return base if base in declared else name

    raw_edges: set[tuple[str, str]] = set()
    for name, step in flat.items():
        reads = step["Arguments"]["Conditions"] if step["Type"] == "Condition" else step.get("Arguments", {})
        upstream = set(step.get("DependsOn", [])) | _references(reads)
        upstream |= _references(step.get("PropertyFiles", []))
        if name in guard_of:
            upstream.add(guard_of[name])
        for up in upstream:
            raw_edges.add((up, name))
    # Condition steps are transparent: their members run after what the condition reads.
    for cond in (c["Name"] for c in conditions):
        ins = {a for a, b in raw_edges if b == cond}
        outs = {b for a, b in raw_edges if a == cond}
        raw_edges = {e for e in raw_edges if cond not in e} | {(a, b) for a in ins for b in outs}
    edges = {(owner(a), owner(b)) for a, b in raw_edges if owner(a) != owner(b)}
    nodes = [s.name for s in declared_steps if s.name in flat] + sorted(
        {owner(n) for n in flat if owner(n) not in declared and flat[n]["Type"] not in ("Condition", "Fail")}
    )
    edges = {e for e in edges if e[0] in nodes and e[1] in nodes}
    params = {
        p["Name"]: (_SM_TYPES.get(p["Type"], p["Type"]), p.get("DefaultValue")) for p in sm.get("Parameters", [])
    }
    gate = None
    for cond in conditions:
        for c in cond["Arguments"]["Conditions"]:
            left = c.get("LeftValue", {})
            json_get = left.get("Std:JsonGet") if isinstance(left, dict) else None
            if c["Type"] == "Equals" and json_get:
                ref = _STEP_REF.match(json_get["PropertyFile"]["Get"])
                guarded = []
                for s in cond["Arguments"]["IfSteps"]:
                    if owner(s["Name"]) not in guarded:
                        guarded.append(owner(s["Name"]))
                gate = (ref.group(1) if ref else "?", json_get["Path"], c["RightValue"], tuple(guarded))
    reduced = _reduce(nodes, edges)
    return Shape(_order(nodes, reduced), reduced, params, gate)


# --- comparison -------------------------------------------------------------------------------------------------


def differences(backend: str, expected: Shape, actual: Shape) -> list[str]:
    out: list[str] = []
    for name in expected.order:
        if name not in actual.order:
            out.append(f"{backend}: step {name!r} is declared but missing (teach the {backend} adapter)")
    for name in actual.order:
        if name not in expected.order:
            out.append(f"{backend}: step {name!r} is not in the declaration (pipelines/definition.py)")
    if not out and expected.order != actual.order:
        out.append(f"{backend}: dependency order {list(actual.order)} != declared {list(expected.order)}")
    for a, b in sorted(expected.edges - actual.edges):
        out.append(f"{backend}: missing dependency {a} -> {b}")
    for a, b in sorted(actual.edges - expected.edges):
        out.append(f"{backend}: undeclared dependency {a} -> {b}")
    for name in expected.parameters.keys() - actual.parameters.keys():
        out.append(f"{backend}: parameter {name!r} is declared but missing")
    for name in actual.parameters.keys() - expected.parameters.keys():
        out.append(f"{backend}: parameter {name!r} is not declared")
    for name in expected.parameters.keys() & actual.parameters.keys():
        if expected.parameters[name] != actual.parameters[name]:
            out.append(
                f"{backend}: parameter {name!r} is {actual.parameters[name]}, declared {expected.parameters[name]}"
            )
    if expected.gate != actual.gate:
        out.append(f"{backend}: gate condition {actual.gate} != declared {expected.gate}")
    return sorted(out)


def check(
    kfp_ir: str | dict,
    sagemaker_definition: dict,
    steps: tuple[Step, ...] = STEPS,
    overrides: dict[str, Any] | None = None,
) -> list[str]:
    """All differences between the declaration and the two compiled pipelines (empty = same pipeline)."""
    expected = declared_shape(steps, overrides)
    return differences("KFP", expected, kfp_shape(kfp_ir)) + differences(
        "SageMaker", expected, sagemaker_shape(sagemaker_definition, steps)
    )
