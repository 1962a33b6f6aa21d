"""Who may see what, through the real ControlService over mutual TLS.

Two researchers (alice, bob), a third who shares nothing (carol), the consortium's admin and
a site call EVERY ControlService method on each other's runs: a private run of alice, a run
alice shared through a study agreement naming alice and bob, and a private run of bob. The
threat is broken object-level authorization (OWASP API1:2023 BOLA / IDOR): a refusal is
PERMISSION_DENIED, and the answer for somebody else's run is the very same as for a run that
does not exist, naming no run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from biofed.core import PolicyViolation, decode_parameters
from biofed.governance import OutputPolicy, Party, SignedAgreement, StudyAgreement, sign
from biofed.identity import Kit, load_kit
from biofed.transport.grpc._gen import federation_pb2 as pb
from biofed.transport.grpc._gen import federation_pb2_grpc as pb_grpc

from .conftest import Federation, job, raw_channel, wait_for, wait_online, wait_terminal

pytestmark = pytest.mark.slow

SITES = ("center-0", "center-1")
AGREEMENT = "shared-study"
DENIED = "no run with that id is visible to you"


def _party(kit: Kit) -> Party:
    return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)


def _agreement(fed: Federation, researchers: tuple[str, ...], **changes: Any) -> StudyAgreement:
    kits = {n: load_kit(fed.kit(n)) for n in ("coordinator", *SITES, *researchers)}
    base = StudyAgreement(
        agreement_id=AGREEMENT,
        title="Shared survival study",
        purpose="Train a Cox model together.",
        legal_basis="GDPR Art. 9(2)(j)",
        consortium="biofed-e2e",
        coordinator=_party(kits["coordinator"]),
        parties=tuple(_party(kits[n]) for n in (*SITES, *researchers)),
        datasets={s: "tcga-brca" for s in SITES},
        approved_bundles=(),
        outputs=OutputPolicy(metrics=("c_index",), per_site_metrics=True),
        expires=dt.date(2099, 12, 31),
    )
    return dataclasses.replace(base, **changes)


def _signed(fed: Federation, agreement: StudyAgreement, signers: tuple[str, ...]) -> bytes:
    signed = SignedAgreement(agreement=agreement)
    for name in signers:
        signed = sign(signed, load_kit(fed.kit(name)))
    return signed.to_toml().encode()


def _certificates(fed: Federation, names: tuple[str, ...]) -> dict[str, bytes]:
    return {n: (fed.kit(n) / "cert.pem").read_bytes() for n in names}


class Caller:
    """One participant's raw ControlService stub: every answer is (status code, details)."""

    def __init__(self, fed: Federation, name: str) -> None:
        self.name = name
        self.channel = raw_channel(fed.address, fed.tls(name))
        self.stub = pb_grpc.ControlServiceStub(self.channel)

    def _status(self, fn: Callable[[], Any]) -> tuple[grpc.StatusCode, Any]:
        try:
            return grpc.StatusCode.OK, fn()
        except grpc.RpcError as exc:
            return exc.code(), exc.details()

    def get(self, run_id: str) -> tuple[grpc.StatusCode, Any]:
        return self._status(lambda: self.stub.GetRun(pb.RunRequest(run_id=run_id), timeout=10))

    def watch(self, run_id: str) -> tuple[grpc.StatusCode, Any]:
        request = pb.WatchRunRequest(run_id=run_id)
        return self._status(lambda: list(self.stub.WatchRun(request, timeout=10)))

    def result(self, run_id: str) -> tuple[grpc.StatusCode, Any]:
        request = pb.RunRequest(run_id=run_id)
        return self._status(
            lambda: b"".join(c.data for c in self.stub.DownloadResult(request, timeout=10))
        )

    def cancel(self, run_id: str) -> tuple[grpc.StatusCode, Any]:
        return self._status(lambda: self.stub.CancelRun(pb.RunRequest(run_id=run_id), timeout=10))

    def list(self) -> tuple[grpc.StatusCode, Any]:
        return self._status(
            lambda: {r.run_id for r in self.stub.ListRuns(pb.ListRunsRequest(), timeout=10).runs}
        )

    def nodes(self) -> tuple[grpc.StatusCode, Any]:
        return self._status(
            lambda: {
                n.node_id for n in self.stub.ListNodes(pb.ListNodesRequest(), timeout=10).nodes
            }
        )

    def submit(self, spec_json: str, **fields: Any) -> tuple[grpc.StatusCode, Any]:
        request = pb.SubmitRunRequest(spec_json=spec_json.encode(), **fields)
        return self._status(lambda: self.stub.SubmitRun(request, timeout=10))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, site_files: Any) -> Iterator[dict[str, Any]]:
    """A coordinator, two site nodes and three finished runs (module-scoped: built once)."""
    fed = Federation(
        tmp_path_factory.mktemp("access"),
        site_files,
        sites=SITES,
        researchers=("alice", "bob", "carol"),
    )
    try:
        fed.start_coordinator()
        for site in SITES:
            fed.start_node(site)
        admin = fed.control("admin")
        wait_online(admin, SITES)
        shared = _agreement(fed, ("alice", "bob"))
        signers = ("coordinator", *SITES, "alice", "bob")
        signed = _signed(fed, shared, signers)
        certificates = _certificates(fed, signers)
        small = {"rounds": 1, "train": {"local_steps": 3}}
        alice, bob = fed.control("alice"), fed.control("bob")
        runs = {
            "a_private": alice.submit_run(job(name="a-private", **small).to_json()).run_id,
            "a_shared": alice.submit_run(
                job(name="a-shared", agreement=AGREEMENT, **small).to_json(),
                agreement=signed,
                certificates=certificates,
            ).run_id,
            "b_private": bob.submit_run(job(name="b-private", **small).to_json()).run_id,
        }
        for run_id in runs.values():
            assert wait_terminal(admin, run_id, timeout=120) == "finished", run_id
        callers = {n: Caller(fed, n) for n in ("alice", "bob", "carol", "admin", "center-0")}
        yield {"fed": fed, "runs": runs, "callers": callers, "signers": signers}
        for caller in callers.values():
            caller.channel.close()
    finally:
        fed.close()


#: Who may read which run: the owner, the agreement's researchers, the admin.
READERS = {
    "a_private": {"alice", "admin"},
    "a_shared": {"alice", "bob", "admin"},
    "b_private": {"bob", "admin"},
}
PEOPLE = ("alice", "bob", "carol", "admin")


def _assert_denied(answer: tuple[grpc.StatusCode, Any], runs: dict[str, str]) -> None:
    code, details = answer
    assert code == grpc.StatusCode.PERMISSION_DENIED, answer
    assert details == f"policy: {DENIED}", details
    assert not any(run_id in details for run_id in runs.values())


@pytest.mark.parametrize("method", ["get", "watch", "result"])
@pytest.mark.parametrize("who", PEOPLE)
def test_reading_a_run_follows_owner_agreement_and_admin(
    world: dict[str, Any], method: str, who: str
) -> None:
    runs, caller = world["runs"], world["callers"][who]
    for label, run_id in runs.items():
        answer = getattr(caller, method)(run_id)
        if who in READERS[label]:
            assert answer[0] == grpc.StatusCode.OK, (label, answer)
            if method == "get":
                assert answer[1].run_id == run_id
                assert answer[1].status == "finished"
            elif method == "watch":
                assert any(e.kind == "finished" for e in answer[1])
            else:
                assert decode_parameters(answer[1]), "an empty model"
        else:
            _assert_denied(answer, runs)


@pytest.mark.parametrize("method", ["get", "watch", "result", "cancel"])
@pytest.mark.parametrize("who", PEOPLE)
def test_a_missing_run_and_a_hidden_run_get_the_same_answer(
    world: dict[str, Any], method: str, who: str
) -> None:
    runs, caller = world["runs"], world["callers"][who]
    missing = getattr(caller, method)("e2e-0000beef")
    if who == "admin":
        assert missing[0] == grpc.StatusCode.PERMISSION_DENIED  # admin sees all: none such
    _assert_denied(missing, runs)
    hidden = [label for label, readers in READERS.items() if who not in readers]
    for label in hidden:
        assert getattr(caller, method)(runs[label]) == missing


@pytest.mark.parametrize("who", PEOPLE)
def test_list_shows_only_the_runs_one_may_see(world: dict[str, Any], who: str) -> None:
    runs = world["runs"]
    code, listed = world["callers"][who].list()
    assert code == grpc.StatusCode.OK
    expected = {runs[label] for label, readers in READERS.items() if who in readers}
    if who == "admin":
        assert expected <= listed
    else:
        assert listed == expected


def test_only_the_owner_or_an_admin_may_cancel(world: dict[str, Any]) -> None:
    fed, runs, callers = world["fed"], world["runs"], world["callers"]
    # a reader through the agreement may not cancel, and is told why (it knows the run)
    code, details = callers["bob"].cancel(runs["a_shared"])
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "only the run's submitter or an admin" in details
    # the owner and the admin get past access control (the run has ended: nothing to do)
    for who in ("alice", "admin"):
        code, details = callers[who].cancel(runs["a_shared"])
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (who, details)
        assert "already ended" in details
    # a live run: its owner's colleague cannot stop it, the admin can
    waiting = fed.control("alice").submit_run(
        job(name="a-waiting", min_nodes=5, min_replies=5).to_json()
    )
    _assert_denied(callers["bob"].cancel(waiting.run_id), runs)
    _assert_denied(callers["carol"].cancel(waiting.run_id), runs)
    assert callers["admin"].cancel(waiting.run_id)[0] == grpc.StatusCode.OK
    admin = fed.control("admin")
    assert wait_terminal(admin, waiting.run_id, timeout=60) == "cancelled"
    events = [e.message for e in admin.watch_run(waiting.run_id) if e.kind == "cancel_requested"]
    assert events == ["by admin"]


def test_a_site_reaches_no_control_method(world: dict[str, Any]) -> None:
    runs, site = world["runs"], world["callers"]["center-0"]
    run_id = runs["a_shared"]
    answers = [
        site.get(run_id),
        site.watch(run_id),
        site.result(run_id),
        site.cancel(run_id),
        site.list(),
        site.nodes(),
        site.submit(job(name="by-a-site").to_json()),
    ]
    for code, details in answers:
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
        assert run_id not in details


@pytest.mark.parametrize("who", PEOPLE)
def test_researchers_and_the_admin_list_the_sites(world: dict[str, Any], who: str) -> None:
    code, nodes = world["callers"][who].nodes()
    assert code == grpc.StatusCode.OK
    assert set(SITES) <= nodes


def test_submitting_under_an_agreement_is_checked(world: dict[str, Any]) -> None:
    fed, callers, signers = world["fed"], world["callers"], world["signers"]
    spec = job(name="under-agreement", agreement=AGREEMENT, rounds=1).to_json()
    signed = _signed(fed, _agreement(fed, ("alice", "bob")), signers)
    certificates = _certificates(fed, signers)
    # carol is not one of its researchers, with or without the file
    code, details = callers["carol"].submit(spec, agreement=signed, certificates=certificates)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "does not name 'carol' as a researcher" in details
    assert callers["carol"].submit(spec)[0] == grpc.StatusCode.PERMISSION_DENIED
    # another text under the same id (here: carol added, all signed) is refused
    widened = _agreement(fed, ("alice", "bob", "carol"))
    resigned = _signed(fed, widened, (*signers, "carol"))
    code, details = callers["carol"].submit(
        spec, agreement=resigned, certificates=_certificates(fed, (*signers, "carol"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "already kept here with other content" in details
    # an agreement the coordinator never saw must come with the job, signed by everyone
    other = dataclasses.replace(_agreement(fed, ("alice",)), agreement_id="other-study")
    other_spec = job(name="other", agreement="other-study", rounds=1).to_json()
    code, details = callers["alice"].submit(other_spec)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "--agreement" in details
    unsigned = _signed(fed, other, ("coordinator", "alice"))
    code, details = callers["alice"].submit(
        other_spec, agreement=unsigned, certificates=certificates
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "not in force" in details
    # a mismatch between the job and the file
    code, details = callers["alice"].submit(other_spec, agreement=signed, certificates=certificates)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "the job names 'other-study'" in details
    # bob may run under the kept agreement without sending it again; alice then sees it
    code, info = callers["bob"].submit(spec)
    assert code == grpc.StatusCode.OK, info
    assert callers["alice"].get(info.run_id)[0] == grpc.StatusCode.OK
    _assert_denied(callers["carol"].get(info.run_id), world["runs"])
    wait_for(
        lambda: callers["admin"].get(info.run_id)[1].status in ("finished", "failed"),
        timeout=120,
        what="the run under the kept agreement to end",
    )


def test_the_client_library_raises_policy_violation(world: dict[str, Any]) -> None:
    client = world["fed"].control("carol")
    with pytest.raises(PolicyViolation, match=DENIED):
        client.get_run(world["runs"]["a_private"])
