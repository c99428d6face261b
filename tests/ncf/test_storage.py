"""ncf.storage on the local file system and on a real S3 API (moto server on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ncf import contracts, storage
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
        part = Path(contracts.partition_uri(tmp_path, date))
        part.mkdir(parents=True)
        if done:
            (part / storage.SUCCESS).touch()
    assert contracts.complete_partitions(tmp_path) == ["2026-01-01", "2026-01-03"]


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
    assert contracts.complete_partitions(f"s3://{s3_bucket}/root") == ["2026-01-01"]
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


class _Recording:
    """Wraps the boto3 client storage uses: records every write (method, key) and fails the `fail_at`-th one."""

    WRITES = ("upload_file", "put_object", "copy_object", "delete_object")

    def __init__(self, client, fail_at: int | None = None):
        self._client, self.fail_at, self.writes, self.attempts = client, fail_at, [], 0

    def __getattr__(self, name):
        method = getattr(self._client, name)
        if name not in self.WRITES:
            return method

        def write(*args, **kwargs):
            key = kwargs.get("Key") or args[2]  # upload_file(path, bucket, key)
            self.attempts += 1
            if self.attempts - 1 == self.fail_at:
                raise ConnectionError(f"injected failure at write {self.fail_at}: {name} {key}")
            self.writes.append((name, key))
            return method(*args, **kwargs)

        return write


def _view(uri: str) -> dict[str, bytes] | None:
    """What a reader sees: nothing unless `_SUCCESS` is there, else every file's bytes."""
    if not storage.is_complete(uri):
        return None
    with storage.local_copy(uri) as local:
        return {p.relative_to(local).as_posix(): p.read_bytes() for p in sorted(local.rglob("*"))
                if p.is_file() and p.name != storage.SUCCESS}


def test_s3_publish_order(tmp_path, s3_bucket, monkeypatch):
    """Uploads go to a staging prefix first; then the old `_SUCCESS` goes, files are copied in, stale keys pruned,
    and the new `_SUCCESS` is the last write under the directory."""
    dest = f"s3://{s3_bucket}/root/data/dt=2026-01-01"
    storage.publish_dir(_fill(tmp_path / "v1", {"a.txt": "1", "stale.txt": "x"}), dest)
    recording = _Recording(storage.s3_client())
    monkeypatch.setattr(storage, "_client", recording)
    storage.publish_dir(_fill(tmp_path / "v2", {"a.txt": "2", "sub/b.txt": "2"}), dest)
    key = "root/data/dt=2026-01-01"
    writes = recording.writes
    under_dest = [(op, k) for op, k in writes if k.startswith(key + "/")]
    first_dest_write = writes.index(under_dest[0])
    assert all(op == "upload_file" and k.startswith("_staging/") for op, k in writes[:first_dest_write])
    assert under_dest[0] == ("delete_object", f"{key}/_SUCCESS"), "the old marker goes before any file changes"
    assert under_dest[-1] == ("put_object", f"{key}/_SUCCESS"), "the new marker is the last write"
    assert {k for op, k in under_dest if op == "copy_object"} == {f"{key}/a.txt", f"{key}/sub/b.txt"}
    assert ("delete_object", f"{key}/stale.txt") in under_dest
    assert all(op == "delete_object" and k.startswith("_staging/") for op, k in writes[writes.index(under_dest[-1]) + 1:])


def test_s3_failure_at_any_point_of_a_publish_leaves_old_or_nothing(tmp_path, s3_bucket, monkeypatch):
    """Fail each write of a re-publish in turn: a reader then sees the old directory whole, the new one whole, or
    nothing (no `_SUCCESS`), never a mix; a failure before `_SUCCESS` reaches the caller; staging is cleaned up."""
    old_files = {"a.txt": "old", "b.txt": "old", "stale.txt": "old"}
    new_files = {"a.txt": "new", "b.txt": "new", "sub/c.txt": "new"}
    old = {k: v.encode() for k, v in old_files.items()}
    new = {k: v.encode() for k, v in new_files.items()}
    src_old, src_new = _fill(tmp_path / "old", old_files), _fill(tmp_path / "new", new_files)
    real = storage.s3_client()
    storage.publish_dir(src_old, f"s3://{s3_bucket}/probe")
    counting = _Recording(real)  # a clean re-publish, to count its writes
    monkeypatch.setattr(storage, "_client", counting)
    storage.publish_dir(src_new, f"s3://{s3_bucket}/probe")
    published = counting.writes.index(("put_object", f"probe/{storage.SUCCESS}"))
    seen = set()
    for fail_at in range(len(counting.writes)):
        dest = f"s3://{s3_bucket}/try-{fail_at}/dt=2026-01-01"
        monkeypatch.setattr(storage, "_client", real)
        storage.publish_dir(src_old, dest)
        monkeypatch.setattr(storage, "_client", _Recording(real, fail_at=fail_at))
        if fail_at <= published:
            with pytest.raises(ConnectionError, match="injected failure"):
                storage.publish_dir(src_new, dest)
        else:  # a failed clean-up of the staging copy after `_SUCCESS` is retried, not reported
            storage.publish_dir(src_new, dest)
        monkeypatch.setattr(storage, "_client", real)
        view = _view(dest)
        assert view in (None, old, new), f"failure at write {fail_at}: a reader sees a mix {view}"
        seen.add("nothing" if view is None else "old" if view == old else "new")
        assert storage.list_dir(f"s3://{s3_bucket}/_staging") == [], f"failure at write {fail_at}: staging left"
    # Failures while staging keep the old; during the swap they hide the directory; after `_SUCCESS`, it is the new.
    assert seen == {"old", "nothing", "new"}
