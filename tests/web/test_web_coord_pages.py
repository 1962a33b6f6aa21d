"""The coordinator's dashboard, request by request, over a real coordinator.

A real consortium (CA, CRL, kits), a real :class:`~biofed.coordinator.Coordinator` with its
signed audit log, and three Fed-TCGA-BRCA sites as in-process nodes (the simulation's
backend, as tests/coordinator/test_robust_job_audit.py wires them) that ran a 2-round
sample-level DP job for alice. The pages are fetched with Starlette's TestClient after a
real login link; mallory (another researcher) attacks them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from biofed.coordinator import AnalysisJob, Coordinator, InMemoryStateStore, JobSpec
from biofed.data import FederatedDataset
from biofed.datasets import load_tcga_brca
from biofed.governance import LOG_FILE, AuditLog, AuditSigner, verify_log
from biofed.identity import Consortium, load_kit
from biofed.simulation import InProcessBackend
from biofed.simulation._job_sites import site_recipes
from biofed.transport.grpc import Peer
from biofed.web import CSRF_FIELD, coordinator_dashboard, make_login_token

pytestmark = pytest.mark.slow  # the module's one DP run takes ~10 s of CPU

SITES = ["center-0", "center-1", "center-2"]
ALICE = Peer(name="alice", role="researcher")
XSS = "<script>alert('x')</script>"
DENIED = "no run with that id is visible to you"


def dp_job(name: str, rounds: int = 2) -> JobSpec:
    """A short sample-level DP-SGD survival job: every site reports its ε each round."""
    return JobSpec.from_mapping(
        {
            "run": {
                "name": name,
                "dataset": "tcga-brca",
                "rounds": rounds,
                "seed": 3,
                "min_nodes": 3,
                "min_replies": 3,
                "round_timeout": 120.0,
            },
            "task": {"name": "pem_torch", "num_features": 39, "num_intervals": 4},
            "strategy": {"name": "fedavg"},
            "train": {"local_steps": 3, "batch_size": 16, "learning_rate": 0.5},
            "evaluate": {"split": "test", "metrics": "c_index"},
            "privacy": {
                "mode": "sample",
                "noise_multiplier": 1.1,  # fixed: no calibration, each site reports its ε
                "delta": 1e-5,
                "max_grad_norm": 1.0,
            },
        }
    )


class Hub:
    """The coordinator's node directory: three TCGA-BRCA sites as in-process nodes."""

    def __init__(self, workdir: Path) -> None:
        full = load_tcga_brca()
        fed = FederatedDataset(name=full.name, sites={s: full.sites[s] for s in SITES})
        self.recipes = site_recipes(fed, "tcga-brca", workdir=workdir, needs_kits=False)

    def transport_for(self, run_id: str, dataset: str) -> Any:
        return InProcessBackend().transport(self.recipes)

    def sessions(self) -> list[Any]:
        return []

    def cancel_run(self, run_id: str) -> int:
        return 0


@dataclass
class World:
    fed: Consortium
    coordinator: Coordinator
    audit: AuditLog
    app: Any
    run_id: str
    km_id: str


def wait_terminal(coordinator: Coordinator, run_id: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = coordinator.get_run(ALICE, run_id).status
        if status in ("finished", "finished_with_failures", "failed", "cancelled"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("coord-web")
    fed = Consortium.create(
        root / "fed",
        consortium="Web Oncology",
        coordinator="127.0.0.1:50051",
        sites=SITES,
        researchers=["alice", "mallory"],
    )
    kit = load_kit(fed.kit_directory("coordinator"))
    audit = AuditLog(kit.directory / LOG_FILE, AuditSigner.from_kit(kit))
    hub = Hub(root / "sites")
    coordinator = Coordinator(
        InMemoryStateStore(),
        hub=lambda **_: hub,  # type: ignore[arg-type,return-value]
        node_wait=5.0,
        audit=audit,
    )
    coordinator.start()
    try:
        run_id = coordinator.submit_run(ALICE, dp_job("dp-survival").to_json()).run_id
        assert wait_terminal(coordinator, run_id) == "finished"
        km = AnalysisJob.from_mapping(
            {
                "run": {"name": "km-survival", "dataset": "tcga-brca", "min_nodes": 3},
                "analysis": {"kind": "km", "time": "time", "event": "event"},
            }
        )
        km_id = coordinator.submit_run(ALICE, km.to_json()).run_id
        assert wait_terminal(coordinator, km_id) == "finished"
        # what a hostile site could make the coordinator record: a message with markup
        coordinator.store.append_event(
            run_id, round=2, kind="reply_rejected", message=XSS, node_id="center-2"
        )
        app = coordinator_dashboard(coordinator, kit)
        yield World(fed, coordinator, audit, app, run_id, km_id)
    finally:
        coordinator.stop()


def client(world: World, who: str) -> TestClient:
    """A browser logged in as ``who`` with a fresh login link from their kit."""
    browser = TestClient(world.app, base_url="http://127.0.0.1:8765")
    token = make_login_token(load_kit(world.fed.kit_directory(who)))
    response = browser.get("/login", params={"token": token})
    assert response.status_code == 200, response.text
    return browser


def charts(html: str) -> list[dict[str, Any]]:
    """The chart specs of a page (as charts.js reads them)."""
    import html as html_lib

    return [json.loads(html_lib.unescape(m)) for m in re.findall(r'data-chart="([^"]*)"', html)]


def test_the_runs_list_shows_status_progress_owner_and_the_whole_id(world: World) -> None:
    page = client(world, "alice").get("/")
    assert page.status_code == 200
    assert f">{world.run_id}</a>" in page.text
    assert '<progress max="2" value="2">' in page.text
    assert "finished" in page.text
    assert "alice" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")


def test_the_run_page_charts_metrics_replies_and_privacy_spend(world: World) -> None:
    page = client(world, "alice").get(f"/runs/{world.run_id}")
    assert page.status_code == 200
    assert f'<span class="id" id="run-id">{world.run_id}</span>' in page.text
    specs = charts(page.text)
    titles = re.findall(r"<figcaption>([^<]*)</figcaption>", page.text)
    assert any(t.startswith("c_index (evaluation, aggregated)") for t in titles), titles
    by_title = dict(zip(titles, specs, strict=True))
    spend = next(s for t, s in by_title.items() if t.startswith("privacy spend per site"))
    assert spend["labels"] == [1, 2]
    assert sorted(spend["series"]) == SITES
    for site in SITES:  # ε grows round by round at every site
        first, second = spend["series"][site]
        assert 0 < first < second
    per_site = next(s for t, s in by_title.items() if t.startswith("c_index per site"))
    assert sorted(per_site["series"]) == SITES
    assert all(v is not None for vs in per_site["series"].values() for v in vs)
    for site in SITES:  # the replies table: each site's training reply accepted each round
        row = re.search(rf'<tr data-site="{site}"><td>{site}</td>(.*?)</tr>', page.text)
        assert row is not None
        assert row.group(1).count("train accepted") == 2
    assert "Guarantee asked" in page.text
    assert "Trust" in page.text


def test_an_analysis_run_shows_its_kaplan_meier_curve(world: World) -> None:
    page = client(world, "alice").get(f"/runs/{world.km_id}")
    assert page.status_code == 200
    (spec,) = charts(page.text)
    assert spec["kind"] == "stepped"
    (curve,) = spec["series"].values()
    drawn = [v for v in curve if v is not None]
    assert drawn[0] == 1.0
    assert 0 < drawn[-1] < 1.0
    assert drawn == sorted(drawn, reverse=True)  # a survival curve never rises
    assert "<th>median</th>" in page.text.lower() or '<table class="result">' in page.text


def test_a_message_with_markup_is_shown_as_text(world: World) -> None:
    page = client(world, "alice").get(f"/runs/{world.run_id}")
    assert XSS not in page.text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page.text
    assert "reply_rejected" in page.text  # listed among the failures, with its reason


def test_mallory_sees_neither_the_run_nor_its_charts_nor_its_events(world: World) -> None:
    mallory = client(world, "mallory")
    assert world.run_id not in mallory.get("/").text
    there = mallory.get(f"/runs/{world.run_id}")
    nowhere = mallory.get("/runs/dp-survival-00000000")
    assert there.status_code == nowhere.status_code == 403
    assert DENIED in there.text
    assert DENIED in nowhere.text
    assert there.text == nowhere.text  # no oracle: the same page whether it exists or not
    assert "data-chart" not in there.text
    assert "privacy_spent" not in there.text
    assert mallory.post(
        f"/runs/{world.run_id}/cancel", data={CSRF_FIELD: _csrf(mallory, "/")}
    ).text.count(DENIED)
    assert mallory.get("/audit").status_code == 403  # the audit page is for admins


def test_nobody_logged_in_is_sent_to_the_login_help(world: World) -> None:
    anonymous = TestClient(world.app, base_url="http://127.0.0.1:8765")
    for path in ("/", f"/runs/{world.run_id}", "/sites", "/audit"):
        page = anonymous.get(path)
        assert page.status_code == 401
        assert "biofed dashboard link" in page.text
        assert world.run_id not in page.text


def test_sites_page_lists_the_nodes_with_status_and_properties(world: World) -> None:
    from biofed.coordinator import NodeRow

    world.coordinator.store.upsert_node(
        NodeRow(
            node_id="center-0",
            status="online",
            last_seen=time.time(),
            properties={"dataset.tcga-brca.examples": 311},
        )
    )
    page = client(world, "alice").get("/sites")
    assert page.status_code == 200
    assert 'data-site="center-0"' in page.text
    assert "dataset.tcga-brca.examples" in page.text
    assert "311" in page.text
    assert "online" in page.text


def test_the_admin_audit_page_verifies_the_coordinators_log(world: World) -> None:
    page = client(world, "admin").get("/audit")
    assert page.status_code == 200
    report = verify_log(world.audit.path, *_cert_ca(world), writer="coordinator")
    assert report.ok
    assert f"Verified: {report.entries} entries" in page.text
    assert world.run_id in page.text
    assert "round.received" in page.text
    assert "needs the sites' own logs" in page.text
    # a tampered log names its first broken entry
    lines = world.audit.path.read_bytes().splitlines(keepends=True)
    backup = world.audit.path.read_bytes()
    try:
        lines[1] = lines[1].replace(b'"event":"', b'"event":"forged.', 1)
        world.audit.path.write_bytes(b"".join(lines))
        broken = client(world, "admin").get("/audit")
        assert "FAILED at entry 2" in broken.text
    finally:
        world.audit.path.write_bytes(backup)


def test_cancel_is_a_csrf_checked_post_and_is_audited(world: World) -> None:
    alice = client(world, "alice")
    run_id = world.coordinator.submit_run(ALICE, dp_job("to-cancel", rounds=30).to_json()).run_id
    path = f"/runs/{run_id}/cancel"
    assert alice.post(path, data={}).status_code == 403  # no token
    assert alice.post(path, data={CSRF_FIELD: "forged"}).status_code == 403
    token = _csrf(alice, f"/runs/{run_id}")
    foreign = alice.post(path, data={CSRF_FIELD: token}, headers={"origin": "https://evil"})
    assert foreign.status_code == 403
    assert alice.get(f"/runs/{run_id}").status_code == 200
    assert world.coordinator.get_run(ALICE, run_id).status in ("pending", "running")
    done = alice.post(path, data={CSRF_FIELD: token})
    assert done.status_code == 200
    assert f'id="run-id">{run_id}<' in done.text
    assert wait_terminal(world.coordinator, run_id) == "cancelled"
    assert 'id="run-status">cancelled<' in alice.get(f"/runs/{run_id}").text
    entries, _ = world.audit.follower().read()
    assert any(e.event == "run.cancelled" and e.data["run_id"] == run_id for e in entries)
    assert "Cancel this run" not in alice.get(f"/runs/{run_id}").text


def _csrf(browser: TestClient, path: str) -> str:
    found = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', browser.get(path).text)
    assert found is not None
    return found.group(1)


def _cert_ca(world: World) -> tuple[bytes, bytes]:
    kit = load_kit(world.fed.kit_directory("coordinator"))
    return kit.cert_pem, kit.ca_pem
