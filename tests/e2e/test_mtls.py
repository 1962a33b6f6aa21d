"""Every RPC of the coordinator refuses a peer without a valid consortium certificate.

Each of the ten RPCs (NodeService: Connect, SendReply, Heartbeat; ControlService: SubmitRun,
GetRun, ListRuns, WatchRun, CancelRun, DownloadResult, ListNodes) is called raw, through the
generated stubs, with four kinds of bad credentials:

- no client certificate at all;
- a certificate from another consortium's CA (same consortium name, same participant name);
- an expired certificate issued by the right CA;
- a revoked certificate (accepted just before the revocation).

Each must be refused at the TLS handshake (UNAVAILABLE) or by the authenticator before any
handler runs (UNAUTHENTICATED). Then the role checks: a site may not use ControlService and a
researcher may not use NodeService (PERMISSION_DENIED). Throughout, a real run waits on the
coordinator; no refused call may cancel it, add a run, or open a node session.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from biofed.coordinator import RunningCoordinator
from biofed.identity import Consortium, load_kit
from biofed.transport.grpc import TlsConfig
from biofed.transport.grpc._gen import federation_pb2 as pb
from biofed.transport.grpc._gen import federation_pb2_grpc as pb_grpc

from .conftest import Federation, RawNode, hello, job, raw_channel, tls_from, wait_for

pytestmark = pytest.mark.slow

_TIMEOUT = 10.0
_REFUSED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED}
_Call = Callable[[grpc.Channel, str], Any]


# -- the ten RPCs, called raw ----------------------------------------------------------------


def _connect(channel: grpc.Channel, run_id: str) -> Any:
    """Connect with a hello that declares a dataset; the stream stays open until the first
    message from the coordinator (or the refusal) arrives."""
    opened = threading.Event()

    def requests() -> Iterator[pb.NodeMessage]:
        yield hello("intruder", [("tcga-brca", 100, 39)])
        opened.wait(_TIMEOUT)

    stream = pb_grpc.NodeServiceStub(channel).Connect(requests(), timeout=_TIMEOUT)
    try:
        return next(stream)
    finally:
        opened.set()
        stream.cancel()


def _send_reply(channel: grpc.Channel, run_id: str) -> Any:
    header = pb.ReplyHeader(transfer_id="0" * 32, run_id=run_id, round=1, kind="train")
    return pb_grpc.NodeServiceStub(channel).SendReply(
        iter([pb.ReplyChunk(header=header)]), timeout=_TIMEOUT
    )


def _heartbeat(channel: grpc.Channel, run_id: str) -> Any:
    return pb_grpc.NodeServiceStub(channel).Heartbeat(
        pb.HeartbeatRequest(session_id="intruder"), timeout=_TIMEOUT
    )


def _control(method: str, request: Callable[[str], Any], *, stream: bool = False) -> _Call:
    def call(channel: grpc.Channel, run_id: str) -> Any:
        fn = getattr(pb_grpc.ControlServiceStub(channel), method)
        result = fn(request(run_id), timeout=_TIMEOUT)
        return list(result) if stream else result

    return call


_SPEC = job(name="intruder", rounds=1).to_json()

NODE_RPCS: dict[str, _Call] = {
    "Connect": _connect,
    "SendReply": _send_reply,
    "Heartbeat": _heartbeat,
}
CONTROL_RPCS: dict[str, _Call] = {
    "SubmitRun": _control("SubmitRun", lambda r: pb.SubmitRunRequest(spec_json=_SPEC.encode())),
    "GetRun": _control("GetRun", lambda r: pb.RunRequest(run_id=r)),
    "ListRuns": _control("ListRuns", lambda r: pb.ListRunsRequest()),
    "WatchRun": _control(
        "WatchRun", lambda r: pb.WatchRunRequest(run_id=r, follow=False), stream=True
    ),
    "CancelRun": _control("CancelRun", lambda r: pb.RunRequest(run_id=r)),
    "DownloadResult": _control("DownloadResult", lambda r: pb.RunRequest(run_id=r), stream=True),
    "ListNodes": _control("ListNodes", lambda r: pb.ListNodesRequest()),
}
_ALL_RPCS = [*NODE_RPCS, *CONTROL_RPCS]
_LATE = "late-revoked"  # a site revoked while connected (the last test)


def _rpc(name: str) -> tuple[str, _Call]:
    """(the role that would legitimately call it, the call)."""
    if name in NODE_RPCS:
        return "site", NODE_RPCS[name]
    return "researcher", CONTROL_RPCS[name]


def _call_with(address: str, tls: TlsConfig | None, root: bytes, call: _Call, run_id: str) -> Any:
    channel = raw_channel(address, tls, root_pem=root)
    try:
        return call(channel, run_id)
    finally:
        channel.close()


def _error_of(address: str, tls: TlsConfig | None, root: bytes, call: _Call, run_id: str) -> Any:
    with pytest.raises(grpc.RpcError) as info:
        _call_with(address, tls, root, call, run_id)
    return info.value


# -- fixtures --------------------------------------------------------------------------------


@dataclass
class _Setup:
    federation: Federation
    running: RunningCoordinator
    run_id: str
    root: bytes
    bad: dict[str, dict[str, TlsConfig | None]]  # kind → role ("site"/"researcher") → tls


def _foreign(other: Consortium, name: str, ours: bytes) -> TlsConfig:
    """``name``'s certificate and key from ``other`` (trusting *our* CA for the server, so
    it is the coordinator that must refuse the client certificate)."""
    kit = load_kit(other.kit_directory(name))
    return TlsConfig(
        certificate_chain=kit.cert_pem, private_key=kit.key_pem, root_certificates=ours
    )


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, site_files: dict[str, Path]
) -> Iterator[_Setup]:
    federation = Federation(
        tmp_path_factory.mktemp("mtls"),
        site_files,
        sites=["center-0"],
        extra_sites=["revoked-site"],
        researchers=["researcher", "revoked-researcher"],
    )
    try:
        running = federation.start_coordinator(node_wait=600.0)
        ca = federation.consortium.ca
        root = ca.ca_pem
        # A real run, waiting for a site that never connects: what GetRun, CancelRun… name.
        run_id = (
            federation.control()
            .submit_run(job(rounds=1, min_nodes=1, min_replies=1).to_json())
            .run_id
        )
        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
        expired: dict[str, TlsConfig | None] = {
            role: tls_from(
                ca.issue(
                    f"expired-{role}", role, not_before=past, not_after=past + dt.timedelta(days=1)
                )
            )
            for role in ("site", "researcher")
        }
        other = Consortium.create(
            tmp_path_factory.mktemp("other") / "c",
            consortium="biofed-e2e",  # same name, same participants: only the CA differs
            coordinator=federation.address,
            sites=["center-0"],
            researchers=["researcher"],
        )
        foreign: dict[str, TlsConfig | None] = {
            "site": _foreign(other, "center-0", root),
            "researcher": _foreign(other, "researcher", root),
        }
        revoked: dict[str, TlsConfig | None] = {
            "site": federation.tls("revoked-site"),
            "researcher": federation.tls("revoked-researcher"),
        }
        # Accepted before the revocation, so the refusals below are the revocation's doing:
        # Heartbeat passes authentication and then names an unknown session…
        error = _error_of(federation.address, revoked["site"], root, _heartbeat, run_id)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        # … and ListRuns answers (with nothing: the run is another researcher's).
        info = _call_with(
            federation.address, revoked["researcher"], root, CONTROL_RPCS["ListRuns"], run_id
        )
        assert list(info.runs) == []
        federation.consortium.revoke("revoked-site")
        federation.consortium.revoke("revoked-researcher")
        yield _Setup(
            federation=federation,
            running=running,
            run_id=run_id,
            root=root,
            bad={
                "no-certificate": {"site": None, "researcher": None},
                "foreign-ca": foreign,
                "expired": expired,
                "revoked": revoked,
            },
        )
    finally:
        federation.close()


def _assert_untouched(setup: _Setup) -> None:
    """No refused call reached a handler: one run, still waiting; no node session."""
    runs = setup.running.store.list_runs()
    assert [r.run_id for r in runs] == [setup.run_id]
    assert runs[0].status.value in ("pending", "running")
    assert [s.node_id for s in setup.running.coordinator.hub.sessions()] in ([], [_LATE])
    assert {n.node_id for n in setup.running.store.list_nodes()} <= {_LATE}
    kinds = [e.kind for e in setup.running.store.events(setup.run_id, after_seq=0)]
    assert "cancel_requested" not in kinds


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["no-certificate", "foreign-ca", "expired", "revoked"])
@pytest.mark.parametrize("rpc", _ALL_RPCS)
def test_bad_certificate_is_refused_before_any_handler(setup: _Setup, kind: str, rpc: str) -> None:
    role, call = _rpc(rpc)
    error = _error_of(
        setup.federation.address, setup.bad[kind][role], setup.root, call, setup.run_id
    )
    assert error.code() in _REFUSED, f"{rpc} with {kind}: {error.code()} {error.details()}"
    if kind == "revoked":  # the handshake passes; the authenticator must name the reason
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in error.details()
    _assert_untouched(setup)


@pytest.mark.parametrize("rpc", list(CONTROL_RPCS))
def test_site_certificate_may_not_use_control_service(setup: _Setup, rpc: str) -> None:
    tls = setup.federation.tls("center-0")
    error = _error_of(setup.federation.address, tls, setup.root, CONTROL_RPCS[rpc], setup.run_id)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    _assert_untouched(setup)


@pytest.mark.parametrize("rpc", list(NODE_RPCS))
def test_researcher_certificate_may_not_use_node_service(setup: _Setup, rpc: str) -> None:
    tls = setup.federation.tls("researcher")
    error = _error_of(setup.federation.address, tls, setup.root, NODE_RPCS[rpc], setup.run_id)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    _assert_untouched(setup)


@pytest.mark.parametrize("name", ["coordinator", "admin"])
def test_coordinator_and_admin_certificates_may_not_connect_as_a_node(
    setup: _Setup, name: str
) -> None:
    tls = setup.federation.tls(name)
    error = _error_of(setup.federation.address, tls, setup.root, _connect, setup.run_id)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    _assert_untouched(setup)


def test_valid_certificates_still_work_after_the_refusals(setup: _Setup) -> None:
    """The refusals left the coordinator serving: the researcher sees the run untouched."""
    client = setup.federation.control()
    run = client.get_run(setup.run_id)
    assert run.status in ("pending", "running")
    assert [r.run_id for r in client.list_runs()] == [setup.run_id]
    assert {n.node_id for n in client.list_nodes()} <= {_LATE}
    _assert_untouched(setup)


def test_a_node_revoked_while_connected_is_refused_and_dropped(setup: _Setup) -> None:
    """Revocation also bites a node that connected before it: its next RPCs are refused and
    it leaves the live sessions (gets no more instructions) once its heartbeats stop
    counting."""
    federation = setup.federation
    federation.consortium.add(_LATE, "site")
    hub = setup.running.coordinator.hub
    # It declares no dataset, so the waiting run never selects it.
    node = RawNode(federation.address, federation.tls(_LATE), datasets=(), heartbeat=0.2)
    try:
        wait_for(
            lambda: any(s.node_id == _LATE for s in hub.sessions()),
            timeout=10,
            what="the node's session",
        )
        federation.consortium.revoke(_LATE)
        for call in (_heartbeat, _send_reply):
            with pytest.raises(grpc.RpcError) as info:
                call(node.channel, setup.run_id)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        wait_for(
            lambda: all(s.node_id != _LATE for s in hub.sessions()),
            timeout=10,
            what="the revoked node to leave the live sessions",
        )
    finally:
        node.close()
