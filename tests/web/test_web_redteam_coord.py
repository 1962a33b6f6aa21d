"""Red team: the coordinator's dashboard over a real coordinator, attacked.

A real consortium and :class:`~biofed.coordinator.Coordinator` (its store, access rules and
signed audit log; not started, so the runs stay as written) holding alice's run with what
hostile sites could make it record — markup in event messages, metric names, site
properties, 2,000 rounds of 60 metrics and 20,000 events — fetched with Starlette's
TestClient after real login links (test_web_coord_pages' ``client``); mallory and a site's
certificate try every route; every POST route of the app is tried without its CSRF token.
"""

from __future__ import annotations

import html
import json
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.routing import Route
from starlette.testclient import TestClient
from test_web_coord_pages import DENIED, World, client, dp_job

from biofed.coordinator import Checkpoint, Coordinator, InMemoryStateStore, NodeRow, RoundRecord
from biofed.core import ParameterSet
from biofed.governance import LOG_FILE, AuditLog, AuditSigner
from biofed.identity import Consortium, load_kit
from biofed.transport.grpc import EventInfo, Peer, RunSummary
from biofed.web import CSRF_FIELD, coordinator_audience, coordinator_dashboard, make_login_token
from biofed.web._app import FileMemo
from biofed.web._coordinator_views import (
    MAX_CHARTS,
    MAX_FAILURES,
    MAX_POINTS,
    MAX_REPLY_ROUNDS,
    run_view,
)

ALICE = Peer(name="alice", role="researcher")
SITES = ["center-0", "center-1", "center-2"]
#: Breaks out of an attribute, a text node, a script and a JSON string.
EVIL = "\"'><img src=x onerror=alert(1)></script><script>alert(2)</script>\\u0022"


class NoNodes:
    """A hub with no node: nothing runs, the pages read what the store holds."""

    def transport_for(self, run_id: str, dataset: str) -> Any:
        raise AssertionError("the coordinator is not started")

    def sessions(self) -> list[Any]:
        return []

    def cancel_run(self, run_id: str) -> int:
        return 0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("coord-redteam")
    fed = Consortium.create(
        root / "fed",
        consortium="Web Oncology",
        coordinator="127.0.0.1:50051",
        sites=SITES,
        researchers=["alice", "mallory"],
    )
    kit = load_kit(fed.kit_directory("coordinator"))
    audit = AuditLog(kit.directory / LOG_FILE, AuditSigner.from_kit(kit))
    coordinator = Coordinator(
        InMemoryStateStore(),
        hub=lambda **_: NoNodes(),  # type: ignore[arg-type,return-value]
        audit=audit,
    )
    run_id = coordinator.submit_run(ALICE, dp_job("hostile", rounds=5000).to_json()).run_id
    store = coordinator.store
    params = ParameterSet({"w": np.zeros(2)})
    names = [f"metric-{i}" for i in range(60)] + [EVIL]
    for r in range(1, 2001):
        record = RoundRecord(
            round=r,
            num_selected=3,
            num_replies=3,
            num_rejected=0,
            train_metrics={n: float(r) for n in names},
            eval_metrics={"c_index": 0.6},
            node_eval_metrics={s: {"c_index": 0.6, EVIL: 1.0} for s in SITES},
        )
        store.complete_round(run_id, record, Checkpoint(run_id=run_id, round=r, parameters=params))
    for i in range(20_000):
        site = SITES[i % 3]
        kind = ("train_reply", "reply_rejected")[i % 2]
        message = "accepted" if kind == "train_reply" else EVIL + "x" * 5000
        store.append_event(run_id, round=1 + i // 10, kind=kind, message=message, node_id=site)
    store.upsert_node(
        NodeRow(node_id="center-0", status="online", last_seen=time.time(), properties={EVIL: EVIL})
    )
    flood = {f"p{i:05d}": "v" * 2000 for i in range(500)}  # 1 MB of properties
    store.upsert_node(
        NodeRow(node_id="center-1", status="online", last_seen=time.time(), properties=flood)
    )
    app = coordinator_dashboard(coordinator, kit)
    return World(fed, coordinator, audit, app, run_id, "")


class Page(HTMLParser):
    """What a browser would run or follow on a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.handlers: list[str] = []
        self.tags: list[str] = []
        self.charts: list[dict[str, Any]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = dict(attrs)
        if tag == "script":
            self.scripts.append(found.get("src") or "inline")
        self.handlers += [k for k in found if k.startswith("on")]
        if "data-chart" in found:
            self.charts.append(json.loads(found["data-chart"] or ""))


def _safe(text: str) -> Page:
    page = Page(text)
    assert page.scripts == ["/static/chart.umd.min.js", "/static/charts.js"]
    assert page.handlers == []
    assert "img" not in page.tags
    return page


def test_hostile_strings_stay_text_in_pages_and_chart_attributes(world: World) -> None:
    alice = client(world, "alice")
    run = alice.get(f"/runs/{world.run_id}")
    assert run.status_code == 200
    page = _safe(run.text)
    series = {name for spec in page.charts for name in spec["series"]}
    assert EVIL in series  # the hostile metric name survived as data, whole, in JSON
    assert EVIL in html.unescape(run.text)
    sites = alice.get("/sites")
    _safe(sites.text)
    assert len(sites.text) < 100_000, len(sites.text)  # center-1's flood of properties, cut
    assert EVIL in html.unescape(sites.text)
    _safe(alice.get("/").text)
    _safe(client(world, "admin").get("/audit").text)


def test_a_run_of_thousands_of_rounds_and_events_makes_a_bounded_page(world: World) -> None:
    start = time.perf_counter()
    run = client(world, "alice").get(f"/runs/{world.run_id}")
    took = time.perf_counter() - start
    assert run.status_code == 200
    assert len(run.text) < 1_500_000, len(run.text)  # ~36 MB before the caps
    page = Page(run.text)
    assert len(page.charts) <= 2 * MAX_CHARTS + 2
    assert all(len(spec["labels"]) <= MAX_POINTS for spec in page.charts)
    assert max(max(spec["labels"]) for spec in page.charts if spec["labels"]) == 2000
    assert 'id="charts-left"' in run.text  # the metrics not charted are named
    assert run.text.count("<tr data-site=") == len(SITES)
    assert run.text.count("<th>Round ") == MAX_REPLY_ROUNDS
    assert f"The newest {MAX_FAILURES} of 10000 failures" in run.text
    assert took < 30, took


def test_run_view_bounds_a_ten_thousand_round_run() -> None:
    """The pure view, at the issue's sizes: 10^4 rounds, 10^5 events."""
    summary = RunSummary(
        run_id="big-00000000", status="running", owner="alice", created_at=time.time(),
        total_rounds=10_000, completed_rounds=10_000, summary_json="{}", error="",
    )  # fmt: skip
    records = [
        RoundRecord(round=r, num_selected=3, num_replies=3, num_rejected=0,
                    train_metrics={"loss": 1.0 / r}, eval_metrics={"c_index": 0.6})
        for r in range(1, 10_001)
    ]  # fmt: skip
    events = [
        EventInfo(seq=i, time=0.0, round=1 + i // 10, kind="reply_rejected", node_id="s",
                  message="late")
        for i in range(100_000)
    ]  # fmt: skip
    view = run_view(summary, events, records)
    assert len(view.failures) == MAX_FAILURES
    assert view.failures_total == 100_000
    assert len(view.rounds) == MAX_REPLY_ROUNDS
    assert all(len(json.loads(c.spec)["labels"]) <= MAX_POINTS for c in view.metric_charts)


def test_mallory_gets_one_answer_for_a_hidden_run_and_a_missing_one(world: World) -> None:
    mallory = client(world, "mallory")
    token = _csrf(mallory)
    answers = []
    for run_id in (world.run_id, "hostile-00000000"):
        page = mallory.get(f"/runs/{run_id}")
        cancel = mallory.post(f"/runs/{run_id}/cancel", data={CSRF_FIELD: token})
        answers.append((page.status_code, page.text, cancel.status_code, cancel.text))
        assert page.status_code == 403
        assert DENIED in page.text
        assert "data-chart" not in page.text
    assert answers[0] == answers[1]  # the same pages whether the run exists or not
    for odd in ("..%2Faudit", "%0d%0aSet-Cookie:x=1", "x%00y", "a" * 5000):
        page = mallory.get(f"/runs/{odd}")
        cancel = mallory.post(f"/runs/{odd}/cancel", data={CSRF_FIELD: token})
        for reply in (page, cancel):
            assert reply.status_code in (403, 404), odd  # refused, or no such route
            assert "set-cookie" not in {k.lower() for k in reply.headers}
            assert "x=1" not in reply.headers.get("location", "")
    assert world.run_id not in mallory.get("/").text
    assert mallory.get("/audit").status_code == 403
    assert world.coordinator.get_run(ALICE, world.run_id).status == "pending"  # not cancelled


def test_a_site_certificate_cannot_open_the_coordinators_dashboard(world: World) -> None:
    browser = TestClient(world.app, base_url="http://127.0.0.1:8765")
    site_kit = load_kit(world.fed.kit_directory("center-0"))
    token = make_login_token(site_kit, audience=coordinator_audience())
    reply = browser.get("/login", params={"token": token})
    assert reply.status_code == 403
    assert browser.get("/").status_code == 401


def test_the_admin_sees_every_run(world: World) -> None:
    admin = client(world, "admin")
    assert world.run_id in admin.get("/").text
    assert admin.get(f"/runs/{world.run_id}").status_code == 200
    audit = admin.get("/audit")
    assert audit.status_code == 200
    assert "Verified:" in audit.text


def _csrf(browser: TestClient) -> str:
    import re

    found = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', browser.get("/sites").text)
    assert found is not None
    return found.group(1)


def post_routes(app: Any) -> list[str]:
    """Every POST route of a dashboard app, its path parameters filled in."""
    import re

    out = []
    for route in app.routes:
        if isinstance(route, Route) and "POST" in (route.methods or ()):
            out.append(re.sub(r"\{[^}]+\}", "x", route.path))
    return out


def test_every_post_route_refuses_without_the_csrf_token_or_from_elsewhere(world: World) -> None:
    routes = post_routes(world.app)
    assert {"/logout", "/runs/x/cancel"} <= set(routes)
    alice = client(world, "alice")
    token = _csrf(alice)
    for path in routes:
        if path == "/login":  # no session yet: its own Origin check (test_web_redteam_auth)
            continue
        assert alice.post(path, data={}).status_code == 403, path
        assert alice.post(path, data={CSRF_FIELD: "forged"}).status_code == 403, path
        elsewhere = alice.post(
            path, data={CSRF_FIELD: token}, headers={"origin": "http://127.0.0.1:9999"}
        )
        assert elsewhere.status_code == 403, path
    assert alice.get("/").status_code == 200  # still logged in: /logout was refused too


def test_the_audit_log_is_verified_once_per_change(tmp_path: Path) -> None:
    calls: list[int] = []
    memo: FileMemo[int] = FileMemo()
    log = tmp_path / "audit.jsonl"
    log.write_text("one\n")
    for _ in range(5):
        memo.get(log, lambda: calls.append(1) or len(calls))
    assert len(calls) == 1
    with log.open("a") as f:
        f.write("two\n")
    assert memo.get(log, lambda: calls.append(1) or len(calls)) == 2
