"""The fetch stage's network safety: which addresses untrusted URLs may reach, and HTTP connections
that only go there, within one time budget per attempt.

Untrusted URLs never reach loopback, private, link-local (incl. cloud metadata), unique-local,
multicast, unspecified or reserved addresses unless ``allow_networks`` lists them: ``AddressGuard``
resolves each host itself, refuses it if any address is forbidden, connects to the address it checked
(DNS rebinding cannot swap it) and re-checks the peer. ``VettedConnection`` is an ``http.client``
connection that connects only through the guard and reads headers and body against one deadline, so
a server trickling bytes cannot hold a worker. Failures are ``FetchFailure(status)``.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import time
from collections.abc import Sequence
from urllib.parse import quote, urlsplit

_URL_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))  # quote() leaves printable ASCII alone
_CHUNK = 64 * 1024


class FetchFailure(Exception):
    """A row's fetch failed with ``status``; ``transient`` failures are worth another attempt."""

    def __init__(self, status: str, transient: bool = False):
        super().__init__(status)
        self.status, self.transient = status, transient



class AddressGuard:
    """Which IP addresses untrusted URLs may reach: public ones, plus ``allow_networks``."""

    def __init__(self, allow_networks: Sequence[str] = ()):
        self.allowed = [ipaddress.ip_network(cidr, strict=False) for cidr in allow_networks]

    def is_allowed(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        if any(ip in net for net in self.allowed):
            return True
        return _is_public(ip)

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        """A socket connected to a vetted address of ``host``; FetchFailure("private_address") else."""
        candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        # Refuse if any answer is forbidden, not only the first: a host listing a public and a
        # private address could otherwise be steered to the private one by failing the first.
        if not all(self.is_allowed(sockaddr[0]) for *_, sockaddr in candidates):
            raise FetchFailure("private_address")
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in candidates:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)  # the IP checked above, not the name: no second lookup
                if not self.is_allowed(sock.getpeername()[0]):
                    raise FetchFailure("private_address")
                return sock
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:
                sock.close()
                raise
        raise error or OSError(f"no address for {host}")


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # is_global alone lets IPv4 multicast through, hence the explicit flags.
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    if ip.is_loopback or ip.is_link_local or ip.is_private:
        return False
    # A 6to4 address is reached through the IPv4 address it embeds. (NAT64's 64:ff9b::/96 counts as
    # reserved and is refused above.)
    return ip.version == 4 or ip.sixtofour is None or _is_public(ip.sixtofour)


class _DeadlineReader(io.RawIOBase):
    """Socket reads bounded by one deadline for the whole response, not a timeout per recv."""

    def __init__(self, sock: socket.socket, deadline: float):
        # Read through the socket's own makefile(): it keeps the descriptor open when http.client
        # closes the connection's socket early (HTTP/1.0, Connection: close) while we still read.
        self._sock, self._raw, self._deadline = sock, sock.makefile("rb", buffering=0), deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(remaining(self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """What http.client's response needs of a socket (only makefile), with a deadline-aware reader."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock, self._deadline = sock, deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class VettedConnection(http.client.HTTPConnection):
    """HTTP(S) to an address the guard accepted; TLS verifies the certificate for the URL's host (SNI)."""

    def __init__(self, host: str, port: int, *, guard: AddressGuard, tls: ssl.SSLContext | None,
                 connect_timeout: float, deadline: float):
        super().__init__(host, port, timeout=connect_timeout)
        self.default_port = 443 if tls else 80  # so the Host header leaves out a default port
        self._guard, self._tls, self._deadline = guard, tls, deadline

    def connect(self) -> None:
        sock = self._guard.connect(self.host, self.port, self.timeout)
        sock.settimeout(remaining(self._deadline))
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock

    def response_class(self, sock, *args, **kwargs) -> http.client.HTTPResponse:
        # getresponse() calls self.response_class(self.sock, ...): handing the response a
        # deadline-bounded reader makes the attempt budget cover headers and body alike.
        return http.client.HTTPResponse(_DeadlineSocket(sock, self._deadline), *args, **kwargs)


def remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's time budget is spent")
    return left


def split_http_url(url: str) -> tuple[bool, str, int, str]:
    """(tls, host, port, request target) of an http(s) URL, or FetchFailure."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise FetchFailure("bad_url") from None
    if parts.scheme not in ("http", "https"):
        raise FetchFailure("unsupported_scheme")  # also stops a redirect to file:// or ftp://
    if not host:
        raise FetchFailure("bad_url")
    try:
        host = host.encode("idna").decode("ascii")  # internationalised names go on the wire as punycode
    except UnicodeError:
        raise FetchFailure("bad_url") from None
    tls = parts.scheme == "https"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # LAION URLs often hold spaces or non-ASCII characters that http.client would refuse.
    return tls, host, port or (443 if tls else 80), quote(target, safe=_URL_SAFE)


def read_capped(response: http.client.HTTPResponse, max_bytes: int) -> bytes:
    declared = response.getheader("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > max_bytes:
        raise FetchFailure("too_large")  # refuse before reading a byte of it
    chunks, size = [], 0
    while chunk := response.read1(_CHUNK):  # one recv per call, so the deadline is checked often
        size += len(chunk)
        if size > max_bytes:
            raise FetchFailure("too_large")
        chunks.append(chunk)
    if response.length:  # the server closed before sending the length it declared
        raise FetchFailure("connection_error", transient=True)
    return b"".join(chunks)
