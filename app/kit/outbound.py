"""Requests to URLs that users give (webhooks; image URLs and any later fetch): one guarded
client, so that no user can make the server reach into its own network.

Without a guard, a user who registers `http://127.0.0.1:6379/` or
`http://169.254.169.254/latest/meta-data/` has the server POST there, and whatever the server
reports back (a status, an error's wording, a duration) turns it into a port scanner of the
networks only the server can see. The guard refuses, before any byte is sent:

- a scheme other than http and https, a URL with userinfo (`user:pass@`, which aiohttp would
  send as Basic auth), a host that is not a plain name or IP address;
- an address in the ranges written out below (loopback, private, shared/CGNAT, link-local,
  unique-local, multicast, reserved, documentation, ...), the cloud metadata addresses, and the
  IPv4 address carried inside an IPv6 one (IPv4-mapped, IPv4-compatible, IPv4-translated,
  NAT64, 6to4) judged as that IPv4 address. The ranges are listed here rather than taken from
  `ipaddress`'s `is_private` / `is_global`, whose definitions changed between Python 3.11 patch
  releases and 3.12: the same URL must get the same answer on every supported Python;
- an IPv4 address written in any form but four decimal numbers (`2130706433`, `0x7f000001`,
  `0177.0.0.1`, `127.1`): the C resolver reads them all as addresses, and aiohttp passes some
  of them to it, so they are refused rather than interpreted.

A host *name* is judged by what it resolves to, when the request is made: the client's
resolver (`GuardedResolver`) wraps aiohttp's and refuses the host if ANY of the addresses it
resolves to is refused. aiohttp then connects to exactly those checked addresses (it does not
resolve again), so a second, different DNS answer (DNS rebinding) is never used. IP literals
never reach a resolver (aiohttp skips it for them), which is why `check_url` judges them first.

Redirects are not followed: a redirect's target would be a second URL the user chose.

`OUTBOUND_ALLOWLIST` lets an operator permit internal receivers: networks (CIDR, or one
address) whose addresses are allowed, and host names (`hooks.corp.example`, or
`*.corp.example` for its subdomains) that may resolve to anything. The metadata addresses stay
refused whatever it says: no receiver lives there, and credentials do.

Through an HTTP(S) proxy (HTTP_PROXY / HTTPS_PROXY, NO_PROXY honoured) the proxy resolves the
name, not this process: the guard still checks the URL (scheme, userinfo, literal addresses,
allow-list), but what a name resolves to is then the proxy's to refuse. The proxy itself is
the operator's configuration and is reached even on a private address.
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


class OutboundRefused(OSError):
    """A URL, a host or an address that outbound requests may not reach. `str()` is the
    reason, in words a user can act on. An OSError, so that a refusal raised by the resolver
    reaches the caller as the cause of aiohttp's `ClientConnectorDNSError`."""


# Where a receiver cannot be, whatever the allow-list: the instance metadata services (AWS,
# GCP, Azure, OpenStack, Oracle: 169.254.169.254; AWS ECS task and EKS pod credentials;
# Alibaba Cloud; AWS's IPv6 endpoints).
METADATA_ADDRESSES: frozenset[Address] = frozenset(
    ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "169.254.170.23",
        "100.100.100.200",
        "fd00:ec2::254",
        "fd00:ec2::23",
    )
)

# Refused IPv4 ranges (IANA special-purpose registry), each with what it is.
BLOCKED_IPV4: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), label)
    for net, label in (
        ("0.0.0.0/8", "'this network'"),
        ("10.0.0.0/8", "private network"),
        ("100.64.0.0/10", "shared (carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private network"),
        ("192.0.0.0/24", "IETF protocol assignment"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay"),
        ("192.168.0.0/16", "private network"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # 255.255.255.255, the broadcast address, included
    )
)

# Refused IPv6 ranges. The ones that carry an IPv4 address are not here: `_embedded_ipv4`.
BLOCKED_IPV6: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(net), label)
    for net, label in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignment"),  # Teredo (2001::/32) included
        ("2001:db8::/32", "documentation"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)

_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")
_IPV4_TRANSLATED = IPv6Network("::ffff:0:0:0/96")
_IPV4_COMPATIBLE = IPv6Network("::/96")
_NAT64 = IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = IPv6Network("2002::/16")

# Names that are local by definition (RFC 6761, 6762, 8375; ICANN's .internal), refused when
# a URL is registered. Any other name is judged by its addresses when it is requested.
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa")

_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: IPv4-mapped, IPv4-translated, NAT64 (the
    well-known prefix), IPv4-compatible (deprecated, but still routed by some stacks) and
    6to4. Each of these reaches the IPv4 address, so it is judged as that address."""
    value = int(address)
    if address in _IPV4_MAPPED or address in _IPV4_TRANSLATED or address in _NAT64:
        return IPv4Address(value & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and value > 1:  # not :: or ::1
        return IPv4Address(value & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return IPv4Address((value >> 80) & 0xFFFFFFFF)
    return None


def _without_scope(address: Address) -> Address:
    """`fe80::1%eth0` as `fe80::1`: the zone says which interface, not which address."""
    if isinstance(address, IPv6Address) and address.scope_id:
        return IPv6Address(int(address))
    return address


def blocked_range(address: Address) -> str | None:
    """What kind of refused address this is ("loopback", "private network", ...), or None
    for an address on the public internet. The allow-list is not consulted here."""
    address = _without_scope(address)
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    if isinstance(address, IPv4Address):
        return next((label for net, label in BLOCKED_IPV4 if address in net), None)
    for net, label in BLOCKED_IPV6:
        if address in net:
            return label
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        inner = blocked_range(embedded)
        return None if inner is None else f"{inner} (IPv4 inside IPv6)"
    return None


def _ipv4_number(host: str) -> int | None:
    """The address the C library's `inet_aton` reads `host` as (one to four dot-separated
    parts, each decimal, octal with a leading 0, or hex with 0x; the last fills the remaining
    bytes), or None if it reads it as a name."""
    if not _NUMERIC_HOST.fullmatch(host):
        return None
    parts = host.removesuffix(".").split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        if part.startswith("0x"):
            digits, base = part[2:] or "0", 16
        elif len(part) > 1 and part.startswith("0"):
            digits, base = part[1:], 8
        else:
            digits, base = part, 10
        try:
            values.append(int(digits, base))
        except ValueError:
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return number


@dataclass(frozen=True)
class OutboundPolicy:
    """What outbound requests may reach: everything public, plus what the operator's
    allow-list (`OUTBOUND_ALLOWLIST`) names. Build it with `OutboundPolicy.parse`."""

    networks: tuple[Network, ...] = ()
    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # from `*.example.com`: ".example.com"

    @classmethod
    def parse(cls, allowlist: str) -> OutboundPolicy:
        """`OUTBOUND_ALLOWLIST`: comma-separated networks (`10.20.0.0/16`, `127.0.0.1`,
        `fd12::/64`) and host names (`hooks.corp.example`, `*.corp.example`). Raises
        ValueError, naming the entry, for anything else."""
        networks: list[Network] = []
        names: set[str] = set()
        suffixes: list[str] = []
        for raw in allowlist.split(","):
            entry = raw.strip().lower().removesuffix(".")
            if not entry:
                continue
            try:
                networks.append(ip_network(entry))
                continue
            except ValueError as exc:
                if "/" in entry or ":" in entry or _ipv4_number(entry) is not None:
                    raise ValueError(f"{raw.strip()!r} is not a network: {exc}") from None
            wildcard = entry.startswith("*.")
            name = entry[2:] if wildcard else entry
            if not _HOST_NAME.fullmatch(name):
                raise ValueError(
                    f"{raw.strip()!r} is neither a network (10.0.0.0/8) nor a host name "
                    "(hooks.example.com, *.example.com)"
                )
            if wildcard:
                suffixes.append("." + name)
            else:
                names.add(name)
        return cls(tuple(networks), frozenset(names), tuple(suffixes))

    def allows_name(self, host: str) -> bool:
        """Whether the operator allowed this host name whatever it resolves to."""
        host = host.lower().removesuffix(".")
        return host in self.names or host.endswith(self.suffixes)

    def address_problem(self, address: Address, *, name_allowed: bool = False) -> str | None:
        """Why this address may not be reached ("loopback", ...), or None. `name_allowed`:
        it is what an allow-listed host name resolved to."""
        address = _without_scope(address)
        label = blocked_range(address)
        if label is None or label.startswith("cloud metadata"):
            return label
        if name_allowed:
            return None
        embedded = _embedded_ipv4(address) if isinstance(address, IPv6Address) else None
        for candidate in (address, embedded):
            if candidate is not None and any(
                candidate.version == net.version and candidate in net for net in self.networks
            ):
                return None
        return label

    def check_url(self, url: str) -> URL:
        """The URL, parsed, if nothing in it is refused; else `OutboundRefused` with the
        reason. Everything that can be judged without DNS: the scheme, userinfo, the host's
        form and, for an IP literal, its address. Host names are judged at connect time."""
        if any(c.isspace() or ord(c) < 32 or c == "\x7f" for c in url):
            raise OutboundRefused("it contains spaces or control characters")
        try:
            target = URL(url)
            target.port  # noqa: B018 (raises ValueError on a port out of range)
        except (ValueError, TypeError):
            raise OutboundRefused("it cannot be parsed") from None
        if target.scheme not in ("http", "https"):
            raise OutboundRefused("it must start with http:// or https://")
        if not target.raw_host:
            raise OutboundRefused("it has no host")
        authority = url.partition("//")[2]
        authority = re.split(r"[/?#]", authority, maxsplit=1)[0]
        if "@" in authority or target.raw_user is not None or target.raw_password is not None:
            raise OutboundRefused(
                "it carries a user name or password (user:pass@); put a token in the path "
                "or the query instead"
            )
        self._check_host(target.raw_host)
        return target

    def check_new_url(self, url: str) -> URL:
        """`check_url`, and also refuse names that are local by definition (`localhost`,
        `*.local`, `*.internal`, ...): what a user registers should fail now, with a reason,
        rather than at every attempt later. Once the allow-list names networks, such a name
        may well resolve into one of them: it is then judged by its addresses, like any
        other name, when it is requested."""
        target = self.check_url(url)
        host = (target.raw_host or "").removesuffix(".")
        local = host in _LOCAL_NAMES or host.endswith(_LOCAL_SUFFIXES)
        if local and not self.networks and not self.allows_name(host):
            raise OutboundRefused(f"{host} is a name for this machine or its local network")
        return target

    def _check_host(self, host: str) -> None:
        if ":" in host:  # an IPv6 literal (yarl gives it without brackets)
            if "%" in host:
                raise OutboundRefused("an IPv6 zone index (%) is not accepted")
            try:
                self._check_address(ip_address(host), host)
            except ValueError:
                raise OutboundRefused(f"{host} is not an IPv6 address") from None
            return
        number = _ipv4_number(host)
        if number is not None:
            address = IPv4Address(number)
            if str(address) != host:
                raise OutboundRefused(
                    f"{host} reads as the IPv4 address {address}: write an IPv4 address as "
                    "four decimal numbers"
                )
            self._check_address(address, host)
            return
        if not _HOST_NAME.fullmatch(host.removesuffix(".")):
            raise OutboundRefused("its host is not a valid host name")

    def _check_address(self, address: Address, host: str) -> None:
        problem = self.address_problem(address)
        if problem is not None:
            raise OutboundRefused(
                f"{host} is in a range that may not be reached ({problem}); an operator can "
                "allow internal receivers with OUTBOUND_ALLOWLIST"
            )


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver (or `inner`), refusing a host if any address it resolves to is
    refused by the policy. Every address is checked, not just the first: aiohttp tries them
    in turn, and happy eyeballs races two."""

    def __init__(self, policy: OutboundPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = DefaultResolver()
        results = await self._inner.resolve(host, port, family)
        name_allowed = self._policy.allows_name(host)
        for result in results:
            try:
                address = ip_address(result["host"])
            except ValueError:
                raise OutboundRefused("the host resolved to something not an address") from None
            if self._policy.address_problem(address, name_allowed=name_allowed) is not None:
                # Neither the address nor its kind: the name may be internal, and so may be
                # what it resolves to. The user knows the name; they learn nothing else.
                raise OutboundRefused(
                    "the host resolves to an address that may not be reached "
                    "(an operator can allow it with OUTBOUND_ALLOWLIST)"
                )
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def refusal(exc: BaseException) -> OutboundRefused | None:
    """The `OutboundRefused` behind an exception aiohttp raised (a refusal by the resolver
    arrives as the cause of a `ClientConnectorDNSError`), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OutboundRefused):
            return current
        seen.add(id(current))
        nested = getattr(current, "os_error", None)
        current = nested if isinstance(nested, BaseException) else current.__cause__
    return None


def env_proxy(url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy that HTTP_PROXY / HTTPS_PROXY name for `url` (none if NO_PROXY exempts its
    host), as the SDK honours them. Read once per session: aiohttp's `trust_env` would look
    them and ~/.netrc up again, in a thread, on every request (0.6 ms of CPU a call)."""
    target = URL(url)
    if target.host is None or urllib.request.proxy_bypass(target.host):
        return None, None
    proxy = urllib.request.getproxies().get(target.scheme)
    if not proxy:
        return None, None
    parsed = URL(proxy)
    return parsed.with_user(None), aiohttp.BasicAuth.from_url(parsed)


def guarded_session(
    policy: OutboundPolicy,
    *,
    limit: int = 100,
    headers: Mapping[str, str] | None = None,
    resolver: AbstractResolver | None = None,
) -> aiohttp.ClientSession:
    """An aiohttp session that connects only where the policy allows: its resolver checks
    every address a name resolves to. Call from a running event loop. Requests through it
    must not name a proxy (the proxy's own address would be judged) and must have been
    checked with `policy.check_url` (IP literals skip the resolver): `OutboundClient` does
    both."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=limit, resolver=GuardedResolver(policy, inner=resolver)
        ),
        timeout=aiohttp.ClientTimeout(total=None),  # each request sets its own deadline
        headers=headers,
        trust_env=False,  # proxies are chosen per request (env_proxy), ~/.netrc never read
    )


class OutboundClient:
    """The one way to send a request to a URL a user gave: the URL checked (`check_url`),
    names checked at connect time (`GuardedResolver`), redirects not followed, the
    environment's proxy honoured. Open and close it on the event loop that uses it."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        limit: int = 100,
        headers: Mapping[str, str] | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.policy = policy
        self._limit = limit
        self._headers = dict(headers or {})
        self._resolver = resolver
        self._direct: aiohttp.ClientSession | None = None
        self._proxied: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._direct = guarded_session(
            self.policy, limit=self._limit, headers=self._headers, resolver=self._resolver
        )

    async def close(self) -> None:
        for session in (self._direct, self._proxied):
            if session is not None:
                await session.close()
        self._direct = self._proxied = None

    def _through_proxy(self) -> aiohttp.ClientSession:
        # Its connector only ever connects to the proxy (every request through it names
        # one), which is the operator's and may well be on a private address.
        if self._proxied is None:
            self._proxied = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                timeout=aiohttp.ClientTimeout(total=None),
                headers=self._headers,
                trust_env=False,
            )
        return self._proxied

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, url: str, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """`session.request(method, url, **kwargs)`, guarded. Raises `OutboundRefused` for a
        refused URL, and aiohttp's errors otherwise (a refused name: `refusal(exc)`)."""
        if self._direct is None:
            raise RuntimeError("OutboundClient.open() was not awaited")
        target = self.policy.check_url(url)
        proxy, proxy_auth = env_proxy(url)
        session = self._direct if proxy is None else self._through_proxy()
        async with session.request(
            method,
            target,
            allow_redirects=False,
            proxy=proxy,
            proxy_auth=proxy_auth,
            **kwargs,
        ) as response:
            yield response


@functools.lru_cache(maxsize=16)
def policy_for(allowlist: str) -> OutboundPolicy:
    """`OutboundPolicy.parse`, once per distinct setting value (it is asked per request)."""
    return OutboundPolicy.parse(allowlist)
