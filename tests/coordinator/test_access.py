"""The run access decision and the coordinator's keeper of verified study agreements.

Attacks on the keeper (each must be refused before a run exists): an agreement that does not
name the submitter, one not signed by every party, expired, signed by a since-revoked party,
naming another coordinator, a different text under a kept id, a file that is not one, and
certificates that are not. The end-to-end matrix over gRPC is ``tests/e2e/test_access.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from biofed.coordinator import (
    Checkpoint,
    Coordinator,
    InMemoryStateStore,
    JobSpec,
    RoundRecord,
    RunStatus,
)
from biofed.coordinator._access import DENIED, RunAccess
from biofed.coordinator._agreements import AgreementKeeper
from biofed.core import ConfigurationError, ParameterSet, PolicyViolation, decode_parameters
from biofed.governance import OutputPolicy, Party, SignedAgreement, StudyAgreement, sign
from biofed.identity import Consortium, Kit, load_kit
from biofed.transport.grpc import Peer

SIGNERS = ("coordinator", "a", "b", "alice", "bob")
ID = "study-1"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("access") / "c"
    Consortium.create(
        folder,
        consortium="t",
        coordinator="127.0.0.1:7443",
        sites=["a", "b", "c"],
        researchers=["alice", "bob", "carol", "mallory"],
    )
    return folder


def _kit(fed: Path, name: str) -> Kit:
    return load_kit(fed / name)


def _agreement(fed: Path, **changes: object) -> StudyAgreement:
    def party(name: str) -> Party:
        kit = _kit(fed, name)
        return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)

    base = StudyAgreement(
        agreement_id=ID,
        title="t",
        purpose="p",
        legal_basis="l",
        consortium="t",
        coordinator=party("coordinator"),
        parties=tuple(party(n) for n in SIGNERS[1:]),
        datasets={"a": "brca", "b": "brca"},
        approved_bundles=(),
        outputs=OutputPolicy(),
        expires=dt.date(2099, 1, 1),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _file(
    fed: Path,
    agreement: StudyAgreement,
    signers: tuple[str, ...] = SIGNERS,
    now: dt.datetime | None = None,
) -> bytes:
    signed = SignedAgreement(agreement=agreement)
    for name in signers:
        signed = sign(signed, _kit(fed, name), now=now)
    return signed.to_toml().encode()


def _certs(fed: Path, names: tuple[str, ...] = SIGNERS) -> dict[str, bytes]:
    return {n: (fed / n / "cert.pem").read_bytes() for n in names}


def _keeper(fed: Path, tmp_path: Path, coordinator: str = "coordinator") -> AgreementKeeper:
    kit = _kit(fed, "coordinator")
    return AgreementKeeper(
        tmp_path / "agreements",
        ca_pem=kit.ca_pem,
        crl=lambda: (fed / "coordinator" / "crl.pem").read_bytes(),
        coordinator=coordinator,
        coordinator_pem=kit.cert_pem,
    )


def test_an_agreement_in_force_naming_the_submitter_is_kept(fed: Path, tmp_path: Path) -> None:
    keeper = _keeper(fed, tmp_path)
    keeper.admit("alice", "researcher", ID, _file(fed, _agreement(fed)), _certs(fed))
    assert keeper.researchers(ID) == {"alice", "bob"}
    keeper.admit("bob", "researcher", ID)  # kept: no need to send it again
    assert keeper.researchers("never-seen") == frozenset()


def test_the_coordinators_own_certificate_need_not_be_sent(fed: Path, tmp_path: Path) -> None:
    keeper = _keeper(fed, tmp_path)
    certs = _certs(fed, SIGNERS[1:])
    keeper.admit("alice", "researcher", ID, _file(fed, _agreement(fed)), certs)


@pytest.mark.parametrize(
    ("who", "role"), [("carol", "researcher"), ("a", "site"), ("alice", "admin")]
)
def test_a_submitter_the_agreement_does_not_name_as_researcher_is_refused(
    fed: Path, tmp_path: Path, who: str, role: str
) -> None:
    keeper = _keeper(fed, tmp_path)
    with pytest.raises(PolicyViolation, match=f"does not name {who!r} as a {role}"):
        keeper.admit(who, role, ID, _file(fed, _agreement(fed)), _certs(fed))
    assert not (tmp_path / "agreements").exists()


def test_an_agreement_not_in_force_is_refused(fed: Path, tmp_path: Path) -> None:
    keeper = _keeper(fed, tmp_path)
    unsigned = _file(fed, _agreement(fed), signers=SIGNERS[:-1])
    with pytest.raises(PolicyViolation, match="not signed by researcher 'bob'"):
        keeper.admit("alice", "researcher", ID, unsigned, _certs(fed))
    then = dt.datetime(2019, 6, 1, tzinfo=dt.timezone.utc)
    expired = _file(fed, _agreement(fed, expires=dt.date(2020, 1, 1)), now=then)
    with pytest.raises(PolicyViolation, match="expired on 2020-01-01"):
        keeper.admit("alice", "researcher", ID, expired, _certs(fed))
    # a certificate missing from what was sent: that signature cannot be checked
    with pytest.raises(PolicyViolation, match="no certificate of researcher 'alice'"):
        keeper.admit(
            "alice", "researcher", ID, _file(fed, _agreement(fed)), _certs(fed, SIGNERS[:2])
        )
    assert keeper.researchers(ID) == frozenset()


def test_another_coordinators_agreement_is_refused(fed: Path, tmp_path: Path) -> None:
    keeper = _keeper(fed, tmp_path, coordinator="other-coordinator")
    with pytest.raises(PolicyViolation, match="names coordinator 'coordinator', not this one"):
        keeper.admit("alice", "researcher", ID, _file(fed, _agreement(fed)), _certs(fed))


def test_a_different_text_under_a_kept_id_is_refused(fed: Path, tmp_path: Path) -> None:
    keeper = _keeper(fed, tmp_path)
    keeper.admit("alice", "researcher", ID, _file(fed, _agreement(fed)), _certs(fed))
    kit = _kit(fed, "mallory")
    widened = _agreement(
        fed,
        parties=(
            *_agreement(fed).parties,
            Party(name="mallory", role="researcher", fingerprint=kit.fingerprint),
        ),
    )
    names = (*SIGNERS, "mallory")
    with pytest.raises(ConfigurationError, match="already kept here with other content"):
        keeper.admit("mallory", "researcher", ID, _file(fed, widened, names), _certs(fed, names))
    assert keeper.researchers(ID) == {"alice", "bob"}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xff\xfe not text", "not UTF-8"),
        (b"[" * 5000, "agreement"),
        (b"a" * ((1 << 20) + 1), "at most"),
        (b'format = "something-else"\n', "format must be"),
    ],
)
def test_a_file_that_is_no_agreement_is_refused_in_one_line(
    fed: Path, tmp_path: Path, data: bytes, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        _keeper(fed, tmp_path).admit("alice", "researcher", ID, data, _certs(fed))
    assert "\n" not in str(info.value)


def test_the_file_must_be_the_agreement_the_job_names(fed: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="but the job names 'other'"):
        _keeper(fed, tmp_path).admit(
            "alice", "researcher", "other", _file(fed, _agreement(fed)), _certs(fed)
        )


def test_certificates_must_be_certificates(fed: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a PEM certificate"):
        _keeper(fed, tmp_path).admit(
            "alice", "researcher", ID, _file(fed, _agreement(fed)), {"a": b"junk"}
        )


def test_a_revoked_signer_voids_the_agreement(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    consortium = Consortium.create(
        folder,
        consortium="t",
        coordinator="127.0.0.1:7443",
        sites=["a", "b"],
        researchers=["alice", "bob"],
    )
    keeper = _keeper(folder, tmp_path)
    data = _file(folder, _agreement(folder))
    consortium.revoke("b")
    with pytest.raises(PolicyViolation, match="not in force: signature of site 'b' refused"):
        keeper.admit("alice", "researcher", ID, data, _certs(folder))


# -- the decision --------------------------------------------------------------------------


@pytest.fixture
def coordinator(fed: Path, tmp_path: Path) -> Coordinator:
    return Coordinator(InMemoryStateStore(), agreements=_keeper(fed, tmp_path))


def _spec(**run: object) -> str:
    return JobSpec.from_mapping(
        {
            "run": {"name": "j", "dataset": "brca", "rounds": 1, **run},
            "task": {"name": "cox_ph", "num_features": 3},
            "strategy": {"name": "fedavg"},
            "train": {"local_steps": 1, "batch_size": 4, "learning_rate": 0.1},
        }
    ).to_json()


ALICE = Peer(name="alice", role="researcher")
BOB = Peer(name="bob", role="researcher")
CAROL = Peer(name="carol", role="researcher")
ADMIN = Peer(name="admin", role="admin")
SITE = Peer(name="a", role="site")


def test_the_decision_matrix(fed: Path, coordinator: Coordinator) -> None:
    private = coordinator.submit_run(ALICE, _spec()).run_id
    shared = coordinator.submit_run(
        ALICE, _spec(agreement=ID), agreement=_file(fed, _agreement(fed)), certificates=_certs(fed)
    ).run_id
    access = coordinator.access
    rows = {r.run_id: r for r in coordinator.store.list_runs()}
    expected = {
        (ALICE, private): True,
        (ALICE, shared): True,
        (BOB, private): False,
        (BOB, shared): True,
        (CAROL, private): False,
        (CAROL, shared): False,
        (ADMIN, private): True,
        (ADMIN, shared): True,
        (SITE, private): False,
        (SITE, shared): False,
    }
    for (peer, run_id), allowed in expected.items():
        assert access.may(peer, rows[run_id]) is allowed, (peer, run_id)
        cancel = allowed and peer in (ALICE, ADMIN)
        assert access.may(peer, rows[run_id], "cancel") is cancel, (peer, run_id)
    assert [s.run_id for s in coordinator.list_runs(BOB)] == [shared]
    assert coordinator.list_runs(CAROL) == []
    assert coordinator.list_runs(SITE) == []
    for call in (coordinator.get_run, coordinator.run_result, coordinator.cancel_run):
        with pytest.raises(PolicyViolation, match=f"^{DENIED}$"):
            call(CAROL, shared)
        with pytest.raises(PolicyViolation, match=f"^{DENIED}$"):
            call(CAROL, "j-00000000")
    with pytest.raises(PolicyViolation, match=f"^{DENIED}$"):
        next(iter(coordinator.watch_run(CAROL, private, 0, False, lambda: True)))
    with pytest.raises(PolicyViolation, match="only the run's submitter or an admin may cancel"):
        coordinator.cancel_run(BOB, shared)
    assert coordinator.cancel_run(ADMIN, shared).status == "cancelled"


def test_without_a_keeper_nothing_is_shared_and_agreements_are_refused() -> None:
    coordinator = Coordinator(InMemoryStateStore())
    with pytest.raises(ConfigurationError, match="keeps no study agreements"):
        coordinator.submit_run(ALICE, _spec(agreement=ID))
    with pytest.raises(ConfigurationError, match="a job that names none"):
        coordinator.submit_run(ALICE, _spec(), agreement=b"x")
    run = coordinator.submit_run(ALICE, _spec()).run_id
    assert RunAccess().may(BOB, coordinator.store.get_run(run)) is False  # type: ignore[arg-type]


def _finish(coordinator: Coordinator, run_id: str) -> None:
    """Give the run one completed round and mark it finished (as the executor would)."""
    params = ParameterSet({"w": np.zeros(3)})
    coordinator.store.complete_round(
        run_id,
        RoundRecord(round=1, num_selected=2, num_replies=2, num_rejected=0),
        Checkpoint(run_id=run_id, round=1, parameters=params, state={}),
    )
    coordinator.store.set_run_status(run_id, RunStatus.FINISHED)


def test_an_agreement_that_keeps_the_model_in_refuses_its_download(
    fed: Path, coordinator: Coordinator
) -> None:
    closed = _agreement(fed, outputs=OutputPolicy(final_model=False, metrics=("c_index",)))
    run = coordinator.submit_run(
        ALICE, _spec(agreement=ID), agreement=_file(fed, closed), certificates=_certs(fed)
    ).run_id
    _finish(coordinator, run)
    for peer in (ALICE, BOB, ADMIN):  # the owner, a researcher it names, and the admin
        with pytest.raises(PolicyViolation, match=r"does not release the final model"):
            coordinator.run_result(peer, run)
    assert coordinator.get_run(BOB, run).status == "finished"  # the run itself stays visible


def test_an_agreement_that_releases_the_model_lets_its_researchers_download_it(
    fed: Path, coordinator: Coordinator
) -> None:
    run = coordinator.submit_run(
        ALICE, _spec(agreement=ID), agreement=_file(fed, _agreement(fed)), certificates=_certs(fed)
    ).run_id
    _finish(coordinator, run)
    assert decode_parameters(coordinator.run_result(BOB, run))["w"].shape == (3,)


def test_a_run_stored_under_older_rules_does_not_break_the_list(coordinator: Coordinator) -> None:
    good = coordinator.submit_run(ALICE, _spec()).run_id
    bad_spec = json.loads(_spec())
    bad_spec["run"]["rounds"] = 10**12  # accepted before the job schema; too big for the wire
    coordinator.store.create_run("old-00000001", json.dumps(bad_spec), "alice")
    listed = {s.run_id: s for s in coordinator.list_runs(ALICE)}
    assert set(listed) == {good, "old-00000001"}
    old = listed["old-00000001"]
    assert old.total_rounds == 0
    assert "[run] rounds" in json.loads(old.summary_json)["spec_error"]
