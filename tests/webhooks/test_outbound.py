"""The outbound guard (app/kit/outbound.py) on its own: which URLs and addresses it refuses, the
allow-list, and the guarded client against real HTTP servers on 127.0.0.1 (a receiver, a
proxy). No database: these run once, not per backend.

The address tables are the contract: they must give the same answers on every supported
Python (the guard writes its ranges out rather than using `ipaddress.is_private`)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from app.kit.outbound import (
    OutboundClient,
    OutboundPolicy,
    OutboundRefused,
    blocked_range,
    refusal,
)
from app.kit.settings import Settings
from tests.conftest import IsolatedSettings
from tests.mocks.server import BackgroundServer

DEFAULT = OutboundPolicy.parse("")

REFUSED_ADDRESSES = {
    # IPv4
    "0.0.0.0": "'this network'",
    "10.1.2.3": "private network",
    "100.64.0.1": "shared (carrier-grade NAT)",
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "169.254.1.1": "link-local",
    "169.254.169.254": "cloud metadata",
    "169.254.170.2": "cloud metadata",
    "100.100.100.200": "cloud metadata",
    "172.16.0.1": "private network",
    "172.31.255.255": "private network",
    "192.0.0.8": "IETF protocol assignment",
    "192.0.2.1": "documentation",
    "192.168.1.1": "private network",
    "198.18.0.1": "benchmarking",
    "224.0.0.1": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    # IPv6
    "::": "unspecified",
    "::1": "loopback",
    "fe80::1": "link-local",
    "fe80::1%2": "link-local",
    "fc00::1": "unique-local",
    "fd12:3456::1": "unique-local",
    "fd00:ec2::254": "cloud metadata",
    "fec0::1": "site-local",
    "ff02::1": "multicast",
    "2001:db8::1": "documentation",
    "2001::1": "IETF protocol assignment",  # Teredo
    "64:ff9b:1::1": "local-use NAT64",
    # IPv4 inside IPv6, judged as the IPv4 address
    "::ffff:127.0.0.1": "loopback (IPv4 inside IPv6)",
    "::ffff:10.0.0.1": "private network (IPv4 inside IPv6)",
    "::ffff:169.254.169.254": "cloud metadata (IPv4 inside IPv6)",
    "::ffff:0:127.0.0.1": "loopback (IPv4 inside IPv6)",  # IPv4-translated
    "::127.0.0.1": "loopback (IPv4 inside IPv6)",  # IPv4-compatible
    "64:ff9b::10.0.0.1": "private network (IPv4 inside IPv6)",  # NAT64
    "2002:7f00:1::1": "loopback (IPv4 inside IPv6)",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::": "cloud metadata (IPv4 inside IPv6)",  # 6to4 of 169.254.169.254
}
PUBLIC_ADDRESSES = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "172.32.0.1",  # just past 172.16.0.0/12
    "100.128.0.1",  # just past 100.64.0.0/10
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",
    "2002:808:808::1",
]


def test_every_refused_range_is_named_and_public_addresses_pass():
    for text, label in REFUSED_ADDRESSES.items():
        assert blocked_range(ip_address(text)) == label, text
        assert DEFAULT.address_problem(ip_address(text)) == label, text
    for text in PUBLIC_ADDRESSES:
        assert blocked_range(ip_address(text)) is None, text
        assert DEFAULT.address_problem(ip_address(text)) is None, text


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        # The examples
        ("http://localhost:5432/", "localhost is a name for this machine"),
        ("http://127.0.0.1:6379/", "(loopback)"),
        ("http://169.254.169.254/latest/meta-data/", "(cloud metadata)"),
        ("http://0x7f000001:8399/", "reads as the IPv4 address 127.0.0.1"),
        ("http://[::1]:8000/", "(loopback)"),
        ("http://user:pass@example.com/", "user name or password"),
        # Other spellings of the same places
        ("http://2130706433/", "reads as the IPv4 address 127.0.0.1"),
        ("http://017700000001/", "reads as the IPv4 address 127.0.0.1"),
        ("http://0177.0.0.1/", "reads as the IPv4 address 127.0.0.1"),
        ("http://127.1/", "reads as the IPv4 address 127.0.0.1"),
        ("http://0x7f.0.0.1/", "reads as the IPv4 address 127.0.0.1"),
        ("http://127.0.0.1./", "reads as the IPv4 address 127.0.0.1"),
        ("http://[::ffff:127.0.0.1]/", "loopback (IPv4 inside IPv6)"),
        ("http://[::ffff:a9fe:a9fe]/", "cloud metadata (IPv4 inside IPv6)"),
        ("http://[fe80::1%25eth0]/", "zone index"),
        # Full-width digits, which IDNA maps to 127.0.0.1
        ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "(loopback)"),
        ("http://LOCALHOST./x", "localhost is a name for this machine"),
        ("http://api.localhost/", "is a name for this machine"),
        ("http://printer.local/", "is a name for this machine"),
        ("http://metadata.google.internal/", "is a name for this machine"),
        ("http://:secret@example.com/", "user name or password"),
        ("http://a@b@example.com/", "user name or password"),
        ("http://10.0.0.5:8080/hook", "(private network)"),
        ("http://0.0.0.0:8000/", "('this network')"),
        ("http://%31%32%37.0.0.1/", "not a valid host name"),
        ("ftp://example.com/", "must start with http:// or https://"),
        ("http:///nohost", "has no host"),
        ("http://example.com\\@127.0.0.1/", "cannot be parsed"),
        ("http://exa mple.com/", "spaces or control characters"),
    ],
)
def test_urls_refused_before_anything_is_sent(url: str, reason: str):
    with pytest.raises(OutboundRefused) as refused:
        DEFAULT.check_new_url(url)
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hooks/x?token=abc",
        "http://8.8.8.8:8080/",
        "http://[2606:4700:4700::1111]/",
        "https://hooks.example.com./x",
        "http://1.2.3.4.5/",  # a name (resolved when requested), not an address
    ],
)
def test_public_urls_pass(url: str):
    assert str(DEFAULT.check_new_url(url))


def test_the_allowlist_opens_networks_and_names_but_never_metadata():
    policy = OutboundPolicy.parse(" 127.0.0.1, 10.20.0.0/16 ,fd00::/8, hooks.corp.example,*.lan.")
    assert policy.check_url("http://127.0.0.1:9/")
    assert policy.check_url("http://[::ffff:127.0.0.1]:9/")  # the same address, mapped
    assert policy.check_url("http://10.20.3.4/")
    assert policy.check_url("http://[fd00::5]/")
    for url in ["http://127.0.0.2/", "http://10.21.0.1/", "http://[::1]/"]:
        with pytest.raises(OutboundRefused):
            policy.check_url(url)
    for url in ["http://169.254.169.254/", "http://[fd00:ec2::254]/"]:  # inside 10.x, fd00::/8
        with pytest.raises(OutboundRefused, match="cloud metadata"):
            policy.check_url(url)
    assert policy.allows_name("hooks.corp.example") and policy.allows_name("HOOKS.corp.example.")
    assert policy.allows_name("a.b.lan") and not policy.allows_name("lan")
    assert not policy.allows_name("corp.example")
    name_allowed = {"name_allowed": True}
    assert policy.address_problem(ip_address("192.168.0.9"), **name_allowed) is None
    assert policy.address_problem(ip_address("169.254.169.254"), **name_allowed)
    # With networks allowed, `localhost` may resolve into one: judged when requested.
    assert policy.check_new_url("http://localhost:9/")
    assert OutboundPolicy.parse("localhost").check_new_url("http://localhost:9/")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.1/8", "has host bits set"),
        ("1.2.3.4/33", "is not a network"),
        ("0x7f000001", "is not a network"),
        ("hooks example", "neither a network"),
        ("*.", "neither a network"),
    ],
)
def test_a_wrong_allowlist_stops_the_process_with_the_entry_named(value: str, message: str):
    with pytest.raises(ValueError, match=message):
        IsolatedSettings(outbound_allowlist=value)
    assert Settings.model_fields["outbound_allowlist"].description


# --- The guarded client against real servers -----------------------------------------------


@dataclass
class Server:
    """An HTTP server on 127.0.0.1 that answers 200 (`/redirect`: 302 to `/landed`) and
    records each request's path, and (as a proxy sees them) its absolute target."""

    requests: list[str] = field(default_factory=list)
    origin: str = ""
    _server: BackgroundServer = field(default_factory=lambda: BackgroundServer("outbound"))

    def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.origin = self._server.start(app)

    @property
    def port(self) -> int:
        return int(self.origin.rpartition(":")[2])

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.raw_path)  # absolute-form when sent to a proxy
        if request.path == "/redirect":
            response = web.Response(status=302, headers={"Location": f"{self.origin}/landed"})
        else:
            response = web.Response(text="ok")
        response.force_close()  # each request on a connection of its own: resolved anew
        return response


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    running = Server()
    running.start()
    yield running
    running._server.stop()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
async def clients() -> AsyncIterator[list[OutboundClient]]:
    """Opened clients, closed after the test."""
    opened: list[OutboundClient] = []
    yield opened
    for client in opened:
        await client.close()


async def _client(
    opened: list[OutboundClient], allowlist: str, resolver: AbstractResolver | None = None
) -> OutboundClient:
    client = OutboundClient(OutboundPolicy.parse(allowlist), resolver=resolver)
    await client.open()
    opened.append(client)
    return client


async def _get(client: OutboundClient, url: str) -> int:
    async with client.request("GET", url) as response:
        await response.read()
        return response.status


async def test_a_local_receiver_is_refused_by_default_and_reached_through_the_allowlist(
    server: Server, clients: list[OutboundClient]
):
    guarded = await _client(clients, "")
    before = len(server.requests)
    # The IP literal: refused before connecting (aiohttp would skip any resolver for it).
    with pytest.raises(OutboundRefused, match="loopback"):
        await _get(guarded, f"{server.origin}/literal")
    # A name that resolves to it: refused by the resolver, at connect time.
    with pytest.raises(aiohttp.ClientConnectorDNSError) as caught:
        await _get(guarded, f"http://localhost:{server.port}/name")
    assert isinstance(refusal(caught.value), OutboundRefused)
    assert "OUTBOUND_ALLOWLIST" in str(refusal(caught.value))
    assert "127.0.0.1" not in str(refusal(caught.value))  # nothing about what it resolved to
    # The hex form goes to the resolver in aiohttp: refused before that already.
    with pytest.raises(OutboundRefused, match="reads as the IPv4 address"):
        await _get(guarded, f"http://0x7f000001:{server.port}/hex")
    assert server.requests[before:] == []

    by_network = await _client(clients, "127.0.0.0/8")
    assert await _get(by_network, f"{server.origin}/literal") == 200
    assert await _get(by_network, f"http://localhost:{server.port}/name") == 200
    by_name = await _client(clients, "localhost")
    assert await _get(by_name, f"http://localhost:{server.port}/by-name") == 200
    with pytest.raises(OutboundRefused):  # the name is allowed, not the address
        await _get(by_name, f"{server.origin}/literal")
    assert server.requests[before:] == ["/literal", "/name", "/by-name"]


class ScriptedDNS(AbstractResolver):
    """Stands in for a DNS server (none can run offline): answers `name` with the next list
    of addresses in `answers`, and counts the questions."""

    def __init__(self, name: str, *answers: list[str]) -> None:
        self.name, self.answers, self.asked = name, list(answers), 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self.name:
            raise OSError(f"{host} is not known here")
        self.asked += 1
        addresses = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


async def test_a_name_is_refused_if_any_address_is_and_only_checked_addresses_are_used(
    server: Server, clients: list[OutboundClient]
):
    before = len(server.requests)
    # One allowed answer and one refused one: refused, though aiohttp would try the first.
    mixed = ScriptedDNS("hooks.test", ["127.0.0.1", "10.0.0.7"])
    client = await _client(clients, "127.0.0.1/32", resolver=mixed)
    with pytest.raises(aiohttp.ClientConnectorDNSError) as caught:
        await _get(client, f"http://hooks.test:{server.port}/mixed")
    assert isinstance(refusal(caught.value), OutboundRefused)
    assert server.requests[before:] == []

    # Rebinding: the first answer is allowed and used; the next one, different, is checked
    # in its turn and refused, and no connection is made to it.
    rebinding = ScriptedDNS("rebind.test", ["127.0.0.1"], ["169.254.169.254"])
    client = await _client(clients, "127.0.0.1/32", resolver=rebinding)
    assert await _get(client, f"http://rebind.test:{server.port}/first") == 200
    connector = client._direct.connector if client._direct else None
    assert isinstance(connector, aiohttp.TCPConnector)
    connector.clear_dns_cache()  # (a cached answer is one that was checked when given)
    with pytest.raises(aiohttp.ClientConnectorDNSError) as caught:
        await _get(client, f"http://rebind.test:{server.port}/second")
    assert "may not be reached" in str(refusal(caught.value))
    assert rebinding.asked == 2
    assert server.requests[before:] == ["/first"]


async def test_redirects_are_answers_not_followed(server: Server, clients: list[OutboundClient]):
    client = await _client(clients, "127.0.0.1/32")
    before = len(server.requests)
    async with client.request("GET", f"{server.origin}/redirect") as response:
        assert response.status == 302
    assert server.requests[before:] == ["/redirect"]


async def test_through_a_proxy_the_url_is_still_checked_and_the_private_proxy_is_reached(
    server: Server, clients: list[OutboundClient], monkeypatch: pytest.MonkeyPatch
):
    """The proxy (here on 127.0.0.1, refused by the default policy) is the operator's: it is
    reached. The target's name is resolved by the proxy, not here; its literal address is
    still refused before anything is sent."""
    monkeypatch.setenv("HTTP_PROXY", server.origin)
    client = await _client(clients, "")
    before = len(server.requests)
    assert await _get(client, "http://hooks.example.test/via-proxy") == 200
    assert server.requests[before:] == ["http://hooks.example.test/via-proxy"]
    with pytest.raises(OutboundRefused, match="loopback"):
        await _get(client, "http://127.0.0.1:9/refused")
    with pytest.raises(OutboundRefused, match="user name or password"):
        await _get(client, "http://user:pw@hooks.example.test/")
    assert len(server.requests) == before + 1

    # NO_PROXY: the request goes direct, and the resolver judges the name again.
    monkeypatch.setenv("NO_PROXY", "localhost")
    with pytest.raises(aiohttp.ClientConnectorDNSError):
        await _get(client, f"http://localhost:{server.port}/direct")
    assert len(server.requests) == before + 1
