"""bench/scale.py's helpers without Spark: labels, growth lines, the memory-fit decision, measuring a step."""

from __future__ import annotations

import sys

from bench.scale import History, check_size, growth, memory_fit, memory_need, run_step, size_label

GB = 2**30


def test_size_labels():
    assert [size_label(n) for n in (999, 100_000, 300_000, 1_000_000, 2_500_000, 50_000_000)] == \
        ["999", "100k", "300k", "1M", "2.5M", "50M"]


def test_growth_compares_time_with_data():
    assert growth(1_000_000, 10.0, 10_000_000, 87.0) == "10M/1M: 8.7x time for 10x data"
    assert growth(100_000, 2.0, 300_000, 2.2, "p50 latency") == "300k/100k: 1.1x p50 latency for 3x data"


def test_memory_need_from_the_sizes_measured():
    assert memory_need([], 10) is None
    # one size: at least its peak, at most scaled with the events
    assert memory_need([(1_000_000, 2 * GB)], 10_000_000) == (2 * GB, 20 * GB)
    # two or more: the line through the two largest (1 GB fixed + 1 kB per event here)
    points = [(100_000, 9 * GB), (1_000_000, GB + 1_000_000_000), (2_000_000, GB + 2_000_000_000)]
    assert memory_need(points, 10_000_000) == (GB + 10_000_000_000,) * 2
    # a peak that shrank with more data (noise) is no reason to expect less than the largest size measured
    assert memory_need([(1_000_000, 3 * GB), (2_000_000, 2 * GB)], 4_000_000) == (3 * GB, 3 * GB)


def test_memory_fit_decision():
    assert memory_fit(None, GB) == "fits"  # nothing measured: try
    assert memory_fit((GB, GB), 2 * GB) == "fits"
    assert memory_fit((GB, 4 * GB), 2 * GB) == "may not fit"  # only the bound scaled from one size is over
    assert memory_fit((3 * GB, 3 * GB), 2 * GB) == "does not fit"


def test_run_step_measures_the_child_and_reports_a_failure(tmp_path):
    hold = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1)"
    ok = run_step("hold", 1, [sys.executable, "-c", hold], tmp_path / "logs", tmp_path)
    assert ok.ok and ok.wall_s >= 1.0
    assert ok.process_rss >= 300 * 2**20 and ok.all_rss >= 300 * 2**20  # waited for and sampled
    failed = run_step("fail", 1, [sys.executable, "-c", "import sys; sys.exit('disk full')"], tmp_path / "logs",
                      tmp_path)
    assert failed.returncode == 1 and failed.stderr_tail == "disk full"


def test_a_size_the_machine_cannot_hold_is_refused_with_what_it_needs(tmp_path):
    history = History(memory={"train": [(100_000, GB), (200_000, 2 * GB)]})  # 1 GB more per 100k events
    assert check_size(history, 300_000, True, tmp_path, tmp_path) is None
    reason = check_size(history, 10**9, True, tmp_path, tmp_path)
    assert reason.startswith("~10000.0 GB of memory (train), ") and "GB available" in reason
    history.disk_per_event = 10**6  # 1 MB of disk per event: 1 PB
    assert "GB of disk on" in check_size(history, 10**9, True, tmp_path, tmp_path)
