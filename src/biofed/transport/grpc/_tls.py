"""Mutual-TLS plumbing shared by the coordinator server and the clients.

Security notes
--------------
Threat: a network attacker, or a party outside the consortium, talks to the coordinator or
impersonates it. Every channel is TLS 1.2+ with client certificates required
(``require_client_auth=True``): a peer without a certificate chaining to the consortium CA
fails the handshake (RFC 8446 §4.4.2 / gRPC's BoringSSL). Beyond the handshake, each RPC
asks an injected authenticator to map the verified certificate to an identity (and to check
revocation), so a node's identity always comes from its certificate, never from a message
field. There is no insecure mode: tests use real certificates too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from biofed.core import BiofedError, ConfigurationError, PolicyViolation

_log = logging.getLogger("biofed.transport")

#: gRPC channel/server options: messages stay small (payloads are chunked), keepalive pings
#: find dead peers, and reconnect backoff is bounded.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]
SERVER_OPTIONS: list[tuple[str, Any]] = [
    *CHANNEL_OPTIONS[:2],
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """PEM material of one participant: its chain, its private key and the consortium CA."""

    certificate_chain: bytes
    private_key: bytes
    root_certificates: bytes

    def __post_init__(self) -> None:
        for label, value in (
            ("certificate_chain", self.certificate_chain),
            ("private_key", self.private_key),
            ("root_certificates", self.root_certificates),
        ):
            if b"-----BEGIN" not in value:
                raise ConfigurationError(f"TLS {label} is not PEM data")

    def __repr__(self) -> str:  # never print key material
        return "TlsConfig(<redacted>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    """An authenticated peer: the name and role its certificate carries."""

    name: str
    role: str


#: Maps a verified client certificate (PEM) to its identity; raises PolicyViolation when the
#: certificate must be refused (revoked, wrong consortium…).
Authenticator = Callable[[bytes], Peer]


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Server credentials that require and verify a client certificate."""
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate_chain)],
        root_certificates=tls.root_certificates,
        require_client_auth=True,
    )


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """Client credentials presenting this participant's certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates,
        private_key=tls.private_key,
        certificate_chain=tls.certificate_chain,
    )


def secure_channel(target: str, tls: TlsConfig, *, server_name: str | None = None) -> grpc.Channel:
    """An mTLS channel to ``target`` (``host:port``)."""
    options = list(CHANNEL_OPTIONS)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(target, channel_credentials(tls), options=options)


def abort(context: grpc.ServicerContext, error: BaseException) -> NoReturn:
    """End an RPC with the status matching ``error`` and its message (no record data)."""
    if isinstance(error, PolicyViolation):
        code = grpc.StatusCode.PERMISSION_DENIED
    elif isinstance(error, ConfigurationError):
        code = grpc.StatusCode.INVALID_ARGUMENT
    elif isinstance(error, LookupError):
        code = grpc.StatusCode.NOT_FOUND
    elif isinstance(error, BiofedError):
        code = grpc.StatusCode.FAILED_PRECONDITION
    else:
        code = grpc.StatusCode.INTERNAL
    code_name = getattr(error, "code", "internal")
    context.abort(code, f"{code_name}: {error}")


def authenticate(context: grpc.ServicerContext, authenticator: Authenticator) -> Peer:
    """The peer of this RPC, from its verified certificate; aborts UNAUTHENTICATED if none."""
    auth = context.auth_context()
    certs: list[bytes] = list(auth.get("x509_pem_cert") or [])  # type: ignore[arg-type]
    if not certs:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
    try:
        return authenticator(bytes(certs[0]))
    except PolicyViolation as exc:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"certificate refused: {exc}")
    except BiofedError:  # the coordinator's own kit is broken: say nothing about it
        _log.exception("cannot check a client certificate")
        context.abort(grpc.StatusCode.UNAVAILABLE, "the coordinator cannot check certificates")
