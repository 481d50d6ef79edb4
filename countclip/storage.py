"""Every read and write of files and objects: local paths, file:// and s3:// URIs, written atomically.

Local writes go to a temporary sibling and are renamed into place, so a crash never leaves a half-
written file under the final name. S3 PUTs are atomic by nature. The S3 client takes its endpoint and
credentials from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... or an instance role):
nothing here names a credential.

Output folders (a dataset, a source, a benchmark, a model folder) are swapped in whole by
``output_folder.atomic_dir``, which keeps the output-folder rule.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
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


def write_folder(uri: str | Path, files: dict[str, bytes], kind: str = "model folder", overwrite: bool = False) -> None:
    """Write a folder of files (name -> bytes) whole: a local one appears all at once, under the
    output-folder rule for a ``kind`` folder (``atomic_dir``); under an s3:// prefix each object is
    written in the given order, so put the file that readers open first (a config naming the rest) last."""
    if is_s3(uri):
        for name, data in files.items():
            write_bytes(f"{str(uri).rstrip('/')}/{name}", data)
        return
    from countclip.output_folder import atomic_dir  # it builds on this module

    with atomic_dir(local_path(uri), kind, overwrite) as tmp:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared model from its other readers
        for name, data in files.items():
            (tmp / name).write_bytes(data)


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
