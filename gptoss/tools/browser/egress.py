"""Where the browser may connect: an egress policy against server-side request forgery.

A page the model opens (or a page that talks the model into opening one) must not reach what listens on
the server's own host or network: admin endpoints, cloud metadata services, other tenants' services. So
before every connection the host is resolved and EVERY address it resolves to must be public; the
connection then goes to the address that was checked (no second lookup, so DNS rebinding between the
check and the connect cannot swap it), while the URL's host name stays in the Host header and in TLS
(SNI and certificate checks). Redirects are followed by the caller, one hop at a time, each hop a new
check.

Refused unless the operator allows them: loopback, private (RFC 1918, CGNAT 100.64/10, IPv6 ULA
fc00::/7), link-local (169.254/16 with the metadata address 169.254.169.254, fe80::/10), multicast,
unspecified (0.0.0.0, ::), reserved and documentation ranges, and IPv6 forms that carry such an IPv4
address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, 6to4, NAT64, Teredo). Odd
spellings (``127.1``, ``2130706433``, ``0x7f.1``) need no special case: the check is on what the
resolver returns, not on how the URL spells it.

The operator opens it with an allow-list (``--browser-allow-hosts`` or ``GPTOSS_BROWSER_ALLOW_HOSTS``,
comma-separated): a host name (``intranet.example``; ``*.example`` or ``.example`` for its subdomains),
an address or a network (``10.1.2.3``, ``10.0.0.0/8``, ``::1``), each optionally with ``:PORT``
(``[::1]:8080`` for IPv6), which then allows only that port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable

from gptoss.tools.browser.backend import BackendError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: (host, port) -> the addresses it resolves to (as strings); tests swap in their own
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_COMPAT = ipaddress.ip_network("::/96")


class EgressRefused(BackendError):
    """The browser may not connect there (the message says why, for the model)."""


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64, Teredo), if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _NAT64 or addr in _COMPAT:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def why_not_public(addr: IPAddress) -> str | None:
    """None for a public unicast address; else what kind of address it is."""
    if isinstance(addr, ipaddress.IPv6Address):
        addr = ipaddress.IPv6Address(int(addr))  # without a %scope
        if addr.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d over IPv4
            reason = why_not_public(addr.ipv4_mapped)
            return None if reason is None else f"{reason} (as the IPv6 address {addr})"
    checks = (
        ("is_unspecified", "the unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address (cloud metadata services live there)"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private-network address"),
        ("is_reserved", "a reserved address"),
    )
    for attr, reason in checks:
        if getattr(addr, attr):
            return reason
    if isinstance(addr, ipaddress.IPv4Address) and addr in ipaddress.ip_network("100.64.0.0/10"):
        return "a shared (carrier-grade NAT) address"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr in ipaddress.ip_network("fc00::/7"):
            return "a unique-local (private) IPv6 address"
        if addr in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        inner = embedded_ipv4(addr)
        if inner is not None:
            reason = why_not_public(inner)
            if reason is not None:
                return f"{reason} (inside the IPv6 address {addr})"
            if addr in _COMPAT:
                return "an IPv4-compatible IPv6 address (deprecated)"
    if not addr.is_global:
        return "not a public address"
    return None


def _normal_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


@dataclass(frozen=True)
class AllowEntry:
    """One operator allow-list entry: a host name (or domain suffix) or a network, and maybe a port."""

    name: str | None = None  # exact host name
    suffix: str | None = None  # ".example": any subdomain of example
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        raw = text.strip()
        if not raw:
            raise ValueError("an empty entry")
        host, port = raw, None
        if raw.startswith("["):  # [v6] or [v6]:port or [v6/len]:port
            close = raw.find("]")
            if close < 0:
                raise ValueError(f"{raw!r}: an unclosed [")
            host, rest = raw[1:close], raw[close + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"{raw!r}: expected :PORT after ]")
                port = rest[1:]
        elif raw.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
            host, port = raw.split(":")
        port_n = None
        if port is not None:
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"{raw!r}: the port should be 1-65535, found {port!r}")
            port_n = int(port)
        host = _normal_host(host)
        if not host:
            raise ValueError(f"{raw!r}: no host")
        try:
            return cls(network=ipaddress.ip_network(host, strict=False), port=port_n)
        except ValueError:
            pass
        if host.startswith("*."):
            host = host[1:]
        if host.startswith("."):
            if len(host) < 2:
                raise ValueError(f"{raw!r}: no domain after the dot")
            return cls(suffix=host, port=port_n)
        if not all(part and all(c.isalnum() or c in "-_" for c in part) for part in host.split(".")):
            raise ValueError(f"{raw!r}: not a host name, an address or a network")
        return cls(name=host, port=port_n)

    def matches_name(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.name is not None:
            return host == self.name
        if self.suffix is not None:
            return host.endswith(self.suffix) or host == self.suffix[1:]
        return False

    def matches_address(self, addr: IPAddress, port: int) -> bool:
        if self.network is None or (self.port is not None and self.port != port):
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return addr.version == self.network.version and addr in self.network


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclass
class EgressPolicy:
    """Public addresses only, plus what the operator's allow-list opens."""

    allow: list[AllowEntry] = field(default_factory=list)
    resolver: Resolver = system_resolver

    @classmethod
    def from_spec(cls, spec: str | Iterable[str] | None, resolver: Resolver | None = None) -> EgressPolicy:
        """From ``"a.example,10.0.0.0/8,[::1]:8080"`` (or a list of entries); ValueError names a bad entry."""
        if spec is None:
            entries: list[str] = []
        elif isinstance(spec, str):
            entries = [e for e in spec.split(",") if e.strip()]
        else:
            entries = [e for e in spec if e.strip()]
        allow = []
        for e in entries:
            try:
                allow.append(AllowEntry.parse(e))
            except ValueError as exc:
                raise ValueError(f"browser allow-list: {exc}") from None
        return cls(allow, resolver or system_resolver)

    @classmethod
    def from_env(cls, env: dict | None = None) -> EgressPolicy:
        env = os.environ if env is None else env
        return cls.from_spec(env.get("GPTOSS_BROWSER_ALLOW_HOSTS"))

    def name_allowed(self, host: str, port: int) -> bool:
        host = _normal_host(host)
        return any(e.matches_name(host, port) for e in self.allow)

    def check_address(self, host: str, addr: str, port: int) -> str | None:
        """None when ``addr`` (an address ``host`` resolved to) may be connected to; else why not."""
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return f"the resolver returned {addr!r}, which is not an address"
        if self.name_allowed(host, port) or any(e.matches_address(ip, port) for e in self.allow):
            return None
        return why_not_public(ip)

    async def resolve(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        """The addresses to connect to for ``host:port``, after checking every address it resolves to;
        EgressRefused when one of them is not allowed (a host resolving to both a public and a private
        address is refused: which one a client would use is up to it)."""
        bare = _normal_host(host)
        try:
            literal = ipaddress.ip_address(bare)
            addrs = [str(literal)]
        except ValueError:
            try:
                addrs = await asyncio.wait_for(self.resolver(bare, port), timeout)
            except asyncio.TimeoutError:
                raise EgressRefused(f"`{host}` did not resolve within {timeout:g} s") from None
            except OSError as exc:
                raise EgressRefused(f"`{host}` does not resolve ({exc.strerror or exc})") from None
        if not addrs:
            raise EgressRefused(f"`{host}` does not resolve")
        for addr in addrs:
            reason = self.check_address(bare, addr, port)
            if reason is not None:
                shown = host if addr == bare else f"{host} (resolves to {addr})"
                raise EgressRefused(
                    f"the browser may not connect to {shown}: it is {reason}; "
                    "the operator can allow it with --browser-allow-hosts"
                )
        return addrs


def tls_context(verify=True):
    """The client TLS context for ``verify`` as httpx takes it (True: the system's CAs; an
    ``ssl.SSLContext``: the operator's own). Loading the CA bundle takes tens of milliseconds: make it
    once, not on the event loop at every fetch."""
    import httpx

    return httpx.create_ssl_context(verify=verify, trust_env=False)


def pinned_transport(policy: EgressPolicy, ssl_context):
    """An httpx transport whose every connection goes to an address ``policy`` checked just before.

    The host name the URL names is what httpx puts in the Host header and what TLS verifies (SNI and
    the certificate, with ``ssl_context``: see :func:`tls_context`); only the TCP connection is made to
    the checked address."""
    import httpcore
    import httpx

    class PinnedBackend(httpcore.AsyncNetworkBackend):
        def __init__(self) -> None:
            self.inner = httpcore.AnyIOBackend()

        async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
            addrs = await policy.resolve(host, port, timeout)
            for i, addr in enumerate(addrs):  # the checked addresses in the resolver's order, as a client would
                try:
                    return await self.inner.connect_tcp(
                        addr, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                    )
                except (httpcore.ConnectError, httpcore.ConnectTimeout):
                    if i == len(addrs) - 1:
                        raise

        async def connect_unix_socket(self, path, timeout=None, socket_options=None):
            raise EgressRefused("the browser does not connect to Unix sockets")

        async def sleep(self, seconds: float) -> None:
            await self.inner.sleep(seconds)

    transport = httpx.AsyncHTTPTransport(trust_env=False, verify=ssl_context)  # a context is taken as it is
    # The transport's own pool, rebuilt around the pinning network backend (httpx takes no backend argument).
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        network_backend=PinnedBackend(),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
    )
    return transport
