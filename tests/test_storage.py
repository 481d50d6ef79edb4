"""countclip.storage: atomic writes, listing and deleting, on local disk and on S3 (moto's server)."""

import pytest

from countclip import storage
from countclip.output_folder import OUTPUT_MARKER


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a" / "file.txt"
    storage.write_text(target, "old")
    with pytest.raises(RuntimeError), storage.atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_local_list_read_delete(tmp_path):
    storage.write_bytes(tmp_path / "d" / "b.bin", b"b")
    storage.write_bytes(f"file://{tmp_path}/d/a.bin", b"a")
    assert storage.list_objects(str(tmp_path / "d")) == [str(tmp_path / "d" / "a.bin"), str(tmp_path / "d" / "b.bin")]
    assert storage.read_bytes(tmp_path / "d" / "a.bin") == b"a" and storage.exists(tmp_path / "d" / "b.bin")
    storage.delete(tmp_path / "d" / "a.bin")
    storage.delete(tmp_path / "d" / "a.bin")  # already gone: not an error
    assert storage.list_objects(str(tmp_path / "d")) == [str(tmp_path / "d" / "b.bin")]
    storage.delete_prefix(tmp_path / "d")
    assert not (tmp_path / "d").exists() and storage.list_objects(str(tmp_path / "d")) == []


def test_s3_round_trip_delete_and_cached_local_copy(s3, tmp_path):
    uri = f"s3://{s3}/p/q.bin"
    storage.write_bytes(uri, b"payload")
    storage.write_bytes(f"s3://{s3}/p/r.bin", b"r")
    assert storage.exists(uri) and storage.read_bytes(uri) == b"payload"
    local = storage.local_copy(uri, tmp_path / "cache")
    assert local.read_bytes() == b"payload" and local.is_relative_to(tmp_path / "cache")
    storage.delete(uri)
    assert not storage.exists(uri)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.read_bytes(uri)
    storage.delete_prefix(f"s3://{s3}/p")
    assert storage.list_objects(f"s3://{s3}/p") == []


def test_bad_uris_are_named():
    with pytest.raises(ValueError, match="not an s3://bucket/key URI"):
        storage.split_s3("s3:///nokey")
    with pytest.raises(ValueError, match="not a local path"):
        storage.local_path("http://example.com/x")


def test_a_folder_is_written_whole_or_not_at_all(tmp_path):
    storage.write_folder(tmp_path / "m", {"weights": b"w", "config.json": b"{}"})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [OUTPUT_MARKER, "config.json", "weights"]
    with pytest.raises(TypeError):
        storage.write_folder(tmp_path / "m", {"weights": b"new", "config.json": None})  # fails after the first file
    assert (tmp_path / "m" / "weights").read_bytes() == b"w" and [p.name for p in tmp_path.iterdir()] == ["m"]


def test_local_reads_take_regular_files_only_and_stop_at_the_cap(tmp_path):
    import os

    (tmp_path / "f").write_bytes(b"12345")
    assert storage.read_local_file(tmp_path / "f", 5) == b"12345"
    with pytest.raises(storage.FileTooLarge):
        storage.read_local_file(tmp_path / "f", 4)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(storage.NotARegularFile, match="FIFO"):
        storage.read_local_file(tmp_path / "pipe")  # opening it plainly would block for ever
    with pytest.raises(storage.NotARegularFile, match="a folder"):
        storage.read_bytes(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.read_local_file(tmp_path / "f" / "x")
