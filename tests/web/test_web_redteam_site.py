"""Red team: a site operator's dashboard over a real site folder, attacked.

The governed site of tests/web/web_site_setup.py, plus what a researcher, another party or
a careless operator could put in front of the operator: an agreement whose title is markup,
ledger and audit entries carrying markup, an approval whose ``by`` and ``note`` are markup.
Every page must show them as text; every POST route of the app must refuse a request
without its CSRF token or from another origin; a link planted by another site asks first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from test_web_redteam_coord import EVIL, Page, post_routes
from web_site_setup import AGREEMENT, SITE, SiteFolder, build_site

from biofed.governance import (
    LEDGER_FILE,
    LOG_FILE,
    AuditLog,
    AuditSigner,
    PrivacyLedger,
    SignedAgreement,
    read_agreement,
    write_agreement,
)
from biofed.web import CSRF_FIELD, make_login_token, site_audience, site_dashboard


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> SiteFolder:
    built = build_site(tmp_path_factory.mktemp("web-site-redteam"), hostile=False)
    folder = built.kit_dir / "agreements"
    signed = read_agreement(folder / f"{AGREEMENT}.toml")
    evil = dataclasses.replace(signed.agreement, agreement_id="evil-study", title=EVIL)
    write_agreement(folder / "evil-study.toml", SignedAgreement(agreement=evil))  # unsigned
    kit = built.kit()
    log = AuditLog(built.kit_dir / LOG_FILE, AuditSigner.from_kit(kit))
    log.append("test.note", {"text": EVIL, EVIL: 1})
    ledger = PrivacyLedger(
        built.kit_dir / LEDGER_FILE, audit=lambda event, data: log.append(event, dict(data))
    )
    with contextlib.suppress(Exception):  # a ledger that refuses a hostile label is fine too
        ledger.reserve("brca", "evil-run", 1, 0.1, 1e-6, guarantee=EVIL)
    return built


@pytest.fixture
def browser(site: SiteFolder) -> Iterator[tuple[TestClient, str]]:
    app = site_dashboard(site.kit_dir, site.node_toml)
    with TestClient(app, base_url="http://127.0.0.1:8766") as c:
        page = c.get("/login", params={"token": make_login_token(site.kit())})
        found = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', page.text)
        assert found is not None
        yield c, found.group(1)


def _safe(text: str) -> None:
    page = Page(text)
    assert page.scripts == ["/static/chart.umd.min.js", "/static/charts.js"]
    assert page.handlers == []
    assert "img" not in page.tags


def test_every_page_shows_hostile_strings_as_text(
    browser: tuple[TestClient, str], site: SiteFolder
) -> None:
    c, csrf = browser
    approved = c.post(
        "/approve", data={CSRF_FIELD: csrf, "digest": site.v2, "by": EVIL, "note": EVIL}
    )
    assert approved.status_code == 200, approved.text[-500:]
    for path in ("/review", f"/review/{site.v2}", "/approvals", "/agreements", "/ledger", "/audit"):
        page = c.get(path)
        assert page.status_code == 200, path
        _safe(page.text)
    assert EVIL in html.unescape(c.get("/agreements").text)  # the title, as text
    assert EVIL in html.unescape(c.get("/approvals").text)  # by and note, as text
    audit = html.unescape(c.get("/audit").text)
    assert "test.note" in audit
    assert "alert(2)" in audit


def test_every_post_route_refuses_without_the_csrf_token_or_from_elsewhere(
    browser: tuple[TestClient, str], site: SiteFolder
) -> None:
    c, csrf = browser
    routes = post_routes(site_dashboard(site.kit_dir, site.node_toml))
    assert {"/approve", "/revoke", "/logout"} <= set(routes)
    before = (site.kit_dir / "approvals.json").read_bytes()
    form = {"digest": site.v1, "by": "x", "note": ""}
    for path in routes:
        if path == "/login":
            continue
        assert c.post(path, data=form).status_code == 403, path
        assert c.post(path, data={**form, CSRF_FIELD: "forged"}).status_code == 403, path
        elsewhere = c.post(
            path, data={**form, CSRF_FIELD: csrf}, headers={"origin": "http://127.0.0.1:8765"}
        )
        assert elsewhere.status_code == 403, path  # the coordinator's dashboard is elsewhere
    assert (site.kit_dir / "approvals.json").read_bytes() == before
    assert c.get("/review").status_code == 200  # still logged in


def test_a_planted_login_link_asks_the_operator_first(site: SiteFolder) -> None:
    app = site_dashboard(site.kit_dir, site.node_toml)
    with TestClient(app, base_url="http://127.0.0.1:8766", follow_redirects=False) as c:
        token = make_login_token(site.kit(), audience=site_audience(SITE))
        planted = c.get("/login", params={"token": token}, headers={"sec-fetch-site": "same-site"})
        assert planted.status_code == 200
        assert f"Log in as {SITE}?" in planted.text
        assert "set-cookie" not in planted.headers
        assert c.get("/review").status_code == 303


@pytest.mark.slow
def test_in_chromium_a_link_from_another_site_logs_in_only_on_the_click(
    site: SiteFolder, chromium: Any, tmp_path: Path
) -> None:
    """Real Chromium sends ``Sec-Fetch-Site: cross-site`` for a link on another site's page
    (``localhost`` and ``127.0.0.1`` are different sites) and ``same-origin`` for the
    confirmation's POST."""
    import http.server
    import socketserver
    import threading

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from biofed.web import login_url, serve_dashboard

    running = serve_dashboard(site_dashboard(site.kit_dir, site.node_toml), "127.0.0.1:0")
    link = login_url(running.url, make_login_token(site.kit()))
    (tmp_path / "index.html").write_text(f'<a id="go" href="{html.escape(link)}">a prize</a>')

    class Evil(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    with socketserver.TCPServer(("localhost", 0), Evil) as evil:
        thread = threading.Thread(target=evil.serve_forever, daemon=True)
        thread.start()
        try:
            chromium.get(f"http://localhost:{evil.server_address[1]}/index.html")
            chromium.find_element(By.ID, "go").click()
            WebDriverWait(chromium, 20).until(lambda d: d.find_elements(By.ID, "log-in"))
            assert chromium.find_element(By.TAG_NAME, "h1").text == f"Log in as {SITE}?"
            chromium.find_element(By.ID, "log-in").click()
            WebDriverWait(chromium, 20).until(lambda d: d.current_url.endswith("/review"))
            assert chromium.find_element(By.CSS_SELECTOR, ".who").text.startswith(SITE)
        finally:
            evil.shutdown()
            thread.join(10)
            running.stop()
