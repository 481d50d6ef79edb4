"""The fetch stage: LAION-style rows (url, caption, ...) -> checked, resized, re-encoded image bytes.

``ImageFetcher`` is a Ray Data stage without a ``ray`` import: it sets up once in ``__init__`` and maps a
numpy batch in ``__call__``, fetching the batch's URLs on a thread pool (the work is I/O bound). It
returns the input columns plus

    image         re-encoded bytes (JPEG or PNG, RGB, EXIF orientation applied); None when not ok
    fetch_status  "ok" or a machine-readable reason (below)
    image_width   width after resize; 0 when not ok
    image_height  height after resize; 0 when not ok

Every failure is a status on its row, never an exception, and nothing is counted here: the pipeline
aggregates ``fetch_status``. Statuses: missing_url, bad_url, unsupported_scheme, local_file_refused,
missing_file, not_a_file (a folder, FIFO or device), unreadable_file,
missing_object, s3_error, private_address, dns_error, timeout,
connection_error, tls_error, too_many_redirects, http_<code> (any status but 200), too_large, empty,
not_an_image, too_many_pixels, corrupt_image, internal_error (a bug here; logged).

Untrusted URLs never reach loopback, private, link-local (incl. cloud metadata), unique-local,
multicast, unspecified or reserved addresses unless ``allow_networks`` lists them
(``countclip.data.http_guard``), on every redirect hop. No proxy is used. s3:// goes to the configured
S3 endpoint (trusted infrastructure), not through the address guard. Downloads are decoded by
``countclip.images.decode_image`` (magic bytes, pixel cap before decoding, EXIF orientation).
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import logging
import math
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urljoin, urlsplit

import numpy as np
from PIL import Image, ImageFile

from countclip import storage
from countclip.config import ConfigBase, require
from countclip.data.http_guard import (
    AddressGuard,
    FetchFailure,
    VettedConnection,
    read_capped,
    remaining,
    split_http_url,
)
from countclip.images import ImageError, decode_image

logger = logging.getLogger(__name__)

_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass
class FetchConfig(ConfigBase):
    """How the fetch stage downloads, checks and re-encodes images."""

    url_column: str = "URL"
    """Column holding the image URL ("URL" in LAION-400M metadata, "url" in LAION-5B)."""
    connect_timeout_s: float = 5.0
    """Seconds allowed to open a TCP connection (per address tried)."""
    read_timeout_s: float = 20.0
    """Seconds one attempt may take beyond its connect budget, all redirect hops, headers and body
    together, so a server trickling bytes cannot hold a worker (budget: connect + read)."""
    retries: int = 2
    """Extra attempts after a transient failure (timeout, connection error, HTTP 429/5xx); never after
    404 or bad content."""
    backoff_s: float = 0.5
    """Sleep before retry k is backoff_s * 2**k, times a random factor in [0.5, 1.5) (jitter)."""
    max_bytes: int = 10 * 2**20
    """Largest download accepted; reading stops beyond it ("too_large")."""
    max_pixels: int = 40_000_000
    """Largest width x height accepted, checked on the header before decoding ("too_many_pixels")."""
    max_side: int = 512
    """Images are resized (aspect kept) so that the longest side is at most this."""
    image_format: Literal["jpeg", "png"] = "jpeg"
    """Output encoding of the ``image`` column."""
    jpeg_quality: int = 90
    """JPEG quality 1..95 when image_format is jpeg."""
    max_redirects: int = 5
    """HTTP redirects followed per attempt ("too_many_redirects" beyond)."""
    threads: int = 32
    """Fetches in flight per stage instance."""
    user_agent: str = "countclip-fetch/0.1 (research dataset build)"
    """User-Agent header sent with every HTTP request."""
    allow_local_files: bool = False
    """Accept file:// URLs and plain paths (CountWorld's source needs it); refused otherwise."""
    allow_networks: list[str] = field(default_factory=list)
    """CIDRs reachable although private or loopback (e.g. an internal mirror); empty allows only public
    addresses."""

    def __post_init__(self) -> None:
        require(bool(self.url_column), "url_column must name the column holding image URLs")
        # Upper bounds too: a timeout of 1e300 s passes a "> 0" check and then overflows the socket's.
        require(0 < self.connect_timeout_s <= 3600, f"connect_timeout_s must be in (0, 3600], got {self.connect_timeout_s}")
        require(0 < self.read_timeout_s <= 86400, f"read_timeout_s must be in (0, 86400], got {self.read_timeout_s}")
        require(0 <= self.retries <= 10, f"retries must be in [0, 10], got {self.retries}")
        require(0 <= self.backoff_s <= 600, f"backoff_s must be in [0, 600], got {self.backoff_s}")
        require(self.max_bytes > 0, f"max_bytes must be positive, got {self.max_bytes}")
        require(self.max_pixels > 0, f"max_pixels must be positive, got {self.max_pixels}")
        require(self.max_side >= 16, f"max_side must be at least 16 pixels, got {self.max_side}")
        require(self.image_format in ("jpeg", "png"), f"image_format must be jpeg or png, got {self.image_format!r}")
        require(1 <= self.jpeg_quality <= 95, f"jpeg_quality must be in [1, 95], got {self.jpeg_quality}")
        require(0 <= self.max_redirects <= 20, f"max_redirects must be in [0, 20], got {self.max_redirects}")
        require(1 <= self.threads <= 512, f"threads must be in [1, 512], got {self.threads}")
        require(bool(self.user_agent) and not any(c in self.user_agent for c in "\r\n"),
                "user_agent must be a non-empty single line")
        for cidr in self.allow_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                require(False, f"allow_networks entry {cidr!r} is not a CIDR such as 10.0.0.0/8 or fd00::/8")


@dataclass(frozen=True)
class FetchedImage:
    status: str
    image: bytes | None = None  # re-encoded bytes when status == "ok"
    width: int = 0
    height: int = 0


def encode_image(image: Image.Image, cfg: FetchConfig) -> tuple[bytes, int, int]:
    """(bytes, width, height) of ``image`` resized so its longest side is at most cfg.max_side."""
    width, height = image.size
    if max(width, height) > cfg.max_side:
        scale = cfg.max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if cfg.image_format == "jpeg":
        image.save(out, "JPEG", quality=cfg.jpeg_quality)
    else:
        image.save(out, "PNG")
    return out.getvalue(), image.width, image.height


class ImageFetcher:
    """Ray Data stage: adds image, fetch_status, image_width, image_height to a numpy batch."""

    def __init__(self, cfg: FetchConfig):
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is enabled in this process: truncated "
                               "downloads would pass as images. Do not set it where the fetch stage runs.")
        self.cfg = cfg
        self.guard = AddressGuard(cfg.allow_networks)
        self.ssl_context = ssl.create_default_context()  # system CAs, hostname checking on
        self._pool = ThreadPoolExecutor(cfg.threads, thread_name_prefix="fetch")
        self._s3_lock = threading.Lock()  # boto3 must not build its client from several threads at once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        column = self.cfg.url_column
        if column not in batch:
            raise KeyError(f"fetch: URL column {column!r} is not in the batch; columns present: "
                           f"{sorted(batch)}. Set fetch url_column to the column holding image URLs.")
        results = list(self._pool.map(self.fetch, batch[column]))  # map keeps input order
        out = dict(batch)
        out["image"] = _object_array([r.image for r in results])
        out["fetch_status"] = _object_array([r.status for r in results])
        out["image_width"] = np.array([r.width for r in results], dtype=np.int64)
        out["image_height"] = np.array([r.height for r in results], dtype=np.int64)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def fetch(self, url: object) -> FetchedImage:
        """Download, check and re-encode one image; failures come back as a status, never raised."""
        try:
            image = decode_image(self._download(url), self.cfg.max_pixels, draft_side=self.cfg.max_side)
            return FetchedImage("ok", *encode_image(image, self.cfg))
        except FetchFailure as failure:
            return FetchedImage(failure.status)
        except ImageError as failure:
            return FetchedImage(failure.reason)
        except Exception:
            logger.warning("fetch of %r failed unexpectedly", url, exc_info=True)
            return FetchedImage("internal_error")

    def _download(self, url: object) -> bytes:
        if url is None or (isinstance(url, float) and math.isnan(url)) or (isinstance(url, str) and not url.strip()):
            raise FetchFailure("missing_url")  # Arrow nulls arrive as None, pandas ones as NaN
        if not isinstance(url, str):
            raise FetchFailure("bad_url")
        url = url.strip()
        try:
            scheme = urlsplit(url).scheme
        except ValueError:
            raise FetchFailure("bad_url") from None
        if scheme in ("http", "https"):
            return self._retrying(self._http_get, url)
        if scheme == "s3":
            return self._retrying(self._s3_get, url)
        if scheme in ("file", ""):
            return self._read_local(url)
        raise FetchFailure("unsupported_scheme")

    def _retrying(self, attempt: Callable[[str], bytes], url: str) -> bytes:
        for k in range(self.cfg.retries):
            try:
                return attempt(url)
            except FetchFailure as failure:
                if not failure.transient:
                    raise
            time.sleep(self.cfg.backoff_s * 2**k * random.uniform(0.5, 1.5))  # jitter spreads retry bursts
        return attempt(url)

    def _http_get(self, url: str) -> bytes:
        deadline = time.monotonic() + self.cfg.connect_timeout_s + self.cfg.read_timeout_s
        try:
            for _ in range(self.cfg.max_redirects + 1):
                url, body = self._http_hop(url, deadline)
                if body is not None:
                    return body
        except TimeoutError:
            raise FetchFailure("timeout", transient=True) from None
        except ssl.SSLError:
            raise FetchFailure("tls_error") from None  # bad certificate or not TLS: retrying won't help
        except socket.gaierror as exc:
            raise FetchFailure("dns_error", transient=exc.errno == socket.EAI_AGAIN) from None
        except http.client.InvalidURL:
            raise FetchFailure("bad_url") from None
        except (OSError, http.client.HTTPException):
            raise FetchFailure("connection_error", transient=True) from None
        raise FetchFailure("too_many_redirects")

    def _http_hop(self, url: str, deadline: float) -> tuple[str, bytes | None]:
        """One request: (redirect target, None) or (url, body)."""
        tls, host, port, target = split_http_url(url)
        conn = VettedConnection(host, port, guard=self.guard, tls=self.ssl_context if tls else None,
                                 connect_timeout=min(self.cfg.connect_timeout_s, remaining(deadline)),
                                 deadline=deadline)
        try:
            conn.request("GET", target, headers={"User-Agent": self.cfg.user_agent, "Accept": "image/*,*/*;q=0.8"})
            response = conn.getresponse()
            location = response.getheader("Location")
            if response.status in _REDIRECTS and location:
                try:
                    return urljoin(url, location.strip()), None  # vetted like any URL on the next hop
                except ValueError:
                    raise FetchFailure("bad_url") from None
            if response.status != 200:
                transient = response.status == 429 or response.status >= 500
                raise FetchFailure(f"http_{response.status}", transient=transient)
            return url, read_capped(response, self.cfg.max_bytes)
        finally:
            conn.close()

    def _s3_get(self, url: str) -> bytes:
        from botocore import exceptions as boto  # imported here: most runs never touch S3

        try:
            bucket, key = storage.split_s3(url)
        except ValueError:
            raise FetchFailure("bad_url") from None
        if not key:
            raise FetchFailure("bad_url")
        try:
            with self._s3_lock:
                client = storage.s3_client()
            obj = client.get_object(Bucket=bucket, Key=key)
            with obj["Body"] as body:
                if obj.get("ContentLength", 0) > self.cfg.max_bytes:
                    raise FetchFailure("too_large")
                data = body.read(self.cfg.max_bytes + 1)  # never more than the cap plus the byte that proves it
        except boto.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
                raise FetchFailure("missing_object") from None
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            raise FetchFailure(f"http_{status}", transient=status == 429 or status >= 500) from None
        except (boto.ConnectTimeoutError, boto.ReadTimeoutError):
            raise FetchFailure("timeout", transient=True) from None
        except (boto.ConnectionError, boto.HTTPClientError):
            raise FetchFailure("connection_error", transient=True) from None
        except boto.BotoCoreError:  # credentials, configuration: the same for every row
            raise FetchFailure("s3_error") from None
        if len(data) > self.cfg.max_bytes:
            raise FetchFailure("too_large")
        return data

    def _read_local(self, url: str) -> bytes:
        if not self.cfg.allow_local_files:
            raise FetchFailure("local_file_refused")
        parts = urlsplit(url)
        if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
            raise FetchFailure("bad_url")  # file://otherhost/... names a remote file
        try:
            path = storage.local_path(url)
        except ValueError:
            raise FetchFailure("bad_url") from None
        if "\x00" in str(path):
            raise FetchFailure("bad_url")
        try:  # regular files only (a FIFO would block this thread for ever), at most max_bytes
            return storage.read_local_file(path, self.cfg.max_bytes)
        except FileNotFoundError:
            raise FetchFailure("missing_file") from None
        except storage.NotARegularFile:
            raise FetchFailure("not_a_file") from None
        except storage.FileTooLarge:
            raise FetchFailure("too_large") from None
        except OSError:
            raise FetchFailure("unreadable_file") from None


def _object_array(values: list) -> np.ndarray:
    # Filling an empty object array keeps bytes/str as scalars (np.array could make them a 2-D array).
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
