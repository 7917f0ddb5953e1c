"""Where a webhook may go: http(s) URLs whose host resolves only to public addresses.

A URL is checked when a job is submitted (a refusal is a 422) and again, with a fresh DNS
lookup, at every attempt; the attempt then connects to an address that passed the check (see
`shared.webhooks.delivery`), so a DNS answer that changes in between (rebinding) cannot send
it to a private address. `ATELIER_WEBHOOK_ALLOW_NETWORKS` lets an operator allow chosen
non-public networks (a receiver on the same host or LAN).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}


class RefusedURL(ValueError):
    """The URL is malformed or leads somewhere a webhook may not go; the message says why."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (`addresses`, all allowed) and what to ask for."""

    scheme: str
    host: str              # as written in the URL (lower case, IPv6 without brackets): Host header and TLS name
    port: int
    request_target: str    # path and query
    addresses: tuple[IPAddress, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_networks(raw: str) -> tuple[Network, ...]:
    """`ATELIER_WEBHOOK_ALLOW_NETWORKS`: comma-separated CIDRs, e.g. `127.0.0.0/8,10.1.0.0/16`."""
    try:
        return tuple(ipaddress.ip_network(part.strip()) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"ATELIER_WEBHOOK_ALLOW_NETWORKS: {exc}") from None


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: not loopback, private, link-local, multicast, reserved or
    unspecified. IPv4 carried inside IPv6 (mapped `::ffff:a.b.c.d`, 6to4 `2002::/16`) is judged as IPv4."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        if address.sixtofour is not None and not is_public(address.sixtofour):
            return False
    return address.is_global and not (address.is_private or address.is_loopback or address.is_link_local
                                      or address.is_multicast or address.is_reserved or address.is_unspecified)


def is_allowed(address: IPAddress, allow: tuple[Network, ...] = ()) -> bool:
    """Public, or inside a network the operator allowed (a mapped IPv4 address counts as IPv4)."""
    forms = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        forms.append(address.ipv4_mapped)
    return is_public(address) or any(form in network for form in forms for network in allow)


def parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of an absolute http(s) URL, or RefusedURL."""
    if not isinstance(url, str) or not url:
        raise RefusedURL("must be an absolute http(s) URL")
    if len(url) > MAX_URL_LENGTH:
        raise RefusedURL(f"must be at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7f for c in url):
        raise RefusedURL("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedURL(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise RefusedURL(f"must use http or https, not {scheme or 'no scheme'}")
    if not parts.hostname:
        raise RefusedURL("has no host")
    if parts.username is not None or parts.password is not None:
        raise RefusedURL("must not carry credentials")
    if parts.fragment:
        raise RefusedURL("must not have a fragment")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme], target


def resolve(url: str, allow: tuple[Network, ...] = ()) -> Target:
    """Check the URL, resolve its host, and require every address to be allowed."""
    scheme, host, port, request_target = parse_url(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RefusedURL(f"host {host!r} does not resolve ({exc})") from None
    addresses = tuple(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    refused = [str(a) for a in addresses if not is_allowed(a, allow)]
    if not addresses or refused:
        raise RefusedURL(f"host {host!r} resolves to a non-public address ({', '.join(refused) or 'none'})")
    return Target(scheme, host, port, request_target, addresses)
