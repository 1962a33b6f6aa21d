"""The coordinator's dashboard: runs, their rounds, sites, privacy spend and the audit log.

Served by the coordinator process (``biofed coordinator start --dashboard HOST:PORT``) to
researchers and admins who log in with a link made from their kit
(``biofed dashboard link``).

Security notes
--------------
Threat: broken object-level authorization (OWASP API Security Top 10 2023 API1, OWASP ASVS
4.0 V4.2.1) — a researcher reading or cancelling another's run through the dashboard
instead of the gRPC API. Every page asks the very :class:`~biofed.coordinator.Coordinator`
methods the ControlService calls (``list_runs``, ``get_run``, ``watch_run``,
``run_rounds``, ``analysis_result``, ``cancel_run``, ``list_nodes``), with the logged-in
participant as the :class:`~biofed.transport.grpc.Peer`; nothing run-specific is read from
the store around them, so the dashboard cannot show more than ``biofed run status`` /
``run logs`` would. A run the viewer may not see is the same 403 page, with the same
words, whether it exists or not (no oracle for run ids). The audit page is for the
``admin`` role (it names every run). Cancel is a POST through :meth:`Dashboard.form`
(CSRF token and Origin check) and is audited by the coordinator as the gRPC cancel is
(``run.cancelled`` in its signed log; the ``cancel_requested`` run event names who).
Pages are plain functions that Starlette runs on its thread pool, so a slow one (a long
run, a large audit log, verified at most once a minute or when it changes) never stalls
the others.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from biofed.coordinator import Coordinator
from biofed.core import BiofedError, ConfigurationError, PolicyViolation
from biofed.governance import VerifyReport, verify_log
from biofed.identity import Kit, RevocationList
from biofed.transport.grpc import Peer
from biofed.web._app import TEMPLATES, Dashboard, FileMemo, NavItem
from biofed.web._auth import LoginGate, Session, coordinator_audience
from biofed.web._coordinator_views import (
    audit_counts,
    examples_of,
    run_row,
    run_view,
    site_rows,
    when,
)

NAV = (NavItem("Runs", "/"), NavItem("Sites", "/sites"), NavItem("Audit", "/audit"))
#: Statuses of a run that may still be cancelled.
_LIVE = frozenset({"pending", "running"})


def coordinator_gate(kit: Kit) -> LoginGate:
    """Who may log in to the coordinator's dashboard: researchers and admins of the kit's
    consortium, checked against its CA and its current CRL (re-read when the file changes,
    as the gRPC API's :class:`~biofed.coordinator.KitAuthenticator` does)."""
    if kit.crl_path is None:
        raise ConfigurationError(f"coordinator kit {kit.directory} has no crl.pem")
    crl = RevocationList(kit.crl_path, kit.ca_pem)
    return LoginGate(
        audience=coordinator_audience(),
        ca_pem=kit.ca_pem,
        crl=crl.pem,
        roles={"researcher", "admin"},
    )


def _peer(session: Session) -> Peer:
    return Peer(name=session.name, role=session.role)


def coordinator_dashboard(
    coordinator: Coordinator, kit: Kit, *, clock: Callable[[], float] = time.time
) -> Starlette:
    """The coordinator's dashboard as an ASGI app (serve it with
    :func:`~biofed.web.serve_dashboard`).

    Parameters
    ----------
    coordinator:
        The running coordinator whose control API the pages ask.
    kit:
        The coordinator's kit: its CA and CRL admit the logins, its certificate verifies
        the audit log.
    """
    if kit.role != "coordinator":
        raise ConfigurationError(
            f"kit {kit.directory} belongs to a {kit.role}, not the coordinator"
        )
    board = Dashboard(
        title="biofed · coordinator",
        gate=coordinator_gate(kit),
        nav=NAV,
        templates=[TEMPLATES / "coordinator"],
    )
    board.env.filters["when"] = when
    verified: FileMemo[tuple[VerifyReport, dict[str, dict[str, int]]]] = FileMemo()

    def _verify(path: Path) -> tuple[VerifyReport, dict[str, dict[str, int]]]:
        report = verify_log(path, kit.cert_pem, kit.ca_pem, writer=kit.name)
        return report, audit_counts(_entries(path, report.entries)) if report.entries else {}

    def runs(request: Request) -> Response:
        session = board.viewer(request)
        rows = [run_row(r) for r in coordinator.list_runs(_peer(session))]
        rows.sort(key=lambda r: r.created, reverse=True)
        return board.page(request, "runs.html", {"runs": rows})

    def run(request: Request) -> Response:
        session = board.viewer(request)
        peer = _peer(session)
        run_id = request.path_params["run_id"]
        summary = coordinator.get_run(peer, run_id)  # the access decision, first
        events = list(coordinator.watch_run(peer, run_id, 0, False, lambda: False))
        records = coordinator.run_rounds(peer, run_id)
        analysis, analysis_error = None, ""
        if "analysis" in json.loads(summary.summary_json or "{}"):
            try:
                analysis = coordinator.analysis_result(peer, run_id)
            except BiofedError as exc:
                analysis_error = str(exc)
        view = run_view(summary, events, records, analysis=analysis, analysis_error=analysis_error)
        dataset = view.summary.get("dataset")
        if isinstance(dataset, str):
            view.examples = examples_of(coordinator.list_nodes(peer), dataset)
        cancellable = summary.status in _LIVE and (
            peer.role == "admin" or summary.owner == peer.name
        )
        return board.page(request, "run.html", {"run": view, "cancellable": cancellable})

    async def cancel(request: Request) -> Response:
        session, _ = await board.form(request)
        run_id = request.path_params["run_id"]
        coordinator.cancel_run(_peer(session), run_id)  # decides who may, audits the end
        return RedirectResponse(f"/runs/{run_id}", status_code=303)

    def sites(request: Request) -> Response:
        session = board.viewer(request)
        nodes = coordinator.list_nodes(_peer(session))
        return board.page(request, "sites.html", {"sites": site_rows(nodes, clock())})

    def audit(request: Request) -> Response:
        session = board.viewer(request)
        if session.role != "admin":
            raise PolicyViolation("the audit page is for the consortium's admins")
        log = coordinator.audit
        context: dict[str, object] = {"log": None, "report": None, "runs": []}
        if log is not None:
            context["log"] = str(log.path)
            report, counts = verified.get(log.path, lambda: _verify(log.path))
            context["report"] = report
            context["runs"] = [
                (row, counts.get(row.run_id, {}))
                for row in sorted(
                    (run_row(r) for r in coordinator.list_runs(_peer(session))),
                    key=lambda r: r.created,
                    reverse=True,
                )
            ]
        return board.page(request, "audit.html", context)

    return board.app(
        [
            Route("/", runs, methods=["GET"]),
            Route("/runs/{run_id}", run, methods=["GET"]),
            Route("/runs/{run_id}/cancel", cancel, methods=["POST"]),
            Route("/sites", sites, methods=["GET"]),
            Route("/audit", audit, methods=["GET"]),
        ]
    )


def _entries(path: Path, verified: int) -> list[dict[str, object]]:
    """The first ``verified`` entries of the log (those :func:`verify_log` checked), as
    JSON objects; nothing past them is read."""
    out: list[dict[str, object]] = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if number > verified:
                break
            try:
                entry = json.loads(line)
            except ValueError:
                break
            if isinstance(entry, dict):
                out.append(entry)
    return out
