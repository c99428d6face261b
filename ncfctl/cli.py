"""`ncfctl`: the one command-line entry point for humans.

Each sub-command lives in the module that owns the step and exposes `main(argv) -> int`; modules are imported
only when their command runs, so `ncfctl --help` stays instant.

A failure prints one `error:` line naming the cause and the fix, exits with its fault class's code (ncf/errors.py;
`ncfctl --help` lists them) and leaves the full trace in a log file whose path the line gives. `--debug` (anywhere
on the line, or NCF_DEBUG=1) prints the trace instead, and lets in-process Spark log to the terminal.
"""

from __future__ import annotations

import importlib
import os
import sys

from ncf import errors

COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("spark.generate", "write synthetic e-commerce interaction logs"),
    "preprocess": ("spark.preprocess", "raw logs -> a dt=YYYY-MM-DD training partition"),
    "train": ("ncf.train", "train GMF / MLP / NeuMF on a partition -> a model package"),
    "gate": ("ncf.gate", "register a model in MLflow and run the champion/challenger gate"),
    "serve": ("serving.server", "serve a model package or registry alias on 127.0.0.1 (KServe)"),
    "deploy": ("serving.deploy", "deploy the champion: local predictor or KServe InferenceService"),
    "recommend": ("ncf.recommend", "nightly batch: the champion's top-K for every user -> recommendations/dt=..."),
    "run": ("pipelines.local_run", "run the whole pipeline locally (kfp.local)"),
    "status": ("ncf.status", "every model version: gate decisions, lineage, champion, what serves it"),
    "compile": ("pipelines.compile", "compile the pipeline: KFP IR YAML and SageMaker definition JSON"),
    "submit": ("pipelines.submit", "upload the pipeline to a KFP endpoint, create runs / schedules"),
    "bench": ("bench.run", "run the benchmarks in bench/"),
}


# Commands that run Spark in this process: its JVM logs every failed task at ERROR on the terminal (hundreds of
# lines for one full disk); the error line and the trace file say it once. --debug keeps them.
IN_PROCESS_SPARK = frozenset({"generate", "preprocess"})


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ncfctl [--debug] <command> [options]   (ncfctl <command> --help for its options)", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "exit codes:"] + [f"  {k.exit_code:>3}  {k.name}" for k in errors.KINDS] + [
        "", "--debug (anywhere, or NCF_DEBUG=1): full traces on stderr instead of a log file"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = argv[:argv.index("--")] if "--" in argv else argv
    if "--debug" in options:
        argv.remove("--debug")
        os.environ[errors.DEBUG_ENV] = "1"  # steps started from here (kfp.local subprocesses) inherit it
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if name in IN_PROCESS_SPARK and not errors.debug_enabled():
        os.environ.setdefault("NCF_SPARK_LOG_LEVEL", "OFF")  # read by spark/session.py
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
