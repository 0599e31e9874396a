"""Which URLs the server may call on a client's behalf (task callbacks), and how to call one
without being redirected or re-resolved somewhere else.

A URL a client sends is an instruction to make a request from inside the server's network, so
it is checked before it is accepted and again right before each call (DNS may have changed):
- http or https only, a host, no user:password part;
- the host name is resolved and *every* address must be public, unless the operator allowed it
  with --callback-allow: a CIDR ("10.0.0.0/8", "127.0.0.1") allows addresses in it, a host name
  ("hooks.internal") allows that name whatever it resolves to, and "public" allows any public
  address. Loopback, private, link-local (cloud metadata), multicast, reserved and unspecified
  addresses are refused otherwise, in every spelling (decimal "2130706433", hex, IPv4-mapped
  IPv6), because the check runs on the resolved addresses, not on the text;
- the connection goes to the address that was checked (no second resolution), with the original
  host name for the Host header and TLS verification.
Callers log `redacted(url)`: the query string and credentials often carry tokens.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
PUBLIC = "public"


class RefusedUrl(ValueError):
    """A URL the policy does not allow; the message says why (without the URL's secrets)."""


@dataclass(frozen=True)
class UrlPolicy:
    """--callback-allow, parsed: CIDRs, exact host names, and whether any public address is fine."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()
    public: bool = False

    @classmethod
    def parse(cls, entries: Sequence[str]) -> UrlPolicy:
        """Entries as given on the command line; ValueError names a malformed one."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        public = False
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == PUBLIC:
                public = True
            elif _looks_like_address(entry):
                networks.append(ipaddress.ip_network(entry, strict=False))
            elif _is_host_name(entry):
                hosts.add(entry.rstrip("."))
            else:
                raise ValueError(f"--callback-allow entry {raw!r} is not a host name, an address/CIDR or 'public'")
        return cls(tuple(networks), frozenset(hosts), public)

    @property
    def configured(self) -> bool:
        return bool(self.networks or self.hosts or self.public)

    def allows(self, host: str, address: IPAddress) -> bool:
        """Whether `address` (resolved from `host`) may be called."""
        if host in self.hosts or any(address in network for network in self.networks):
            return True
        return is_public(address)


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (the checked address) and what to ask for."""

    scheme: str
    host: str
    port: int
    address: str
    path: str  # path and query, as sent in the request line


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address (not loopback/private/link-local/multicast/reserved)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host:port (TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(url: str, policy: UrlPolicy, resolve: Resolver = system_resolver) -> Target:
    """The Target to connect to, or RefusedUrl saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedUrl(f"must be an http:// or https:// URL with a host, got {redacted(url)!r}")
    if parts.username is not None or parts.password is not None:
        raise RefusedUrl("must not contain a user name or password")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise RefusedUrl(f"has an invalid port: {exc}") from exc
    host = parts.hostname.lower().rstrip(".")
    try:
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host, port)]
    except (OSError, UnicodeError, ValueError) as exc:
        raise RefusedUrl(f"host {host!r} does not resolve: {exc}") from exc
    if not addresses:
        raise RefusedUrl(f"host {host!r} does not resolve")
    refused = [str(a) for a in addresses if not policy.allows(host, a)]
    if refused:
        raise RefusedUrl(f"host {host!r} resolves to {', '.join(refused)}, which is not a public address "
                         "(the server's --callback-allow can allow it)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, str(addresses[0]), path)


def redacted(url: str) -> str:
    """The URL without user:password and query string, for logs and error messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}" + ("?..." if parts.query else "")


def _looks_like_address(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


def _is_host_name(entry: str) -> bool:
    labels = entry.rstrip(".").split(".")
    return all(label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels)
