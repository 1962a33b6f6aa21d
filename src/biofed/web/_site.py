"""The site operator's dashboard: bundles to review, approvals, agreements, the privacy
ledger and the audit log of one site, served by ``biofed node dashboard``.

Its pages read, and its two actions change, the same files through the same SDK calls as
the site's CLI (:mod:`biofed.web._site_state`); an approval or revocation made here is the
audit entry ``biofed node approve`` / ``revoke`` writes, with ``via: dashboard``.

Security notes
--------------
Only the site's own certificate logs in (its fingerprint, role ``site``, the consortium CA:
:class:`~biofed.web.LoginGate`); the two actions are POSTs read through
:meth:`~biofed.web.Dashboard.form` (session, CSRF token, Origin: OWASP ASVS 4.0 V4.2.2,
V13.2.3). An approval is accepted only for a bundle that is held here, not yet approved,
and reads and matches its digest — a forged form cannot approve code the operator could
not have seen. Bundle names and contents are researcher-supplied: Jinja2 escapes them, a
page shows at most :data:`~biofed.web._site_state.SHOWN_BYTES` of a file and
:data:`~biofed.web._site_state.PAGE_BYTES` in all, a bounded diff, and binaries by size and
hash only (ASVS V5.3.3; a bundle may hold 64 MB).
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from biofed.governance import VerifyReport, check_digest
from biofed.identity import load_kit
from biofed.node import NodeConfig
from biofed.web._app import TEMPLATES, Dashboard, FileMemo, NavItem, chart
from biofed.web._auth import LoginGate, site_audience
from biofed.web._site_state import SiteState, diff_lines, show_files

NAV = (
    NavItem("Review", "/review"),
    NavItem("Approvals", "/approvals"),
    NavItem("Agreements", "/agreements"),
    NavItem("Ledger", "/ledger"),
    NavItem("Audit log", "/audit"),
)


def site_dashboard(kit_dir: Path, node_config: Path) -> Starlette:
    """The dashboard of the site whose kit is ``kit_dir`` and whose node reads
    ``node_config`` (which must have a ``[governance]`` table).

    Raises
    ------
    ConfigurationError
        The kit is not a site's, or ``node.toml`` is unreadable or has no governance.
    """
    kit = load_kit(kit_dir)
    state = SiteState(kit, NodeConfig.from_toml(node_config))
    crl = kit.crl_path
    gate = LoginGate(
        audience=site_audience(kit.name),
        ca_pem=kit.ca_pem,
        crl=(crl.read_bytes if crl is not None else lambda: None),
        roles={"site"},
        fingerprints={kit.fingerprint},
    )
    dash = Dashboard(
        title=f"biofed · site {kit.name}",
        gate=gate,
        nav=NAV,
        templates=[TEMPLATES / "site"],
        help_login=f"biofed dashboard link --kit {kit_dir}",
    )
    return dash.app(_routes(dash, state))


def _routes(dash: Dashboard, state: SiteState) -> list[Route]:
    verified: FileMemo[VerifyReport | str] = FileMemo()  # see FileMemo: DoS by reloads

    def home(request: Request) -> Response:
        dash.viewer(request)
        return RedirectResponse("/review", status_code=303)

    def review(request: Request) -> Response:
        dash.viewer(request)
        return dash.page(request, "review.html", {"pending": state.pending()})

    def bundle(request: Request) -> Response:
        dash.viewer(request)
        digest = check_digest(request.path_params["digest"])
        loaded = state.bundle(digest)
        against = request.query_params.get("against") or None
        base = state.diff_base(digest, against)
        diff = None if base is None else diff_lines(state.bundle(base), loaded)
        approved = not state.is_pending(digest)
        return dash.page(
            request,
            "bundle.html",
            {
                "digest": digest,
                "files": show_files(loaded),
                "base": base,
                "diff": diff,
                "approved": approved,
                "operator": state.operator,
                "choices": [
                    a.digest for a in state.approvals() if state.bundle_file(a.digest).is_file()
                ],
            },
        )

    async def approve(request: Request) -> Response:
        _, form = await dash.form(request)
        digest, by, note = _field(form, "digest"), _field(form, "by"), _field(form, "note", "")
        if not by.strip():
            raise HTTPException(400, "say who approves (the 'by' field)")
        state.approve(digest, by=by, note=note)
        return RedirectResponse(f"/approvals?approved={check_digest(digest)}", status_code=303)

    async def revoke(request: Request) -> Response:
        _, form = await dash.form(request)
        digest = _field(form, "digest")
        state.revoke(digest)
        return RedirectResponse(f"/approvals?revoked={check_digest(digest)}", status_code=303)

    def approvals(request: Request) -> Response:
        dash.viewer(request)
        rows = [(a, state.bundle_file(a.digest).is_file()) for a in state.approvals()]
        done = {k: request.query_params.get(k, "") for k in ("approved", "revoked")}
        return dash.page(request, "approvals.html", {"rows": rows, "done": done})

    def agreements(request: Request) -> Response:
        dash.viewer(request)
        return dash.page(request, "agreements.html", {"rows": state.agreements()})

    def ledger(request: Request) -> Response:
        dash.viewer(request)
        budgets = []
        for status in state.budgets():
            labels, spent, cap = [], [], []
            total = 0.0
            for job in status.jobs:
                total += job.epsilon
                labels.append(job.run_id)
                spent.append(total)
                cap.append(status.cap_epsilon)
            spec = chart(
                "line",
                labels,
                {"ε spent (cumulative)": spent, "ε cap": cap},
                x_label="job",
                y_label="ε",
                title=f"{status.dataset}: spent vs cap",
            )
            budgets.append((status, spec))
        return dash.page(request, "ledger.html", {"budgets": budgets})

    def audit(request: Request) -> Response:
        dash.viewer(request)
        try:
            page = int(request.query_params.get("page", "1"))
        except ValueError:
            raise HTTPException(400, "page must be a number") from None
        rows, pages = state.audit_page(page)
        report = verified.get(state.audit_path, state.verify_audit)
        return dash.page(
            request,
            "audit.html",
            {
                "rows": rows,
                "page": min(max(1, page), pages),
                "pages": pages,
                "report": report if isinstance(report, VerifyReport) else None,
                "refused": report if isinstance(report, str) else "",
                "log": state.audit_path,
            },
        )

    return [
        Route("/", home, methods=["GET"]),
        Route("/review", review, methods=["GET"]),
        Route("/review/{digest}", bundle, methods=["GET"]),
        Route("/approve", approve, methods=["POST"]),
        Route("/revoke", revoke, methods=["POST"]),
        Route("/approvals", approvals, methods=["GET"]),
        Route("/agreements", agreements, methods=["GET"]),
        Route("/ledger", ledger, methods=["GET"]),
        Route("/audit", audit, methods=["GET"]),
    ]


def _field(form: FormData, name: str, default: str | None = None) -> str:
    value = form.get(name, default)
    if not isinstance(value, str):
        raise HTTPException(400, f"the form has no {name!r} field")
    if len(value) > 2000:
        raise HTTPException(400, f"the form's {name!r} field is too long")
    return value
