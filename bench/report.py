"""How the benchmarks report: a two-column markdown table, printed and appended to bench/RESULTS.md."""

from __future__ import annotations

import platform
from pathlib import Path


def host() -> str:
    """The CPU the numbers were measured on, e.g. `x86_64 AMD EPYC (family 25, model 17)`: sessions run on
    different hosts, and timings compare only between sections from the same one."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        return platform.machine()
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    name = fields.get("model name", platform.processor() or "unknown CPU")
    return f"{platform.machine()} {name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| measurement | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def publish(report: str, results: str) -> None:
    """Print `report` and append it to the `results` file."""
    print(report)
    with open(results, "a") as out:
        out.write(report)
