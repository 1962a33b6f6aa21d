"""Assemble a running coordinator from its kit: mTLS server, authenticator, store, runner."""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from biofed.coordinator._agreements import AgreementKeeper
from biofed.coordinator._job_limits import JobLimits
from biofed.coordinator._scheduler import DEFAULT_MAX_CONCURRENT_RUNS
from biofed.coordinator._service import Coordinator
from biofed.coordinator._store import StateStore, open_store
from biofed.coordinator._tracking import TrackingConfig
from biofed.coordinator._trusted import trusted_data_from_kit
from biofed.core import ConfigurationError, PolicyViolation
from biofed.governance import LOG_FILE, AuditLog, AuditSigner
from biofed.identity import Kit, RevocationList, identify_peer, load_kit
from biofed.transport.grpc import CoordinatorServer, NodeHub, Peer, TlsConfig

_CACHE_SECONDS = 30.0


class KitAuthenticator:
    """Maps a client certificate to its :class:`Peer`, refusing revoked and foreign ones.

    Security notes
    --------------
    Every RPC is authenticated (the TLS handshake already verified the chain). Results are
    cached per certificate for at most 30 s and only while the CRL is unchanged, so a
    revocation takes effect on the next RPC after the CRL file is replaced, and an expiry at
    most 30 s late.
    """

    def __init__(self, kit: Kit) -> None:
        if kit.crl_path is None:
            raise ConfigurationError(f"coordinator kit {kit.directory} has no crl.pem")
        self._ca = kit.ca_pem
        self._crl = RevocationList(kit.crl_path, kit.ca_pem)
        self._cache: dict[bytes, tuple[Peer, bytes, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, certificate: bytes) -> Peer:
        crl = self._crl.pem()
        crl_digest = hashlib.sha256(crl).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(certificate)
        if hit is not None and hit[1] == crl_digest and now - hit[2] < _CACHE_SECONDS:
            return hit[0]
        identity = identify_peer(certificate, self._ca, crl_pem=crl)
        peer = Peer(name=identity.name, role=identity.role)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[certificate] = (peer, crl_digest, now)
        return peer


@dataclass(slots=True)
class RunningCoordinator:
    """A started coordinator: stop it with :meth:`stop`."""

    coordinator: Coordinator
    server: CoordinatorServer
    store: StateStore
    address: str

    def stop(self) -> None:
        """Stop the runner (after its current round), the server and the store."""
        self.coordinator.stop()
        self.server.stop()
        self.store.close()


def tls_of(kit: Kit) -> TlsConfig:
    """The TLS material of a kit."""
    return TlsConfig(
        certificate_chain=kit.cert_pem, private_key=kit.key_pem, root_certificates=kit.ca_pem
    )


def agreement_keeper(kit: Kit) -> AgreementKeeper:
    """The keeper of verified study agreements in the coordinator's kit (``agreements/``)."""
    if kit.crl_path is None:
        raise ConfigurationError(f"coordinator kit {kit.directory} has no crl.pem")
    crl = RevocationList(kit.crl_path, kit.ca_pem)
    return AgreementKeeper(
        kit.directory / "agreements",
        ca_pem=kit.ca_pem,
        crl=crl.pem,
        coordinator=kit.name,
        coordinator_pem=kit.cert_pem,
    )


def serve_coordinator(
    kit_dir: str | Path,
    *,
    listen: str | None = None,
    state: str | None = None,
    heartbeat_interval: float = 2.0,
    node_wait: float = 60.0,
    max_concurrent_runs: int | None = None,
) -> RunningCoordinator:
    """Start the coordinator of the kit in ``kit_dir`` (returns once it is serving).

    The state store is checked first (:func:`~biofed.coordinator.open_store` refuses a
    damaged or foreign one), so a coordinator either serves with a sound store or does not
    start. ``max_concurrent_runs`` defaults to the kit's (``kit.toml``), else 4.
    """
    kit = load_kit(kit_dir)
    if kit.role != "coordinator":
        raise PolicyViolation(f"kit {kit_dir} belongs to a {kit.role}, not the coordinator")
    address = listen or kit.listen
    url = state or kit.state
    if not address or not url:
        raise ConfigurationError("the coordinator needs a listen address and a state URL")
    limits = JobLimits.from_kit(kit.directory)  # [limits] in kit.toml, before opening anything
    trusted = trusted_data_from_kit(kit.directory)  # [trusted_data]: name → file
    tracking = TrackingConfig.from_kit(kit.directory)  # [tracking]: MLflow, or None
    store = open_store(url)
    audit = AuditLog(kit.directory / LOG_FILE, AuditSigner.from_kit(kit))
    concurrent = max_concurrent_runs or kit.max_concurrent_runs or DEFAULT_MAX_CONCURRENT_RUNS
    coordinator = Coordinator(
        store,
        hub=functools.partial(NodeHub, heartbeat_interval=heartbeat_interval),
        node_wait=node_wait,
        audit=audit,
        bundles_dir=kit.directory / "bundles",
        max_concurrent_runs=concurrent,
        limits=limits,
        agreements=agreement_keeper(kit),
        trusted_data=trusted,
        tracking=tracking,
    )
    try:
        server = CoordinatorServer(
            address, tls_of(kit), KitAuthenticator(kit), coordinator.hub, control=coordinator
        ).start()
    except BaseException:
        store.close()
        raise
    coordinator.start()
    host = address.rsplit(":", 1)[0]
    return RunningCoordinator(
        coordinator=coordinator, server=server, store=store, address=f"{host}:{server.port}"
    )
