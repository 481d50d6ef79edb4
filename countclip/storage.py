"""Every read and write of files and objects: local paths, file:// and s3:// URIs, written atomically.

Local writes go to a temporary sibling and are renamed into place, so a crash never leaves a half-
written file under the final name. S3 PUTs are atomic by nature. The S3 client takes its endpoint and
credentials from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... or an instance role):
nothing here names a credential.

Output folders (a dataset, a source, a benchmark) are swapped in whole by ``atomic_dir``, which keeps
one rule: countclip replaces only what it wrote. Each folder it swaps in carries ``OUTPUT_MARKER``, the
list of the files it wrote there; a folder holding anything else (a user's thesis, the build's own
source) is refused unless ``overwrite`` is given, and even then its other files are kept, never deleted.
Scratch folders beside an output (``.NAME.tmp-*``, ``.NAME.staging-*``) are locked while in use; the
next write to that output removes the ones a killed process left, and finishes or undoes a swap that
a kill interrupted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

from countclip.environment import default_cache_dir


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


def local_path(uri: str | Path) -> Path:
    """The filesystem path of a plain path or a file:// URI."""
    text = str(uri)
    if text.startswith("file://"):
        return Path(unquote(urlparse(text).path))
    if "://" in text:
        raise ValueError(f"{text!r} is not a local path")
    return Path(text)


@lru_cache(maxsize=1)
def s3_client():
    import boto3  # imported here: most runs never touch S3

    return boto3.client("s3")


def arrow_filesystem(uri: str | Path):
    """(pyarrow filesystem, path) for a URI; S3 honours AWS_ENDPOINT_URL like boto3 does."""
    from pyarrow import fs

    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        return fs.S3FileSystem(endpoint_override=endpoint, region=region), f"{bucket}/{key}"
    return fs.LocalFileSystem(), str(local_path(uri))


class NotARegularFile(OSError):
    """A path names a folder, a FIFO, a device or a socket where a file was expected."""


class FileTooLarge(ValueError):
    """A file is larger than the cap its reader sets."""


def read_local_file(path: str | Path, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular local file; never blocks on a FIFO or a device and never reads past
    ``max_bytes`` (FileTooLarge). FileNotFoundError, NotARegularFile or PermissionError otherwise."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, for ever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL byte in the path
        raise FileNotFoundError(errno.ENOENT, f"{path} does not exist") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or (max_bytes is not None and info.st_size > max_bytes):
        os.close(fd)
        if stat.S_ISREG(info.st_mode):
            raise FileTooLarge(f"{path} is larger than {max_bytes:,} bytes")
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO, device or socket"
        raise NotARegularFile(errno.EISDIR if stat.S_ISDIR(info.st_mode) else errno.EINVAL,
                              f"{path} is {what}, not a regular file")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:  # it grew while being read
        raise FileTooLarge(f"{path} is larger than {max_bytes:,} bytes")
    return data


def read_bytes(uri: str | Path) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        client = s3_client()
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{uri} does not exist") from None
    return read_local_file(local_path(uri))


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write all of ``data`` or nothing under ``uri``."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(uri: str | Path, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def exists(uri: str | Path) -> bool:
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        client = s3_client()
        try:
            client.head_object(Bucket=bucket, Key=key)
            return True
        except client.exceptions.ClientError:
            return False
    return local_path(uri).exists()


def delete(uri: str | Path) -> None:
    """Remove one file or object; a missing one is not an error."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        s3_client().delete_object(Bucket=bucket, Key=key)
        return
    local_path(uri).unlink(missing_ok=True)


def delete_prefix(prefix: str | Path) -> None:
    """Remove every object under an s3:// prefix, or a local folder and all it holds."""
    if is_s3(prefix):
        for uri in list_objects(str(prefix)):
            delete(uri)
        return
    shutil.rmtree(local_path(prefix), ignore_errors=True)


def list_objects(prefix: str) -> list[str]:
    """Full URIs of the objects under an s3:// prefix, or the files under a local folder, sorted."""
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        paginator = s3_client().get_paginator("list_objects_v2")
        return sorted(
            f"s3://{bucket}/{obj['Key']}"
            for page in paginator.paginate(Bucket=bucket, Prefix=key)
            for obj in page.get("Contents", [])
        )
    root = local_path(prefix)
    return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def local_copy(uri: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local file holding ``uri``: the path itself, or an S3 object downloaded once into the cache."""
    if not is_s3(uri):
        path = local_path(uri)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    name = hashlib.sha256(str(uri).encode()).hexdigest()[:16] + "-" + Path(split_s3(str(uri))[1]).name
    path = cache / "s3" / name
    if not path.exists():
        write_bytes(path, read_bytes(uri))
    return path


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


OUTPUT_MARKER = ".countclip-output.json"
"""Written into every folder ``atomic_dir`` swaps in: its kind and every file countclip wrote there."""
# What each kind of folder held before the marker existed (countclip 0.1 folders still replace cleanly):
# the file that identifies it, and the patterns of the files countclip wrote there.
_UNMARKED = {
    "dataset": ("manifest.json", ("manifest.json", "summary.txt", "shards/*.parquet")),
    "source": ("source.parquet", ("source.parquet", "truth.parquet", "images/*.png")),
    "benchmark": ("countworld_bench.json", ("countworld_bench.json", "images/*.png")),
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
        return {str(f) for f in info["files"]} | {OUTPUT_MARKER}
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
    lock = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)


_SCRATCH_LABELS = ("tmp", "staging")


def _abandoned(folder: Path) -> bool:
    """Whether a scratch folder's lock is free: its writer died (a folder without the lock is not
    known to be countclip's, or is a writer in its first microseconds: it is left alone)."""
    try:
        fd = os.open(folder / ".lock", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
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
        files = sorted(_files_under(tmp) - {".lock"})
        (tmp / ".lock").unlink()
        write_text(tmp / OUTPUT_MARKER, json.dumps({"kind": kind, "files": files}, indent=0))
        check_output_folder(path, kind, overwrite)  # again: the folder may have changed during the block
        foreign = foreign_files(path, kind)
        clashes = sorted(set(foreign) & set(files))
        if clashes:
            raise OutputFolderError(f"output {path} holds {', '.join(clashes[:3])}, which countclip did not write "
                                    f"and would replace; move them away first; nothing was written")
        if not path.exists():
            os.replace(tmp, path)
            return
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(path, old)  # a kill between these two renames is undone by the next remove_leftovers
        os.replace(tmp, path)
        _finish_swap(path, old, kind)
