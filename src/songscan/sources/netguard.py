"""Which URLs songscan may fetch, and an HTTP client that only connects where allowed.

A caller-supplied URL must not make the server reach into its own network (SSRF):
only http(s) URLs are taken, and every address their host resolves to must be public
unless the operator's allow-list names it. The check runs twice: `check_url` before a
request (a clear error, no connection attempted), and again inside the client's
connection backend at connect time, on the very addresses it then connects to. A DNS
answer that changes between the two (rebinding) therefore cannot slip through, and the
Host header and TLS SNI stay the URL's own host name.

Not covered: the time `getaddrinfo` itself takes is bounded only by the system
resolver's own timeout; outbound HTTP proxies are not supported (environment proxy
settings are ignored on purpose, since a proxy would make the address check moot).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import ssl
import time
import typing
from collections.abc import Iterable
from dataclasses import dataclass

import httpcore
import httpx

from songscan.errors import UrlFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_CHARS = 8192

_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?\.?")
# Ranges that `ipaddress`' flags do not all name: CGNAT, benchmarking, IETF protocol
# assignments, NAT64 (both prefixes), discard-only, ORCHID, documentation.
_EXTRA_BLOCKED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",
        "100.64.0.0/10",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "240.0.0.0/4",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "fc00::/7",
        "fec0::/10",
    )
)


# --- addresses -------------------------------------------------------------------------


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64, compatible), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    packed = address.packed
    if packed[:12] == bytes(12) or address in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(packed[12:])
    return None


def is_public_address(address: IPAddress) -> bool:
    """True when `address` is a globally routable unicast address (not loopback, private,
    link-local, multicast, reserved, unspecified, CGNAT, or one of those inside IPv6)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.teredo is not None:
            return False
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public_address(inner)
    if (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    ):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return False
    return not any(address in network for network in _EXTRA_BLOCKED)


# --- the operator's allow-list ---------------------------------------------------------


@dataclass(frozen=True)
class _NetworkEntry:
    network: IPNetwork
    port: int | None


@dataclass(frozen=True)
class _HostEntry:
    host: str
    port: int | None


def _split_port(entry: str) -> tuple[str, int | None]:
    """`[v6]:port`, `[v6]`, `v4:port`, `name:port`, `v4/len:port` → (target, port)."""
    if entry.startswith("["):
        target, sep, rest = entry[1:].partition("]")
        if not sep:
            raise ValueError(f"allow-list entry {entry!r}: missing ']'")
        if not rest:
            return target, None
        if not rest.startswith(":"):
            raise ValueError(f"allow-list entry {entry!r}: expected ':port' after ']'")
        port_text = rest[1:]
    elif entry.count(":") == 1:
        target, port_text = entry.split(":")
    else:  # no port, or a bare IPv6 address / network
        return entry, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"allow-list entry {entry!r}: bad port {port_text!r}")
    return target, int(port_text)


class AllowList:
    """Non-public destinations the operator permits, from config.

    Entries are host names (`media.lan`), IP addresses or CIDR networks (`10.0.0.0/8`,
    `fd00::/8`), each optionally limited to one port (`127.0.0.1:8080`,
    `[::1]:8080`, `10.0.0.0/8:443`, `media.lan:8000`). A host-name entry permits the
    URL whatever that name resolves to; a network entry permits the addresses in it.
    Public addresses never need an entry.
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._networks: list[_NetworkEntry] = []
        self._hosts: list[_HostEntry] = []
        self.entries = tuple(entries)
        for raw in self.entries:
            entry = raw.strip()
            if not entry:
                raise ValueError("empty allow-list entry")
            target, port = _split_port(entry)
            try:
                network = ipaddress.ip_network(target, strict=False)
            except ValueError as exc:
                host = target.lower().rstrip(".")
                if not _HOST_NAME.fullmatch(host):
                    message = f"allow-list entry {raw!r} is no host, address or CIDR"
                    raise ValueError(message) from exc
                self._hosts.append(_HostEntry(host, port))
            else:
                self._networks.append(_NetworkEntry(network, port))

    def __repr__(self) -> str:
        return f"AllowList({list(self.entries)!r})"

    def permits_host(self, host: str, port: int) -> bool:
        name = host.lower().rstrip(".")
        return any(e.host == name and e.port in (None, port) for e in self._hosts)

    def permits_address(self, address: IPAddress, port: int) -> bool:
        return any(
            address in e.network and e.port in (None, port)
            for e in self._networks
            if e.network.version == address.version
        )


NO_EXCEPTIONS = AllowList()


# --- URL check -------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedURL:
    """A URL that passed `check_url`, with the addresses its host resolved to then."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def resolve_permitted(host: str, port: int, allow: AllowList) -> tuple[IPAddress, ...]:
    """Every address `host` resolves to, or UrlFailed if any of them is not allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UrlFailed(f"the URL's host {host!r} cannot be resolved") from exc
    addresses: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UrlFailed(f"the URL's host {host!r} has no IP address")
    if allow.permits_host(host, port):
        return tuple(addresses)
    for address in addresses:
        if not is_public_address(address) and not allow.permits_address(address, port):
            raise not_allowed(host)
    return tuple(addresses)


def not_allowed(host: str) -> UrlFailed:
    """The refusal of a non-public host, saying how the operator allows it. It names the host
    as the URL gave it (an entry for that name permits whatever it resolves to), never the
    private address it resolved to."""
    entry = host.strip("[]")
    return UrlFailed(
        f"the URL's host {host!r} is not allowed (non-public address); to allow it, add "
        f'url_allow = ["{entry}"] to the [api] section of songscan.toml and restart the server'
    )


def parse_url(url: str) -> httpx.URL:
    """The URL, parsed as the HTTP client will see it, or UrlFailed when it is not an
    absolute http(s) URL with a plain host (no user:password@, no odd characters)."""
    if not isinstance(url, str) or not url.strip():
        raise UrlFailed("the URL is empty")
    text = url.strip()
    if len(text) > MAX_URL_CHARS:
        raise UrlFailed("the URL is too long")
    if any(ord(ch) < 0x20 or ch in "\x7f\\" for ch in text):
        raise UrlFailed("the URL contains control characters or backslashes")
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, ValueError) as exc:
        raise UrlFailed(f"the URL is malformed: {exc}") from exc
    if parsed.scheme not in DEFAULT_PORTS:
        raise UrlFailed("only http and https URLs can be fetched")
    if parsed.userinfo:
        raise UrlFailed("URLs with user:password@ are not accepted")
    host = parsed.raw_host.decode("ascii").lower()
    if not host:
        raise UrlFailed("the URL has no host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise UrlFailed("the URL's host is malformed") from exc
    elif not _HOST_NAME.fullmatch(host):
        raise UrlFailed("the URL's host is malformed")
    return parsed


def check_url(url: str, allow: AllowList = NO_EXCEPTIONS) -> ParsedURL:
    """Parse `url` and resolve its host; UrlFailed unless it is http(s) and every address
    is public or permitted by `allow`. Makes no connection."""
    parsed = parse_url(url)
    host = parsed.raw_host.decode("ascii").lower()
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    addresses = resolve_permitted(host, port, allow)
    return ParsedURL(str(parsed), parsed.scheme, host, port, addresses)


# --- time limit ------------------------------------------------------------------------


class Deadline:
    """A point in monotonic time by which a whole fetch must be done."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._at - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def clamp(self, timeout: float | None, timeout_error: type[Exception]) -> float:
        """`timeout` shortened to what is left; raises `timeout_error` when nothing is."""
        left = self.remaining()
        if left <= 0:
            raise timeout_error("the time limit for fetching the URL is reached")
        return left if timeout is None else min(timeout, left)

    def failure(self) -> UrlFailed:
        return UrlFailed(f"the URL did not deliver its media within {self.seconds:g} s")


# --- guarded HTTP client ---------------------------------------------------------------


ICY_STATUS = b"ICY "  # a SHOUTcast v1 server's status line: "ICY 200 OK", HTTP/1.0 otherwise
HTTP_10_STATUS = b"HTTP/1.0 "


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write waits no longer than the deadline.

    A SHOUTcast v1 server (and SHOUTcast 2 to clients it takes for players) answers with the
    status line `ICY 200 OK`, then headers as HTTP/1.0 does: the answer's first bytes are read
    as `HTTP/1.0 200 OK`, as players do, so that the HTTP parser takes it."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline
        self._status_line = True  # the next read starts the server's answer

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._read(max_bytes, timeout)
        if self._status_line:
            self._status_line = False
            while data and len(data) < len(ICY_STATUS) and ICY_STATUS.startswith(data):
                more = self._read(max_bytes, timeout)
                if not more:
                    break
                data += more
            if data.startswith(ICY_STATUS):
                data = HTTP_10_STATUS + data[len(ICY_STATUS) :]
        return data

    def _read(self, max_bytes: int, timeout: float | None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: typing.Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = self._deadline.clamp(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, timeout), self._deadline
        )

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.SyncBackend):
    """Resolves, checks and connects in one step, so the address connected to is the
    address checked (no DNS rebinding window)."""

    def __init__(self, allow: AllowList, deadline: Deadline) -> None:
        self._allow = allow
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = resolve_permitted(host, port, self._allow)
        last_error: Exception | None = None
        for address in addresses:
            clamped = self._deadline.clamp(timeout, httpcore.ConnectTimeout)
            try:
                stream = super().connect_tcp(
                    str(address), port, clamped, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last_error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        assert last_error is not None
        raise last_error

    def connect_unix_socket(self, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        raise UrlFailed("unix sockets are not allowed")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every guarded client of the process: making one loads the CA
    bundle (~20 ms of CPU and ~0.7 MB of allocations), and a stream server makes a client
    per callback delivered. A context is safe to share between threads and connections."""
    return httpx.create_ssl_context(trust_env=False)


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self, allow: AllowList, deadline: Deadline) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False)
        # httpx offers no public hook for the network backend; the pinned httpx version
        # builds exactly this pool, so replacing it is safe (tests exercise it).
        self._pool = httpcore.ConnectionPool(
            ssl_context=_ssl_context(),
            max_connections=10,
            max_keepalive_connections=5,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(allow, deadline),
        )


USER_AGENT = "songscan/0.1 (+https://github.com/songscan)"


def guarded_client(allow: AllowList, deadline: Deadline) -> httpx.Client:
    """An httpx client that follows no redirects by itself, reads no proxy settings from
    the environment, and connects only to allowed addresses within `deadline`."""
    return httpx.Client(
        transport=_GuardedTransport(allow, deadline),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(max(deadline.seconds, 0.001)),
        headers={"User-Agent": USER_AGENT},
    )
