"""ncf.storage on the local file system and on a real S3 API (moto server on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ncf import storage
from ncf.errors import UserError


def _fill(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


def test_staged_output_publishes_with_success_last(tmp_path):
    dest = tmp_path / "out" / "dt=2026-01-01"
    with storage.staged_output(dest) as work:
        _fill(work, {"a.txt": "1", "sub/b.txt": "2"})
        assert not dest.exists(), "nothing is visible before the step finishes"
    assert storage.is_complete(dest)
    assert (dest / "sub" / "b.txt").read_text() == "2"
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")], "no temp dirs left behind"


def test_failed_rewrite_keeps_previous_directory(tmp_path):
    dest = tmp_path / "dt=2026-01-01"
    with storage.staged_output(dest) as work:
        _fill(work, {"a.txt": "old"})
    with pytest.raises(RuntimeError), storage.staged_output(dest) as work:
        _fill(work, {"a.txt": "new"})
        raise RuntimeError("step failed half-way")
    assert (dest / "a.txt").read_text() == "old"
    assert storage.is_complete(dest)


def test_rewrite_replaces_and_drops_stale_files(tmp_path):
    dest = tmp_path / "dt=2026-01-01"
    with storage.staged_output(dest) as work:
        _fill(work, {"a.txt": "old", "stale.txt": "x"})
    with storage.staged_output(dest) as work:
        _fill(work, {"a.txt": "new"})
    assert sorted(storage.list_dir(dest)) == ["_SUCCESS", "a.txt"]


def test_complete_partitions_ignores_unfinished(tmp_path):
    for date, done in (("2026-01-01", True), ("2026-01-02", False), ("2026-01-03", True)):
        part = Path(storage.partition_uri(tmp_path, date))
        part.mkdir(parents=True)
        if done:
            (part / storage.SUCCESS).touch()
    assert storage.complete_partitions(tmp_path) == ["2026-01-01", "2026-01-03"]


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="missing.json"):
        storage.read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match=r"bad.json: invalid JSON at line 1"):
        storage.read_json(tmp_path / "bad.json")


def test_s3_publish_download_and_replace(tmp_path, s3_bucket):
    dest = f"s3://{s3_bucket}/root/data/dt=2026-01-01"
    storage.publish_dir(_fill(tmp_path / "v1", {"a.txt": "old", "stale.txt": "x"}), dest)
    storage.publish_dir(_fill(tmp_path / "v2", {"a.txt": "new", "sub/b.txt": "2"}), dest)
    assert storage.is_complete(dest)
    assert storage.list_dir(dest) == ["_SUCCESS", "a.txt", "sub"]
    assert storage.read_bytes(storage.join(dest, "a.txt")) == b"new"
    assert storage.complete_partitions(f"s3://{s3_bucket}/root") == ["2026-01-01"]
    assert storage.list_dir(f"s3://{s3_bucket}") == ["root"], "staging prefix is cleaned up"
    with storage.local_copy(dest) as local:
        assert (local / "sub" / "b.txt").read_text() == "2"


def test_s3_missing_object_is_a_user_error(s3_bucket):
    with pytest.raises(UserError, match="no such S3 object or prefix"), storage.local_copy(f"s3://{s3_bucket}/nope"):
        pass


def test_require_complete_names_what_is_missing(tmp_path):
    with pytest.raises(UserError, match=r"no such partition"):
        storage.require_complete(tmp_path / "dt=2026-01-01", "partition")
    (tmp_path / "dt=2026-01-01").mkdir()
    with pytest.raises(UserError, match=r"partition is incomplete \(no _SUCCESS marker\); re-run preprocessing"):
        storage.require_complete(tmp_path / "dt=2026-01-01", "partition", hint="re-run preprocessing")
    (tmp_path / "dt=2026-01-01" / storage.SUCCESS).touch()
    storage.require_complete(tmp_path / "dt=2026-01-01", "partition")
