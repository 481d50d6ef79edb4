"""The output-folder rule: countclip replaces only what it wrote, and cleans up after killed writes.

Output folders (a dataset, a source, a benchmark, a model folder) are swapped in whole by ``atomic_dir``.
Each folder it swaps in carries ``OUTPUT_MARKER``, the list of the files it wrote there; a folder
holding anything else (a user's thesis, the build's own source) is refused unless ``overwrite`` is
given, and even then its other files are kept, never deleted. Scratch folders beside an output
(``.NAME.tmp-*``, ``.NAME.staging-*``) are locked while in use; the next write to that output removes
the ones a killed process left, and finishes or undoes a swap that a kill interrupted.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from countclip.storage import read_local_file, write_text

OUTPUT_MARKER = ".countclip-output.json"
"""Written into every folder ``atomic_dir`` swaps in: its kind and every file countclip wrote there."""
_LOCK = ".lock"  # in every scratch folder, flock-ed by its writer while it lives
_LOCKLESS_GRACE_S = 60.0
# What each kind of folder held before the marker existed (countclip 0.1 folders still replace cleanly):
# the file that identifies it, and the patterns of the files countclip wrote there.
_UNMARKED = {
    "dataset": ("manifest.json", ("manifest.json", "summary.txt", "shards/*.parquet")),
    "source": ("source.parquet", ("source.parquet", "truth.parquet", "images/*.png")),
    "benchmark": ("countworld_bench.json", ("countworld_bench.json", "images/*.png")),
    "model folder": ("open_clip_config.json", ("open_clip_config.json", "open_clip_model.safetensors", "README.md")),
}


class OutputFolderError(ValueError):
    """An output folder holds files countclip did not write there (and may not delete)."""


def _files_under(folder: Path) -> set[str]:
    """Every entry under ``folder`` but the folders holding others (files, links, empty folders),
    relative, as POSIX paths."""
    found = set()
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        found |= {(rel / name).as_posix() for name in files}
        found |= {(rel / name).as_posix() for name in dirs if (Path(root) / name).is_symlink()}
        if not dirs and not files and root != str(folder):
            found.add(rel.as_posix())
    return found


def _json_object(path: Path) -> dict:
    """The JSON object in a small regular file; {} for anything else (missing, a link, not JSON)."""
    try:
        info = json.loads(read_local_file(path, 64 << 20)) if not path.is_symlink() else None
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _marker_kind(folder: Path) -> str | None:
    return _json_object(folder / OUTPUT_MARKER).get("kind")


def countclip_files(folder: Path, kind: str) -> set[str]:
    """The files under ``folder`` that countclip wrote as a ``kind`` folder (empty when it is none)."""
    if (folder / OUTPUT_MARKER).exists():
        info = _json_object(folder / OUTPUT_MARKER)
        if info.get("kind") != kind or not isinstance(info.get("files"), list):
            return set()
        return {str(f) for f in info["files"]} | {OUTPUT_MARKER, _LOCK}
    signature, patterns = _UNMARKED.get(kind, (None, ()))
    if signature is None or not (folder / signature).is_file():
        return set()
    if kind == "dataset" and not str(_json_object(folder / signature).get("format", "")).startswith("countclip-shards/"):
        return set()  # a manifest.json of another tool is not ours
    return {f for f in _files_under(folder) if any(Path(f).match(p) and f.count("/") == p.count("/")
                                                    for p in patterns)}


def foreign_files(folder: Path, kind: str) -> list[str]:
    """Files under ``folder`` that countclip did not write as a ``kind`` folder, sorted."""
    if not folder.exists() and not folder.is_symlink():
        return []
    if folder.is_symlink() or not folder.is_dir():
        raise OutputFolderError(f"output {folder} exists and is not a folder; nothing was written")
    return sorted(_files_under(folder) - countclip_files(folder, kind))


def check_output_folder(path: str | Path, kind: str, overwrite: bool = False) -> None:
    """Refuse, before any work, an output folder holding files countclip did not write as a ``kind``
    folder, unless ``overwrite`` (those files are then kept beside the output)."""
    path = Path(path)
    foreign = foreign_files(path, kind)
    if OUTPUT_MARKER in foreign:
        raise OutputFolderError(f"output {path} holds another countclip output (a {_marker_kind(path)}); a {kind} "
                                "cannot share its folder; nothing was written")
    if foreign and not overwrite:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputFolderError(
            f"output {path} already holds {len(foreign)} file(s) that countclip did not write as a {kind} "
            f"({shown}); nothing was written. Choose a new or empty folder, or overwrite "
            "(--overwrite, overwrite=true) to write the " + kind + " beside them (they are kept)")


@contextlib.contextmanager
def scratch_dir(beside: Path, label: str) -> Iterator[Path]:
    """A private folder ``.NAME.LABEL-*`` beside ``beside``, locked while the block runs and removed
    after it; ones left by killed processes (unlocked) are removed first."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(beside)
    folder = Path(tempfile.mkdtemp(prefix=f".{beside.name}.{label}-", dir=beside.parent))
    lock = os.open(folder / _LOCK, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)


_SCRATCH_LABELS = ("tmp", "staging")


def _abandoned(folder: Path) -> bool:
    """Whether a scratch folder's lock is free: its writer died. A folder without the lock file is a
    writer in its first microseconds (between creating the folder and its lock) or one killed there:
    it is left alone for _LOCKLESS_GRACE_S after its last change, then counted as abandoned."""
    try:
        fd = os.open(folder / _LOCK, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime > _LOCKLESS_GRACE_S
        except OSError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def remove_leftovers(path: Path) -> list[str]:
    """Clean up after killed writes to ``path``: finish or undo an interrupted swap (``.NAME.old-*``)
    and remove unlocked scratch folders (``.NAME.tmp-*``, ``.NAME.staging-*``); return what was done."""
    path = Path(path)
    done: list[str] = []
    if not path.parent.is_dir():
        return done
    prefix = f".{glob.escape(path.name)}."
    for old in sorted(path.parent.glob(prefix + "old-*")):
        if not old.is_dir() or old.is_symlink():
            continue
        if not path.exists():
            os.replace(old, path)  # killed between the two renames: the previous folder comes back
            done.append(f"restored {path} from an interrupted swap")
        elif kind := _marker_kind(path):  # the swap happened: what it replaced goes, the rest comes back
            _finish_swap(path, old, kind)
            done.append(f"finished the interrupted swap of {path}")
    for label in _SCRATCH_LABELS:
        for folder in sorted(path.parent.glob(prefix + label + "-*")):
            if folder.is_dir() and not folder.is_symlink() and _abandoned(folder):
                shutil.rmtree(folder, ignore_errors=True)
                done.append(f"removed {folder.name}, left by a killed run")
    return done


def _finish_swap(path: Path, old: Path, kind: str) -> None:
    """After ``old`` was swapped out of ``path`` for a new ``kind`` folder: move the files countclip
    did not write as that kind back into ``path``, then drop ``old`` (then only replaced files)."""
    kept = False
    for name in sorted(_files_under(old) - countclip_files(old, kind)):
        target = path / name
        if target.exists() or target.is_symlink():
            kept = True  # never overwrite anything; old stays, holding it
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(old / name, target)
    if not kept:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: Path, kind: str = "output", overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds.

    The output-folder rule: ``path`` may hold only what countclip wrote there as a ``kind`` folder;
    anything else refuses the write before the block runs (``OutputFolderError``) unless
    ``overwrite``, and is then kept beside the new files (a new file of the same name is refused).
    """
    path = Path(path).absolute()
    remove_leftovers(path)
    check_output_folder(path, kind, overwrite)
    with scratch_dir(path, "tmp") as tmp:
        yield tmp
        files = sorted(_files_under(tmp) - {_LOCK})
        write_text(tmp / OUTPUT_MARKER, json.dumps({"kind": kind, "files": files}, indent=0))
        check_output_folder(path, kind, overwrite)  # again: the folder may have changed during the block
        foreign = foreign_files(path, kind)
        clashes = sorted(set(foreign) & set(files))
        if clashes:
            raise OutputFolderError(f"output {path} holds {', '.join(clashes[:3])}, which countclip did not write "
                                    f"and would replace; move them away first; nothing was written")
        # The lock file leaves only once the folder is in place: a kill before that leaves a scratch
        # folder whose lock is free (removed by the next write), after it at most a stray lock file
        # in the output, which the marker rule counts as countclip's.
        if not path.exists():
            os.replace(tmp, path)
            (path / _LOCK).unlink(missing_ok=True)
            return
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(path, old)  # a kill between these two renames is undone by the next remove_leftovers
        os.replace(tmp, path)
        (path / _LOCK).unlink(missing_ok=True)
        _finish_swap(path, old, kind)
