"""How the benchmarks report: a two-column markdown table, printed and appended to bench/RESULTS.md."""

from __future__ import annotations


def table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| measurement | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def publish(report: str, results: str) -> None:
    """Print `report` and append it to the `results` file."""
    print(report)
    with open(results, "a") as out:
        out.write(report)
