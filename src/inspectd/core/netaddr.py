"""Which addresses reach only this machine: the one rule that the secure defaults share (the collector's bind, the
line PC's collector endpoint, the PLC server's listen address and write allow-list)."""

from __future__ import annotations

import ipaddress
import re

_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/\s]+):(?P<port>\d{1,5}|\*)$")


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; False for everything else (0.0.0.0, *, names, interfaces)."""
    host = host.strip().strip("[]").split("%", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


def endpoint_is_local(endpoint: str) -> bool:
    """A ZeroMQ endpoint that only this machine can reach: ipc://, inproc://, or tcp:// on a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    m = _TCP.match(endpoint)
    return m is not None and is_loopback_host(m.group("host"))


def normalise_ip(text: str) -> str:
    """An address as the allow-lists compare it: IPv4-mapped IPv6 as IPv4, zone ids dropped."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)
