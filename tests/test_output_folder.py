"""countclip.output_folder: folders swapped in whole, other files never deleted, killed writes cleaned up."""

import os
import time
from pathlib import Path

import pytest

from countclip import output_folder


def test_a_failed_folder_swap_keeps_the_old_folder(tmp_path):
    folder = tmp_path / "dataset"
    with output_folder.atomic_dir(folder) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError), output_folder.atomic_dir(folder) as tmp:
        (tmp / "y").write_text("2")
        raise RuntimeError("crash")
    assert sorted(p.name for p in folder.iterdir()) == [output_folder.OUTPUT_MARKER, "x"]
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_an_output_folder_holding_other_files_is_refused_and_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(output_folder.OutputFolderError, match=r"already holds 1 file\(s\) .*\(thesis.tex\); nothing was written"):
        with output_folder.atomic_dir(out, "dataset"):
            raise AssertionError("the block must not run")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(output_folder.OutputFolderError, match="exists and is not a folder"):
        output_folder.check_output_folder(tmp_path / "file", "dataset")


def test_overwrite_writes_beside_other_files_and_never_deletes_them(tmp_path):
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "notes/thesis.tex").write_text("years of work")
    (out / "empty").mkdir()
    for generation in ("1", "2"):
        with output_folder.atomic_dir(out, "dataset", overwrite=True) as tmp:
            (tmp / "manifest.json").write_text(generation)
            if generation == "1":
                (tmp / "stale.txt").write_text("only in the first")
    assert (out / "notes/thesis.tex").read_text() == "years of work" and (out / "empty").is_dir()
    assert (out / "manifest.json").read_text() == "2" and not (out / "stale.txt").exists()  # countclip's own: replaced
    with pytest.raises(output_folder.OutputFolderError, match="thesis.tex, which countclip did not write"):
        with output_folder.atomic_dir(out, "dataset", overwrite=True) as tmp:
            (tmp / "notes").mkdir()
            (tmp / "notes/thesis.tex").write_text("would replace the user's")
    assert (out / "notes/thesis.tex").read_text() == "years of work"


def test_a_countclip_folder_is_replaced_whole_but_not_by_another_kind(tmp_path):
    out = tmp_path / "out"
    with output_folder.atomic_dir(out, "source") as tmp:
        (tmp / "source.parquet").write_text("a")
    with output_folder.atomic_dir(out, "source") as tmp:
        (tmp / "truth.parquet").write_text("b")
    assert sorted(p.name for p in out.iterdir()) == [output_folder.OUTPUT_MARKER, "truth.parquet"]
    with pytest.raises(output_folder.OutputFolderError, match=r"holds another countclip output \(a source\)"):
        output_folder.check_output_folder(out, "dataset", overwrite=True)
    legacy = tmp_path / "legacy"  # a dataset written before the marker existed
    (legacy / "shards").mkdir(parents=True)
    (legacy / "manifest.json").write_text('{"format": "countclip-shards/2"}')
    (legacy / "shards/counting-00000.parquet").write_text("x")
    output_folder.check_output_folder(legacy, "dataset")
    (legacy / "manifest.json").write_text('{"format": "another tool"}')
    with pytest.raises(output_folder.OutputFolderError, match="2 file"):
        output_folder.check_output_folder(legacy, "dataset")


def test_leftovers_of_killed_writes_are_removed_and_an_interrupted_swap_is_undone(tmp_path):
    out = tmp_path / "out"
    with output_folder.atomic_dir(out, "dataset") as tmp:
        (tmp / "manifest.json").write_text("complete")
    stale = tmp_path / ".out.staging-abc"  # a killed build's: its lock died with it
    stale.mkdir()
    (stale / ".lock").write_text("")
    (stale / "part-1.parquet").write_text("rows")
    assert output_folder.remove_leftovers(out) == ["removed .out.staging-abc, left by a killed run"]
    with output_folder.scratch_dir(out, "staging") as live:  # a running build's, locked: kept
        assert output_folder.remove_leftovers(out) == [] and live.is_dir()
    old = tmp_path / ".out.old-123"
    out.rename(old)  # killed between the two renames of a swap: the dataset is only in old
    assert output_folder.remove_leftovers(out) == [f"restored {out} from an interrupted swap"]
    assert (out / "manifest.json").read_text() == "complete" and not old.exists()


def test_the_scratch_lock_stays_until_the_folder_is_in_place(tmp_path, monkeypatch):
    """A kill at any moment before the swap must leave a scratch folder whose lock file is there (and
    free once the writer died), so the next write removes it: the lock leaves only after the rename."""
    out = tmp_path / "out"
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((Path(src).name, (Path(src) / ".lock").exists()))
        real_replace(src, dst)

    monkeypatch.setattr(output_folder.os, "replace", replace)
    for _ in range(2):  # a first write (rename into place), then a swap over it
        with output_folder.atomic_dir(out, "dataset") as tmp:
            (tmp / "manifest.json").write_text("complete")
    moved_in = [locked for name, locked in renames if name.startswith(".out.tmp-")]
    assert moved_in == [True, True], renames
    assert not (out / ".lock").exists() and (out / "manifest.json").read_text() == "complete"
    (out / ".lock").write_text("")  # a kill between the rename and the unlink: a stray lock file
    output_folder.check_output_folder(out, "dataset")  # countclip's, not the user's


def test_a_lockless_scratch_folder_is_kept_while_young_and_removed_once_stale(tmp_path):
    out = tmp_path / "out"
    young = tmp_path / ".out.tmp-young"  # a writer between creating its folder and its lock
    young.mkdir()
    assert output_folder.remove_leftovers(out) == [] and young.is_dir()
    stale = time.time() - 2 * output_folder._LOCKLESS_GRACE_S  # or one killed right there, long ago
    os.utime(young, (stale, stale))
    assert output_folder.remove_leftovers(out) == ["removed .out.tmp-young, left by a killed run"]
    assert not young.exists()
