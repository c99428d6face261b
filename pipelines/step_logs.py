"""What `ncfctl run` shows while kfp.local runs the pipeline: one line per step as it starts and ends, progress
bars for the long parts on a terminal, and every line each step printed in a log file of its own.

How kfp.local (2.17) prints: `SubprocessRunner` runs each task through
`kfp.local.subprocess_task_handler.run_local_subprocess(full_command, env_vars)`, which pipes the task's stdout
and stderr together and `print()`s each line into the parent's stdout (indented by `logging_utils.indented_print`);
the orchestrator's own lines (task started, its outputs as artifact reprs, horizontal rules) are logging records on
a handler that `logging_utils.local_logger_context` binds to `sys.stdout` as each task starts; its warnings about
base images and the like go through `warnings`. `capture()` swaps in `StepRunner.run_local_subprocess` for the
length of a pipeline call (it knows the task from the command's `--function_to_execute` and where its outputs go
from `--executor_input`), points `sys.stdout` at `kfp.log` and records warnings there. `--verbose` streams it all
to the terminal as well, as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from ncf import errors

# Progress a step reports in its output, parsed line by line: (pattern, bar label from the match).
# Training prints `[NeuMF-refit-m1] epoch 3/4 ...` per epoch; tuning is expected to print `trial 3/20 ...`.
PROGRESS_PATTERNS: tuple[tuple[re.Pattern, Callable[[re.Match], str]], ...] = (
    (re.compile(r"^\[(?P<label>[^\]]+)\] epoch (?P<n>\d+)/(?P<total>\d+)"), lambda m: f"{m['label']} epochs"),
    (re.compile(r"\btrial (?P<n>\d+)/(?P<total>\d+)"), lambda m: "trials"),
)


def display_path(path: str | Path) -> str:
    """`path` relative to the working directory when it is below it (shorter lines), else absolute."""
    path = Path(path).resolve()
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


@dataclasses.dataclass
class StepOutcome:
    name: str
    log: Path
    seconds: float
    returncode: int
    outputs: dict[str, Any] | None  # executor_output.json (kfp tasks) or the step's own result
    failure: errors.Classified | None = None


class Console:
    """The terminal side: start / end lines on `out`, progress bars on stderr when it is a terminal."""

    def __init__(self, out: TextIO, verbose: bool):
        self.out = out
        self.verbose = verbose
        self._bar = None
        self._bar_label = ""

    def line(self, text: str) -> None:
        self.close_bar()
        self.out.write(text + "\n")
        self.out.flush()

    def progress(self, text: str) -> None:
        """Advance a bar from one line of step output (nothing when the line reports no progress)."""
        if self.verbose:
            return
        for pattern, label_of in PROGRESS_PATTERNS:
            match = pattern.search(text)
            if match:
                self._show(label_of(match), int(match["n"]), int(match["total"]))
                return

    def _show(self, label: str, n: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None or label != self._bar_label or total != self._bar.total:
            self.close_bar()
            # disable=None: no bar unless stderr is a terminal (logs and pipes get the step lines only).
            self._bar = tqdm(total=total, desc=f"    {label}", leave=False, disable=None, file=sys.stderr,
                             bar_format="{desc} {bar} {n}/{total} [{elapsed}]")
            self._bar_label = label
        self._bar.update(n - self._bar.n)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def run_logged(command: list[str], log: Path, console: Console, env: dict[str, str] | None = None,
               indent: str = "") -> tuple[int, float]:
    """Run `command` with stdout + stderr into `log` (and to the terminal with --verbose); feed the bars."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace",
            env=env, stdin=subprocess.DEVNULL) as proc:
        for line in proc.stdout:  # universal newlines: a tqdm bar's \r updates arrive as lines too
            out.write(line)
            out.flush()
            if console.verbose:
                console.out.write(indent + line)
            else:
                console.progress(line)
        returncode = proc.wait()
    console.close_bar()
    return returncode, time.perf_counter() - started


def _argument(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command[:-1] else None


class StepRunner:
    """Stands in for kfp.local's `run_local_subprocess`: each task's output goes to `<log_dir>/<task>.log`."""

    def __init__(self, log_dir: Path, console: Console, summarize: Callable[[str, dict[str, Any]], str]):
        self.log_dir = log_dir
        self.console = console
        self.summarize = summarize
        self.outcomes: list[StepOutcome] = []

    @property
    def failed(self) -> StepOutcome | None:
        return next((o for o in self.outcomes if o.returncode != 0), None)

    def run_local_subprocess(self, full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        executor_input = json.loads(_argument(full_command, "--executor_input") or "{}")
        output_file = executor_input.get("outputs", {}).get("outputFile")
        # The task's directory (<pipeline root>/<run>/<task>/executor_output.json) names it uniquely, even when
        # one component runs twice (`chatty`, `chatty-2`); else the component function's name.
        task = Path(output_file).parent.name if output_file else (
            _argument(full_command, "--function_to_execute") or "task")
        log = self.log_dir / f"{task}.log"
        self.console.line(f"  {task:<10}  started {time.strftime('%H:%M:%S')}")
        env = {**os.environ, **env_vars} if env_vars else None
        returncode, seconds = run_logged(full_command, log, self.console, env, indent="    ")  # as kfp indents
        outputs = None
        if returncode == 0 and output_file and Path(output_file).exists():
            outputs = json.loads(Path(output_file).read_text())
        outcome = StepOutcome(task, log, seconds, returncode, outputs)
        if returncode == 0:
            self.console.line(f"  {task:<10}  done in {seconds:.0f}s: {self.summarize(task, outputs or {})}"
                              f"   log: {display_path(log)}")
        else:
            outcome.failure = errors.classify_log(log.read_text(errors="replace")) or errors.Classified(
                errors.INTERNAL, f"exited with {returncode} and no traceback")
            self.console.line(f"  {task:<10}  FAILED after {seconds:.0f}s: {outcome.failure.message}"
                              f"   log: {display_path(log)}")
        self.outcomes.append(outcome)
        return returncode


class _Tee(io.TextIOBase):
    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def capture(runner: StepRunner, orchestrator_log: Path) -> Iterator[None]:
    """For one kfp.local pipeline call: tasks through `runner`, the orchestrator's lines and warnings into
    `orchestrator_log` (and the terminal too with --verbose)."""
    from kfp.local import subprocess_task_handler

    orchestrator_log.parent.mkdir(parents=True, exist_ok=True)
    original = subprocess_task_handler.run_local_subprocess
    with orchestrator_log.open("a", encoding="utf-8") as log, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream = _Tee(log, runner.console.out) if runner.console.verbose else log
        subprocess_task_handler.run_local_subprocess = runner.run_local_subprocess
        try:
            with contextlib.redirect_stdout(stream):
                yield
        finally:
            subprocess_task_handler.run_local_subprocess = original
            for warning in caught:  # (warnings.showwarning here would append to `caught` itself)
                text = warnings.formatwarning(warning.message, warning.category, warning.filename, warning.lineno,
                                              warning.line)
                log.write(text)
                if runner.console.verbose:
                    runner.console.out.write(text)
