"""countclip.storage: atomic writes, listing and deleting, on local disk and on S3 (moto's server)."""

import pytest

from countclip import storage


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a" / "file.txt"
    storage.write_text(target, "old")
    with pytest.raises(RuntimeError), storage.atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_a_failed_folder_swap_keeps_the_old_folder(tmp_path):
    folder = tmp_path / "dataset"
    with storage.atomic_dir(folder) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError), storage.atomic_dir(folder) as tmp:
        (tmp / "y").write_text("2")
        raise RuntimeError("crash")
    assert sorted(p.name for p in folder.iterdir()) == [storage.OUTPUT_MARKER, "x"]
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


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


def test_an_output_folder_holding_other_files_is_refused_and_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(storage.OutputFolderError, match=r"already holds 1 file\(s\) .*\(thesis.tex\); nothing was written"):
        with storage.atomic_dir(out, "dataset"):
            raise AssertionError("the block must not run")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(storage.OutputFolderError, match="exists and is not a folder"):
        storage.check_output_folder(tmp_path / "file", "dataset")


def test_overwrite_writes_beside_other_files_and_never_deletes_them(tmp_path):
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "notes/thesis.tex").write_text("years of work")
    (out / "empty").mkdir()
    for generation in ("1", "2"):
        with storage.atomic_dir(out, "dataset", overwrite=True) as tmp:
            (tmp / "manifest.json").write_text(generation)
            if generation == "1":
                (tmp / "stale.txt").write_text("only in the first")
    assert (out / "notes/thesis.tex").read_text() == "years of work" and (out / "empty").is_dir()
    assert (out / "manifest.json").read_text() == "2" and not (out / "stale.txt").exists()  # countclip's own: replaced
    with pytest.raises(storage.OutputFolderError, match="thesis.tex, which countclip did not write"):
        with storage.atomic_dir(out, "dataset", overwrite=True) as tmp:
            (tmp / "notes").mkdir()
            (tmp / "notes/thesis.tex").write_text("would replace the user's")
    assert (out / "notes/thesis.tex").read_text() == "years of work"


def test_a_countclip_folder_is_replaced_whole_but_not_by_another_kind(tmp_path):
    out = tmp_path / "out"
    with storage.atomic_dir(out, "source") as tmp:
        (tmp / "source.parquet").write_text("a")
    with storage.atomic_dir(out, "source") as tmp:
        (tmp / "truth.parquet").write_text("b")
    assert sorted(p.name for p in out.iterdir()) == [storage.OUTPUT_MARKER, "truth.parquet"]
    with pytest.raises(storage.OutputFolderError, match=r"holds another countclip output \(a source\)"):
        storage.check_output_folder(out, "dataset", overwrite=True)
    legacy = tmp_path / "legacy"  # a dataset written before the marker existed
    (legacy / "shards").mkdir(parents=True)
    (legacy / "manifest.json").write_text('{"format": "countclip-shards/2"}')
    (legacy / "shards/counting-00000.parquet").write_text("x")
    storage.check_output_folder(legacy, "dataset")
    (legacy / "manifest.json").write_text('{"format": "another tool"}')
    with pytest.raises(storage.OutputFolderError, match="2 file"):
        storage.check_output_folder(legacy, "dataset")


def test_leftovers_of_killed_writes_are_removed_and_an_interrupted_swap_is_undone(tmp_path):
    out = tmp_path / "out"
    with storage.atomic_dir(out, "dataset") as tmp:
        (tmp / "manifest.json").write_text("complete")
    stale = tmp_path / ".out.staging-abc"  # a killed build's: its lock died with it
    stale.mkdir()
    (stale / ".lock").write_text("")
    (stale / "part-1.parquet").write_text("rows")
    assert storage.remove_leftovers(out) == ["removed .out.staging-abc, left by a killed run"]
    with storage.scratch_dir(out, "staging") as live:  # a running build's, locked: kept
        assert storage.remove_leftovers(out) == [] and live.is_dir()
    old = tmp_path / ".out.old-123"
    out.rename(old)  # killed between the two renames of a swap: the dataset is only in old
    assert storage.remove_leftovers(out) == [f"restored {out} from an interrupted swap"]
    assert (out / "manifest.json").read_text() == "complete" and not old.exists()


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
