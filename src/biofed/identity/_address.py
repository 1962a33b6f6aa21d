"""Host names and ``HOST:PORT`` addresses as they appear in certificates and kit files."""

from __future__ import annotations

import ipaddress
import re

from biofed.core import ConfigurationError

DEFAULT_PORT = 7443
"""The coordinator's port when an address names none."""

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def check_host(host: str) -> str:
    """Return ``host`` if it is an IP address or a DNS host name, else raise ConfigurationError."""
    if not isinstance(host, str) or not host:
        raise ConfigurationError(f"host must be a DNS name or an IP address, got {host!r}")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ConfigurationError(
            f"host must be a DNS name (letters, digits and '-' between dots) or an IP address, "
            f"got {host!r}"
        )
    return host.rstrip(".").lower()


def is_ip(host: str) -> bool:
    """Whether ``host`` parses as an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_address(value: str, *, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``HOST[:PORT]`` (IPv6 as ``[ADDR]:PORT`` or a bare ``ADDR``) into host and port."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"address must look like HOST[:PORT], got {value!r}")
    value = value.strip()
    port_text: str | None = None
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")) or not is_ip(host):
            raise ConfigurationError(f"address must look like [IPV6]:PORT, got {value!r}")
        port_text = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif value.count(":") == 0 or is_ip(value):
        host = value
    else:
        raise ConfigurationError(f"address must look like HOST[:PORT], got {value!r}")
    port = default_port
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ConfigurationError(f"port must be a number in 1-65535, got {port_text!r}")
        port = int(port_text)
    return check_host(host), port


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
