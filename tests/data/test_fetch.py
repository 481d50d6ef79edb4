"""The fetch stage against a real HTTP(S) server on 127.0.0.1 and a real S3 endpoint (moto).

Every test runs in a loopback-only namespace: URLs use IP literals and "localhost" only.
"""

from __future__ import annotations

import ast
import datetime
import errno
import functools
import http.server
import io
import math
import socket
import ssl
import struct
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from countclip.config import ConfigError
from countclip.data import fetch as fetch_module
from countclip.data.fetch import FetchConfig, ImageFetcher

GOOD_SIZE, EXIF_SIZE, LARGE_SIZE = (64, 48), (40, 20), (1600, 1200)
REDIRECTS = {
    "/to-metadata": "http://169.254.169.254/latest/meta-data/",
    "/to-private": "http://10.1.2.3/x",
    "/to-file": "file:///etc/passwd",
    "/to-good": "/good.jpg",
    "/loop": "/loop",
}


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _noise(size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _exif_png() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    return _encode(Image.new("RGB", EXIF_SIZE, "red"), "PNG", exif=exif)


@functools.cache
def _bomb_png(side: int = 20_000) -> bytes:
    """A valid ~50 kB 1-bit PNG that decodes to side x side pixels (400 MB at 20000)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = bytes(1 + (side + 7) // 8) * 1000  # filter byte + packed bits, 1000 rows at a time
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(rows) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


GOOD_JPEG = _encode(Image.new("RGB", GOOD_SIZE, (10, 200, 30)), "JPEG")
FILES = {
    "/good.jpg": ("image/jpeg", GOOD_JPEG),
    "/exif.png": ("image/png", _exif_png()),
    "/large.jpg": ("image/jpeg", _encode(Image.new("RGB", LARGE_SIZE, "blue"), "JPEG")),
    "/empty.jpg": ("image/jpeg", b""),
    "/truncated.jpg": ("image/jpeg", _encode(_noise((256, 256)), "JPEG")[:8000]),
    "/page.jpg": ("image/jpeg", b"<!doctype html><html><body>Not found</body></html>"),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {"Content-Length": str(len(body))}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.hits[self.path] += 1
        path = self.path.partition("?")[0]
        try:
            if path in FILES:
                kind, body = FILES[path]
                self._send(200, body, {"Content-Type": kind, "Content-Length": str(len(body))})
            elif path == "/bomb.png":
                self._send(200, _bomb_png())
            elif path in REDIRECTS:
                self._send(302, headers={"Location": REDIRECTS[path], "Content-Length": "0"})
            elif path == "/slow":
                time.sleep(2.0)
                self._send(200, GOOD_JPEG)
            elif path == "/trickle":  # a byte every 50 ms: each recv is quick, the whole is not
                self._send(200, headers={"Content-Length": "1000"})
                for _ in range(60):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.05)
            elif path == "/flaky":  # 503 twice, then the image
                self._send(503) if self.server.hits[self.path] <= 2 else self._send(200, GOOD_JPEG)
            elif path == "/big":  # declares more than the cap
                self._send(200, b"\xff\xd8\xff" + bytes(1000), {"Content-Length": "5000000"})
            elif path == "/big-stream":  # no Content-Length: the cap must stop the read itself
                self._send(200, headers={"Content-Type": "image/jpeg"})
                for _ in range(40):
                    self.wfile.write(b"\xff\xd8\xff" + bytes(64 * 1024))
            else:
                self._send(404, b"not here")
        except OSError:
            pass  # the client hung up first, as it should for slow or oversized answers


def _serve(server: http.server.ThreadingHTTPServer):
    server.hits = Counter()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server():
    srv = _serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler))
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _cfg(**changes) -> FetchConfig:
    """The test server is on loopback: allow exactly it, with small timeouts so failures are quick."""
    base = dict(allow_networks=["127.0.0.1/32"], connect_timeout_s=0.5, read_timeout_s=0.5, retries=0,
                backoff_s=0.01, max_side=256, max_bytes=1_000_000, threads=8)
    return FetchConfig(**{**base, **changes})


def _run(cfg: FetchConfig, urls: list, fetcher: ImageFetcher | None = None, **columns) -> dict[str, np.ndarray]:
    own = fetcher is None
    fetcher = fetcher or ImageFetcher(cfg)
    batch = {cfg.url_column: np.array(urls, dtype=object), **columns}
    try:
        return fetcher(batch)
    finally:
        if own:
            fetcher.close()


def _statuses(cfg: FetchConfig, urls: list) -> list[str]:
    return list(_run(cfg, urls)["fetch_status"])


@pytest.fixture
def connects(monkeypatch) -> list:
    """Every address a socket connects to during the test; anything but loopback is unreachable."""
    calls, original = [], socket.socket.connect

    def spy(sock, address):
        calls.append(address)
        if address[0] not in ("127.0.0.1", "::1"):
            raise OSError(errno.ENETUNREACH, "unreachable in this test")
        return original(sock, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    return calls


def test_good_jpeg_is_reencoded_with_its_size(server):
    out = _run(_cfg(), [f"{server.base}/good.jpg"])
    assert out["fetch_status"][0] == "ok"
    image = Image.open(io.BytesIO(out["image"][0]))
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", GOOD_SIZE)
    assert (out["image_width"][0], out["image_height"][0]) == GOOD_SIZE


def test_png_output_format(server):
    out = _run(_cfg(image_format="png"), [f"{server.base}/good.jpg"])
    assert out["fetch_status"][0] == "ok"
    assert Image.open(io.BytesIO(out["image"][0])).format == "PNG"


def test_exif_orientation_is_applied(server):
    out = _run(_cfg(), [f"{server.base}/exif.png"])
    rotated = EXIF_SIZE[::-1]
    assert (out["image_width"][0], out["image_height"][0]) == rotated
    assert Image.open(io.BytesIO(out["image"][0])).size == rotated


def test_large_image_is_resized_keeping_aspect(server):
    out = _run(_cfg(max_side=256), [f"{server.base}/large.jpg"])
    assert out["fetch_status"][0] == "ok"
    assert (out["image_width"][0], out["image_height"][0]) == (256, 192)
    assert Image.open(io.BytesIO(out["image"][0])).size == (256, 192)


@pytest.mark.parametrize("path, status", [
    ("/empty.jpg", "empty"),
    ("/truncated.jpg", "corrupt_image"),
    ("/page.jpg", "not_an_image"),
    ("/nothing-here.jpg", "http_404"),
])
def test_bad_content_gets_its_status(server, path, status):
    out = _run(_cfg(), [f"{server.base}{path}"])
    assert (out["fetch_status"][0], out["image"][0], out["image_width"][0], out["image_height"][0]) == (status, None, 0, 0)


def test_truncated_images_are_not_silently_padded():
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_pixel_cap_is_checked_before_decoding(server, monkeypatch):
    loads, original = [], ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loads.append(im.size) or original(im))
    assert _statuses(_cfg(), [f"{server.base}/bomb.png"]) == ["too_many_pixels"]
    # 1600x1200 is far below PIL's own bomb limit: only our max_pixels refuses it.
    assert _statuses(_cfg(max_pixels=1_000_000), [f"{server.base}/large.jpg"]) == ["too_many_pixels"]
    assert loads == []
    assert _statuses(_cfg(), [f"{server.base}/good.jpg"]) == ["ok"]
    assert loads, "the load spy must see ordinary decodes"


@pytest.mark.parametrize("path", ["/slow", "/trickle"])
def test_slow_or_trickling_server_times_out_within_budget(server, path):
    start = time.monotonic()
    assert _statuses(_cfg(), [f"{server.base}{path}"]) == ["timeout"]
    assert time.monotonic() - start < 1.8  # budget is connect 0.5 + read 0.5; the server takes 2-3 s


def test_transient_503_is_retried(server):
    assert _statuses(_cfg(retries=2), [f"{server.base}/flaky?key=a"]) == ["ok"]
    assert server.hits["/flaky?key=a"] == 3
    assert _statuses(_cfg(retries=0), [f"{server.base}/flaky?key=b"]) == ["http_503"]


def test_404_is_not_retried(server):
    assert _statuses(_cfg(retries=3), [f"{server.base}/gone?key=c"]) == ["http_404"]
    assert server.hits["/gone?key=c"] == 1


def test_redirect_to_forbidden_address_never_connects_there(server, connects):
    urls = [f"{server.base}/to-metadata", f"{server.base}/to-private"]
    assert _statuses(_cfg(), urls) == ["private_address", "private_address"]
    assert [host for host, _ in connects] == ["127.0.0.1", "127.0.0.1"]  # the first hops only


def test_redirects_are_followed_and_bounded(server):
    urls = [f"{server.base}/to-good", f"{server.base}/loop", f"{server.base}/to-file"]
    assert _statuses(_cfg(max_redirects=3), urls) == ["ok", "too_many_redirects", "unsupported_scheme"]
    assert server.hits["/loop"] == 4  # the first request and three redirects


def test_oversized_body_is_refused(server):
    urls = [f"{server.base}/big", f"{server.base}/big-stream"]
    assert _statuses(_cfg(max_bytes=500_000), urls) == ["too_large", "too_large"]


def test_default_config_refuses_loopback(server, connects):
    port = server.server_address[1]
    hosts = ["127.0.0.1", "localhost", "[::1]", "2130706433"]  # the last is 127.0.0.1 as one number
    urls = [f"http://{host}:{port}/good.jpg" for host in hosts]
    assert _statuses(FetchConfig(), urls) == ["private_address"] * len(urls)
    assert connects == []


def _resolver(*answers: list[str]):
    """A getaddrinfo whose k-th call answers answers[k] (the last one from then on)."""
    calls = []

    def getaddrinfo(host, port, *args, **kwargs):
        calls.append(host)
        ips = answers[min(len(calls), len(answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ips]

    return getaddrinfo


def test_dns_answers_are_vetted_and_pinned(server, monkeypatch, connects):
    url = f"http://images.example:{server.server_address[1]}/good.jpg"
    cfg = _cfg(allow_networks=[])
    # Rebinding: public at the check, loopback right after. The connection goes to the vetted address.
    monkeypatch.setattr(socket, "getaddrinfo", _resolver(["8.8.8.8"], ["127.0.0.1"]))
    assert _statuses(cfg, [url]) == ["connection_error"]
    assert [host for host, _ in connects] == ["8.8.8.8"]
    # One forbidden answer among several refuses the host before any connection.
    connects.clear()
    monkeypatch.setattr(socket, "getaddrinfo", _resolver(["8.8.8.8", "127.0.0.1"]))
    assert _statuses(cfg, [url]) == ["private_address"]
    assert connects == []


def test_connected_peer_is_checked(server, monkeypatch):
    """Whatever answers the connection (here loopback, behind a vetted public answer) is checked too."""
    port, original = server.server_address[1], socket.socket.connect
    monkeypatch.setattr(socket, "getaddrinfo", _resolver(["8.8.8.8"]))
    monkeypatch.setattr(socket.socket, "connect", lambda sock, address: original(sock, ("127.0.0.1", address[1])))
    assert _statuses(_cfg(allow_networks=[]), [f"http://images.example:{port}/good.jpg"]) == ["private_address"]
    assert _statuses(_cfg(), [f"http://images.example:{port}/good.jpg"]) == ["ok"]  # loopback allowed: passes




def _self_signed_cert(folder: Path, host: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_verifies_the_certificate_for_the_url_host(server, tmp_path):
    cert, key = _self_signed_cert(tmp_path, "localhost")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    https = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    https.socket = tls.wrap_socket(https.socket, server_side=True)
    _serve(https)
    port = https.server_address[1]
    try:
        plain_port = server.server_address[1]
        assert _statuses(_cfg(), [f"https://127.0.0.1:{plain_port}/good.jpg"]) == ["tls_error"]  # not TLS
        assert _statuses(_cfg(), [f"https://localhost:{port}/good.jpg"]) == ["tls_error"]  # unknown CA
        fetcher = ImageFetcher(_cfg())
        fetcher.ssl_context.load_verify_locations(cert)
        # Connected to the vetted IP, verified against the URL's name: the cert names localhost only.
        named = _run(fetcher.cfg, [f"https://localhost:{port}/good.jpg"], fetcher)["fetch_status"][0]
        by_ip = _run(fetcher.cfg, [f"https://127.0.0.1:{port}/good.jpg"], fetcher)["fetch_status"][0]
        fetcher.close()
        assert (named, by_ip) == ("ok", "tls_error")
    finally:
        https.shutdown()
        https.server_close()


def test_local_files_only_when_allowed(tmp_path):
    path = tmp_path / "a b.jpg"
    path.write_bytes(GOOD_JPEG)
    urls = [path.as_uri(), str(path), str(tmp_path / "absent.jpg"), f"file://{tmp_path}/absent.jpg"]
    assert _statuses(_cfg(), urls) == ["local_file_refused"] * 4
    assert _statuses(_cfg(allow_local_files=True), urls) == ["ok", "ok", "missing_file", "missing_file"]


@pytest.mark.parametrize("url, status", [
    ("ftp://127.0.0.1/x.jpg", "unsupported_scheme"),
    ("gopher://127.0.0.1/x", "unsupported_scheme"),
    (None, "missing_url"),
    ("", "missing_url"),
    (math.nan, "missing_url"),
    ("http://[::1/x.jpg", "bad_url"),
    ("http:///x.jpg", "bad_url"),
    (42, "bad_url"),
])
def test_unusable_urls(url, status):
    assert _statuses(_cfg(), [url]) == [status]


def test_missing_url_column_names_it():
    fetcher = ImageFetcher(_cfg(url_column="URL"))
    with pytest.raises(KeyError, match=r"'URL'.*\['TEXT', 'url'\]"):
        fetcher({"url": np.array(["x"], dtype=object), "TEXT": np.array(["y"], dtype=object)})
    fetcher.close()


def test_s3_objects(s3):
    from countclip import storage

    client = storage.s3_client()
    client.put_object(Bucket=s3, Key="img/good.jpg", Body=GOOD_JPEG)
    client.put_object(Bucket=s3, Key="img/big.bin", Body=b"\xff\xd8\xff" + bytes(5000))
    urls = [f"s3://{s3}/img/good.jpg", f"s3://{s3}/img/absent.jpg", f"s3://{s3}/img/big.bin", f"s3://{s3}/"]
    out = _run(_cfg(max_bytes=4000), urls)
    assert list(out["fetch_status"]) == ["ok", "missing_object", "too_large", "bad_url"]
    assert Image.open(io.BytesIO(out["image"][0])).size == GOOD_SIZE


def test_mixed_batch_keeps_order_and_columns(server, s3, tmp_path):
    from countclip import storage

    storage.s3_client().put_object(Bucket=s3, Key="good.jpg", Body=GOOD_JPEG)
    cases = [
        (f"{server.base}/good.jpg", "ok"), (None, "missing_url"), (f"{server.base}/exif.png", "ok"),
        (f"{server.base}/missing", "http_404"), (f"s3://{s3}/good.jpg", "ok"), ("ftp://127.0.0.1/a", "unsupported_scheme"),
        (f"{server.base}/to-metadata", "private_address"), (f"{server.base}/page.jpg", "not_an_image"),
        (str(tmp_path / "absent.jpg"), "local_file_refused"), (f"{server.base}/empty.jpg", "empty"),
        (f"{server.base}/large.jpg", "ok"),
    ]
    captions = np.array([f"caption {i}" for i in range(len(cases))], dtype=object)
    keys = np.arange(len(cases)) * 10
    out = _run(_cfg(threads=4), [url for url, _ in cases], caption=captions, key=keys)
    assert list(out["fetch_status"]) == [status for _, status in cases]
    assert out["caption"] is captions and out["key"] is keys
    assert list(out["URL"]) == [url for url, _ in cases]
    ok = out["fetch_status"] == "ok"
    assert all(isinstance(b, bytes) and b for b in out["image"][ok])
    assert all(b is None for b in out["image"][~ok])
    assert (out["image_width"][~ok] == 0).all() and (out["image_width"][ok] > 0).all()
    assert list(zip(out["image_width"][ok], out["image_height"][ok], strict=True)) == [GOOD_SIZE, EXIF_SIZE[::-1], GOOD_SIZE, (256, 192)]


def test_config_checks():
    with pytest.raises(ConfigError, match="not-a-cidr"):
        FetchConfig(allow_networks=["not-a-cidr"])
    with pytest.raises(ConfigError, match="retries"):
        FetchConfig(retries=-1)
    assert FetchConfig.from_dict(FetchConfig(allow_networks=["10.0.0.0/8"]).to_dict()).allow_networks == ["10.0.0.0/8"]


def test_stage_does_not_import_ray():
    tree = ast.parse(Path(fetch_module.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "ray" not in imported
