"""Scale benchmark: the pipeline's real steps, end to end, on synthetic logs of growing sizes.

    .venv/bin/python bench/scale.py                                   # 1M, 10M and 50M events
    .venv/bin/python bench/scale.py --quick                           # 100k and 300k events: a smoke check
    ncfctl bench scale --quick                                        # the same, through bench/run.py
    .venv/bin/python bench/scale.py --sizes 1000000,5000000 --workers 4 --slice-users 50000
    .venv/bin/python bench/scale.py --quick --master-local            # preprocess on local[*], no cluster

For each size the synthetic log (spark/generate.py) is generated once per size and seed and reused (`--data-dir`,
the cache bench/preprocess.py uses too); generation is not timed. Then, each step in its own subprocess, as the
pipeline runs it:

  preprocess  `ncfctl preprocess` on a real Spark standalone cluster on 127.0.0.1 (spark/standalone.py: a master
              and --workers workers of one core, executors in their own JVMs), started for this step alone;
              `--master-local`: local[*] instead
  train       `ncf.train`: one NCF model (--model, default GMF) for one epoch on the CPU, no model selection, no
              validation split, no ensemble: the cost is training throughput (samples/s from its metrics.json)
  recommend   `ncf.recommend`: the nightly top-K for every user on the CPU; with --slice-users N only users
              [0, N) are scored (`--user-range 0:N`) and the time for every user is extrapolated linearly
  serve       the predictor (`serving.server`) on the package: time to ready, then single-user V1 REST requests
              at concurrency 1 (p50 / p99) and 8 (req/s), measured by bench/serve.py's client

Per step and size: wall time, CPU seconds, peak RSS of the step's process (ru_maxrss from os.wait4) and of all
its processes at once (sampled from /proc: a Spark job's driver JVM and the cluster's executors are processes this
one cannot wait for), the step's own throughput, and the growth of time between consecutive sizes. Before each size
the memory and disk it needs are estimated from the sizes measured before it; a size the machine cannot hold is
skipped with what it would need. A step that fails is reported with the tail of its stderr, and ends the sizes.
Appends the table, with the command, to bench/RESULTS.md (--results).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import serve  # noqa: E402
from bench.report import host, publish, table  # noqa: E402
from ncf import contracts, storage  # noqa: E402
from ncf.ports import free_port  # noqa: E402
from spark.standalone import standalone_cluster  # noqa: E402

GB = 2**30
SHARED = Path(os.environ.get("NCF_SHARED_DIR", REPO.parent / "shared"))
ML100K = SHARED / "datasets" / "ml-100k" / "u.data"
RUN_DATE = "2026-01-01"
STEPS = ("preprocess", "train", "recommend", "serve")
SAMPLE_S = 0.2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
HEADROOM = 0.9  # leave a tenth of the free memory and disk to everything else on the machine


# ---- pure helpers (tests/bench/test_scale.py) ------------------------------------------------------------------

def size_label(events: int) -> str:
    """1000000 -> '1M', 300000 -> '300k', 2500000 -> '2.5M'."""
    for unit, suffix in ((1_000_000, "M"), (1_000, "k")):
        if events >= unit:
            return f"{events / unit:g}{suffix}"
    return str(events)


def growth(smaller: int, smaller_s: float, larger: int, larger_s: float, what: str = "time") -> str:
    """'10M/1M: 8.7x time for 10x data'."""
    return (f"{size_label(larger)}/{size_label(smaller)}: {larger_s / smaller_s:.1f}x {what} for "
            f"{larger / smaller:.3g}x data")


def memory_need(measured: list[tuple[int, int]], events: int) -> tuple[int, int] | None:
    """(at least, at most) bytes of memory a step should need at `events`, from its peaks (events, bytes) at the
    sizes measured so far. Two or more: the line through the two largest sizes (a fixed part plus bytes per event),
    never below the largest peak measured; both bounds are that estimate. One: at least its peak (memory does not
    shrink with the data), at most its peak scaled with the events (as if none of it were fixed). None: nothing
    measured yet."""
    if not measured:
        return None
    points = sorted(measured)
    if len(points) == 1:
        (n, peak), = points
        return peak, max(peak, round(peak * events / n))
    (n0, peak0), (n1, peak1) = points[-2:]
    per_event = max(0.0, (peak1 - peak0) / (n1 - n0))
    fixed = max(0.0, peak1 - per_event * n1)
    estimate = max(max(peak for _, peak in points), round(fixed + per_event * events))
    return estimate, estimate


def memory_fit(need: tuple[int, int] | None, available: int) -> str:
    """'fits', 'may not fit' (only the upper bound is over) or 'does not fit' (`available` already with headroom)."""
    if need is None or need[1] <= available:
        return "fits"
    return "may not fit" if need[0] <= available else "does not fit"


# ---- measuring a step's processes ------------------------------------------------------------------------------

def _processes() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, CPU ticks of its own, resident bytes) of every process, from /proc/<pid>/stat."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                stat = handle.read()
        except OSError:  # exited since the listing
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
        found[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21]) * PAGE_BYTES)
    return found


def _tree(roots: list[int]) -> dict[int, tuple[int, int, int]]:
    """The processes of `roots` and all their descendants."""
    processes = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {}, [pid for pid in roots if pid in processes]
    while todo:
        pid = todo.pop()
        found[pid] = processes[pid]
        todo += children.get(pid, [])
    return found


class Usage:
    """CPU time and peak memory of process trees, and the lowest free disk, sampled every SAMPLE_S s in a thread
    while a step runs."""

    def __init__(self, roots: list[int], disk: Path):
        self.roots, self.disk = roots, disk
        self.peak_rss = 0
        self.lowest_free = shutil.disk_usage(disk).free
        self._ticks_before: dict[int, int] = {}  # the cluster's daemons ran before the step: only its share counts
        self._ticks_last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    @property
    def cpu_s(self) -> float:
        """A lower bound: a process's last SAMPLE_S s before it exits are not seen."""
        return sum(t - self._ticks_before.get(pid, 0) for pid, t in self._ticks_last.items()) / CLOCK_TICKS

    def __enter__(self) -> Usage:
        self._ticks_before = {pid: ticks for pid, (_, ticks, _) in _tree(self.roots).items()}
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample_until_stopped(self) -> None:
        while True:
            processes = _tree(self.roots)
            self.peak_rss = max(self.peak_rss, sum(rss for _, _, rss in processes.values()))
            self._ticks_last.update({pid: ticks for pid, (_, ticks, _) in processes.items()})
            self.lowest_free = min(self.lowest_free, shutil.disk_usage(self.disk).free)
            if self._stop.wait(SAMPLE_S):
                return


@dataclasses.dataclass
class StepRun:
    """What one step cost, and how it ended."""
    step: str
    events: int
    returncode: int
    wall_s: float
    cpu_s: float
    process_rss: int  # bytes: the step's own process (with the children it waited for)
    all_rss: int  # bytes: all its processes at once (with the cluster's daemons and executors when it used one)
    lowest_free: int  # free disk bytes at the fullest moment
    stderr_tail: str = ""
    detail: str = ""  # the step's throughput, in words
    seconds_for_growth: float = 0.0  # the time compared across sizes (serve: p50 latency)
    extrapolated: bool = False  # seconds_for_growth is a recommend slice's time scaled to every user
    samples_per_s: float = 0.0  # train: the step's own training throughput

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_step(step: str, events: int, command: list[str], logs: Path, disk: Path, env: dict[str, str] | None = None,
             watch: list[int] | None = None) -> StepRun:
    """Run `command` in its own process, its output to `logs`/<step>.{out,err}, and measure it. `watch`: more
    process trees the step's work runs in (a cluster's daemons, whose executors run the Spark job)."""
    print(f"  {step}: {shlex.join(command)}", flush=True)
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{step}.out", logs / f"{step}.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        with Usage([process.pid, *(watch or [])], disk) as usage:
            # os.wait4 rather than Popen.wait: it returns the child's own rusage (RUSAGE_CHILDREN would be the
            # maximum over every child this benchmark ever waited for)
            _, status, rusage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    # two lower bounds of the CPU time: the sampled one misses a process's last moments, the waited one the
    # processes the child did not wait for (the driver JVM, executors)
    cpu = max(usage.cpu_s, rusage.ru_utime + rusage.ru_stime)
    tail = "" if process.returncode == 0 else "\n".join(err_path.read_text(errors="replace").splitlines()[-15:])
    process_rss = rusage.ru_maxrss * 1024
    # all the processes hold at least what one held, even when the sampling missed that moment
    return StepRun(step, events, process.returncode, wall, cpu, process_rss, max(process_rss, usage.peak_rss),
                   usage.lowest_free, tail, seconds_for_growth=wall)


# ---- the steps -------------------------------------------------------------------------------------------------

class GenerationFailed(RuntimeError):
    """Generating a log exited non-zero: the message has its stderr tail."""


def generate(data_dir: Path, events: int, seed: int) -> Path:
    """The synthetic log of `events` events, generated once (a subprocess: no Spark JVM stays in this one)."""
    path = data_dir / f"events-{events}-seed{seed}"  # bench/preprocess.py's cache layout
    if not storage.is_complete(path):
        print(f"generating {events:,} events -> {path} (once, not timed)", flush=True)
        result = subprocess.run([sys.executable, "-m", "ncfctl", "generate", "--output-uri", str(path),
                                 "--num-events", str(events), "--seed", str(seed), "--master", "local[*]"],
                                cwd=REPO, capture_output=True, text=True)
        if result.returncode != 0:
            raise GenerationFailed(f"generating {events:,} events failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return path


def preprocess(args, events: int, log: Path, run_dir: Path) -> StepRun:
    command = [sys.executable, "-m", "ncfctl", "preprocess", "--input-uri", str(log), "--storage-root",
               str(run_dir), "--run-date", RUN_DATE]
    if args.master_local:
        result = run_step("preprocess", events, [*command, "--master", "local[*]"], run_dir / "logs", run_dir)
    else:
        with standalone_cluster(workers=args.workers, cores_per_worker=1, memory_per_worker=args.worker_memory,
                                work_dir=run_dir / "cluster") as cluster:
            result = run_step("preprocess", events, [*command, "--master", cluster.master_url, "--scratch-dir",
                                                     str(cluster.shared_dir)],
                              run_dir / "logs", run_dir, env=cluster.driver_env(),
                              watch=[p.pid for p in cluster.processes])
    if result.ok:
        stats = storage.read_json(contracts.partition_uri(run_dir, RUN_DATE) + "/stats.json")
        result.detail = (f"{events / result.wall_s:,.0f} events/s; {stats['seconds']:.1f} s by the step's own clock; "
                         f"{stats['num_users']:,} users x {stats['num_items']:,} items, {stats['num_train']:,} "
                         f"training rows")
    return result


def train(args, events: int, run_dir: Path, partition_uri: str = "") -> StepRun:
    command = [sys.executable, "-m", "ncf.train", "--partition-uri",
               partition_uri or contracts.partition_uri(run_dir, RUN_DATE),
               "--output-uri", str(run_dir / "package"), "--progress", "off", "--device", "cpu",
               # one model, one epoch, on every training row: no model selection, validation split, refit,
               # pretraining or ensemble
               "--family", "ncf", "--candidates", "", "--model", args.model, "--epochs", "1", "--ensemble", "1",
               "--patience", "0", "--refit", "false", "--pretrain", "false"]
    result = run_step("train", events, command, run_dir / "logs", run_dir)
    if result.ok:
        metrics = storage.read_json(run_dir / "package" / contracts.PACKAGE_METRICS)
        result.samples_per_s = metrics["samples_per_second"]
        result.detail = (f"{metrics['samples_per_second']:,.0f} samples/s ({args.model}, 1 epoch; the step's own "
                         f"epoch timing); fit {metrics['train_seconds']:.1f} s with data preparation")
    return result


def ml100k_baseline(args, workdir: Path) -> StepRun | None:
    """The same one-epoch training on MovieLens-100K (the partition spark/preprocess.py writes from
    ../shared/datasets/ml-100k, cached in --data-dir): the samples/s the larger sizes are compared with. None when
    the dataset is absent (said on stdout)."""
    if not ML100K.exists():
        print(f"ML-100K baseline skipped: {ML100K} not found (set NCF_SHARED_DIR)", flush=True)
        return None
    root = args.data_dir / "ml-100k"
    uri = contracts.partition_uri(root, "2000-01-01")
    if not storage.is_complete(uri):
        print(f"building the ML-100K partition -> {uri} (once, not timed)", flush=True)
        subprocess.run([sys.executable, "-m", "ncfctl", "preprocess", "--input-uri", str(ML100K), "--storage-root",
                        str(root), "--run-date", "2000-01-01", "--master", "local[*]"], cwd=REPO, check=True,
                       capture_output=True)
    print("ML-100K baseline", flush=True)
    run_dir = workdir / "ml-100k"
    result = train(args, 100_000, run_dir, uri)
    shutil.rmtree(run_dir, ignore_errors=True)
    print_run(result)
    return result


def recommend(args, events: int, run_dir: Path, users: int) -> StepRun:
    scored = min(args.slice_users, users) if args.slice_users else users
    command = [sys.executable, "-m", "ncf.recommend", "--model-uri", str(run_dir / "package"), "--output-uri",
               str(run_dir / "recommendations" / f"dt={RUN_DATE}"), "--device", "cpu",
               # a slice is one chunk-aligned range: chunks no larger than it, so exactly `scored` users are scored
               "--chunk-users", str(min(args.chunk_users, scored))]
    if scored < users:
        command += ["--user-range", f"0:{scored}"]
    result = run_step("recommend", events, command, run_dir / "logs", run_dir)
    if result.ok:
        result.detail = f"{scored / result.wall_s:,.0f} users/s"
        if scored < users:
            result.seconds_for_growth = result.wall_s * users / scored
            result.extrapolated = True
            result.detail += (f"; {scored:,} of {users:,} users scored: **all users extrapolated "
                              f"{result.seconds_for_growth:.1f} s** (linear; process start counted in full)")
    return result


def serve_latency(args, events: int, run_dir: Path) -> StepRun:
    """The predictor on the package: seconds to ready, then bench/serve.py's V1 REST client against it."""
    package = run_dir / "package"
    ids = json.loads((package / contracts.PACKAGE_USER_IDS).read_text())
    users = random.Random(0).sample(ids, min(512, len(ids)))
    del ids
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "serving.server", "--model-uri", str(package), "--http-port", str(port),
               "--grpc-port", str(grpc_port)]
    print(f"  serve: {shlex.join(command)}", flush=True)
    log = run_dir / "logs" / "serve.log"
    started = time.perf_counter()
    # not serve.start: a server that never gets ready must still be stopped here
    with log.open("w") as out:
        server = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    try:
        with Usage([server.pid], run_dir) as usage:
            try:
                serve._wait_ready(port, server, log, timeout=args.serve_timeout)
            except RuntimeError as exc:  # exited or never ready: the message has the log's tail
                return StepRun("serve", events, server.poll() or 1, time.perf_counter() - started, usage.cpu_s, 0,
                               usage.peak_rss, usage.lowest_free, str(exc)[-3000:])
            ready_s = time.perf_counter() - started
            result = serve.measure("v1", port, grpc_port, users, args.requests, args.throughput_seconds)
            process_rss = serve.memory_kb(server.pid)["VmHWM"] * 1024
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    return StepRun("serve", events, 0, ready_s, usage.cpu_s, process_rss, max(process_rss, usage.peak_rss),
                   usage.lowest_free, seconds_for_growth=result["p50"],
                   detail=f"p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms (c=1, {args.requests} requests); "
                          f"{result['rps']:,.0f} req/s at c=8 for {args.throughput_seconds:g} s; errors "
                          f"{result['errors']}")


# ---- sizes -----------------------------------------------------------------------------------------------------

def mem_available() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@dataclasses.dataclass
class History:
    """What the sizes run so far needed: the basis of the next size's estimate."""
    memory: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)  # step -> (events, bytes)
    disk_per_event: float = 0.0  # the run's outputs and scratch at its fullest, at the largest size run
    log_bytes_per_event: float = 0.0  # the generated log

    def record(self, run: StepRun) -> None:
        self.memory.setdefault(run.step, []).append((run.events, run.all_rss))


def check_size(history: History, events: int, log_cached: bool, workdir: Path, data_dir: Path) -> str | None:
    """What `events` events would need that the machine does not have (None: it fits, or nothing is measured yet).
    Memory: the step that needs the most (the steps run one after another). Prints a warning when only the upper
    bound of a step's memory (scaled from a single size) is over."""
    available = int(mem_available() * HEADROOM)
    needs = {step: memory_need(points, events) for step, points in history.memory.items()}
    verdicts = {step: memory_fit(need, available) for step, need in needs.items()}
    problems = [f"~{needs[step][0] / GB:.1f} GB of memory ({step}), {available / GB:.1f} GB available"
                for step, verdict in verdicts.items() if verdict == "does not fit"]
    for step in (step for step, verdict in verdicts.items() if verdict == "may not fit"):
        print(f"  warning: {step} may need up to {needs[step][1] / GB:.1f} GB of memory (scaled from one size), "
              f"{available / GB:.1f} GB available: trying", flush=True)
    log_need = 0 if log_cached else round(history.log_bytes_per_event * events)
    run_need = round(history.disk_per_event * events)
    if os.stat(workdir).st_dev == os.stat(data_dir).st_dev:
        disk_needs = [(workdir, log_need + run_need)]
    else:
        disk_needs = [(workdir, run_need), (data_dir, log_need)]
    problems += [f"~{need / GB:.1f} GB of disk on {path}, {shutil.disk_usage(path).free / GB:.1f} GB free"
                 for path, need in disk_needs if need > shutil.disk_usage(path).free * HEADROOM]
    return "; ".join(problems) or None


def print_run(run: StepRun) -> None:
    status = "ok" if run.ok else f"FAILED (exit {run.returncode})"
    print(f"  {run.step}: {status}, {run.wall_s:.1f} s, {run.cpu_s:.1f} CPU s, peak RSS "
          f"{run.process_rss / GB:.2f} GB (process) / {run.all_rss / GB:.2f} GB (all); {run.detail}", flush=True)
    if not run.ok:
        print(f"  stderr tail of {run.step}:\n{run.stderr_tail}", flush=True)


def run_size(args, events: int, log: Path, run_dir: Path, history: History) -> list[StepRun]:
    """Every step on one size, in order; stops at the first failure (the later steps need its output)."""
    run_dir.mkdir(parents=True)
    free_before = shutil.disk_usage(run_dir).free
    runs = [preprocess(args, events, log, run_dir)]
    if runs[-1].ok:
        runs.append(train(args, events, run_dir))
    if runs[-1].ok:
        users = len(json.loads((run_dir / "package" / contracts.PACKAGE_USER_IDS).read_text()))
        runs.append(recommend(args, events, run_dir, users))
    if runs[-1].ok:
        runs.append(serve_latency(args, events, run_dir))
    for run in runs:
        history.record(run)
        print_run(run)
    history.disk_per_event = (free_before - min(run.lowest_free for run in runs)) / events
    return runs


def preprocess_master(args) -> str:
    """Where the preprocess step's Spark job runs."""
    return ("local[*]" if args.master_local else
            f"standalone cluster on 127.0.0.1, {args.workers} workers x 1 core, {args.worker_memory} executors")


def rows_for(runs_by_size: dict[int, list[StepRun]], skipped: dict[int, str], args,
             baseline: StepRun | None = None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if baseline is not None and baseline.ok:
        rows.append(("ML-100K baseline: train", f"{baseline.wall_s:.1f} s wall, {baseline.cpu_s:.1f} CPU s; "
                                                f"{baseline.detail}"))
    for events, runs in runs_by_size.items():
        for run in runs:
            name = f"{size_label(events)} events: {run.step}"
            if not run.ok:
                tail = run.stderr_tail.strip().splitlines()[-1:] or ["(no stderr)"]
                rows.append((name, f"**FAILED** (exit {run.returncode}) after {run.wall_s:.1f} s: "
                                   f"{tail[0].replace('|', '/')}"))
                continue
            wall = "to ready" if run.step == "serve" else "wall"
            rows.append((name, f"{run.wall_s:.1f} s {wall}, {run.cpu_s:.1f} CPU s; peak RSS "
                               f"{run.process_rss / GB:.2f} GB (process), {run.all_rss / GB:.2f} GB (all its "
                               f"processes); {run.detail}".replace("|", "/")))
    for events, reason in skipped.items():
        rows.append((f"{size_label(events)} events", f"**skipped**: {reason}"))
    if baseline is not None and baseline.ok:
        for events, runs in runs_by_size.items():
            for run in (r for r in runs if r.step == "train" and r.ok):
                rows.append((f"train samples/s, {size_label(events)} events / ML-100K (target at 10M: >= 0.5)",
                             f"{run.samples_per_s / baseline.samples_per_s:.2f}"))
    for step in STEPS:
        done = [(events, run) for events, runs in runs_by_size.items() for run in runs if run.step == step and run.ok]
        what = "p50 latency" if step == "serve" else "time"
        for (smaller, a), (larger, b) in pairwise(done):
            marker = " (extrapolated)" if a.extrapolated or b.extrapolated else ""
            rows.append((f"growth: {step}",
                         growth(smaller, a.seconds_for_growth, larger, b.seconds_for_growth, what) + marker))
    return rows


@contextlib.contextmanager
def working_directory(path: str) -> Iterator[Path]:
    """`path`, or a temporary directory removed at the end."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
    else:
        with tempfile.TemporaryDirectory(prefix="ncf-bench-scale-") as tmp:
            yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k and 300k events (a smoke check)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        help="comma-separated event counts (default: 1000000,10000000,50000000)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", type=Path, default=REPO / "runs" / "bench" / "data",
                        help="where the generated logs are kept and reused")
    parser.add_argument("--workdir", default="", help="where every step writes (default: a temp dir removed at the "
                                                      "end); each size's outputs are removed after it")
    parser.add_argument("--master-local", action="store_true", help="preprocess on local[*] instead of a cluster")
    parser.add_argument("--skip-ml100k", action="store_true",
                        help="no ML-100K baseline (the same one-epoch training, for the samples/s ratio)")
    parser.add_argument("--workers", type=int, default=2, help="standalone cluster workers (1 core each)")
    parser.add_argument("--worker-memory", default="1g", help="memory of each worker's executor")
    parser.add_argument("--model", default="GMF", choices=("GMF", "MLP", "NeuMF"), help="the model trained")
    parser.add_argument("--chunk-users", type=int, default=20_000, help="recommend: users per Parquet part")
    parser.add_argument("--slice-users", type=int, default=0,
                        help="recommend: score only users [0, N) and extrapolate to all; 0: every user")
    parser.add_argument("--requests", type=int, default=0, help="serve: latency requests (default 3000; quick 300)")
    parser.add_argument("--throughput-seconds", type=float, default=0.0,
                        help="serve: seconds at concurrency 8 (default 10; quick 2)")
    parser.add_argument("--serve-timeout", type=float, default=600.0, help="serve: seconds to wait for ready")
    parser.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    args = parser.parse_args(argv)
    sizes = args.sizes or ([100_000, 300_000] if args.quick else [1_000_000, 10_000_000, 50_000_000])
    args.requests = args.requests or (300 if args.quick else 3000)
    args.throughput_seconds = args.throughput_seconds or (2.0 if args.quick else 10.0)
    command = "python bench/scale.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    args.data_dir.mkdir(parents=True, exist_ok=True)

    runs_by_size: dict[int, list[StepRun]] = {}
    skipped: dict[int, str] = {}
    history = History()
    stopped = ""  # why the remaining sizes are not run
    with working_directory(args.workdir) as workdir:
        baseline = None if args.skip_ml100k else ml100k_baseline(args, workdir)
        for events in sorted(sizes):
            print(f"{size_label(events)} events ({events:,})", flush=True)
            if stopped:
                print(f"  skipped: {stopped}", flush=True)
                skipped[events] = stopped
                continue
            log_path = args.data_dir / f"events-{events}-seed{args.seed}"
            reason = check_size(history, events, storage.is_complete(log_path), workdir, args.data_dir)
            if reason:
                print(f"  skipped: the machine cannot hold it: needs {reason}", flush=True)
                skipped[events] = f"needs {reason} (estimated from the smaller sizes)"
                continue
            try:
                log = generate(args.data_dir, events, args.seed)
            except GenerationFailed as exc:
                print(f"  {exc}", flush=True)
                skipped[events], stopped = str(exc).splitlines()[0], "a smaller size failed"
                continue
            history.log_bytes_per_event = directory_bytes(log) / events
            run_dir = workdir / f"events-{events}"
            runs_by_size[events] = run_size(args, events, log, run_dir, history)
            shutil.rmtree(run_dir, ignore_errors=True)  # disk for the next size
            if not all(run.ok for run in runs_by_size[events]):
                stopped = "a smaller size failed"  # and a larger one would fail the same way, later

    header = (f"## Scale: the pipeline's steps end to end ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
              f"{host()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
    setup = (f"preprocess on {preprocess_master(args)}; train {args.model}, 1 epoch, CPU; recommend "
             f"top-10 on the CPU{f', {args.slice_users:,} users then extrapolated' if args.slice_users else ''}; "
             f"serve V1 REST on 127.0.0.1. Generation not timed. CPU s: every process of the step (sampled every "
             f"{SAMPLE_S} s, or waited for)")
    rows = rows_for(runs_by_size, skipped, args, baseline)
    publish(f"\n{header}\n\n`{command.strip()}`: {setup}\n\n{table(rows)}\n", args.results)
    failed = any(not run.ok for runs in runs_by_size.values() for run in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
