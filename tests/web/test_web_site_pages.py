"""The site operator's dashboard over a real site folder, request by request, and attacked.

A provisioned consortium, the site's kit and node.toml, bundles packed with the governance
API (the first approved with ``biofed node approve``), a signed agreement and a ledger
with spend (tests/web/web_site_setup.py); the real Starlette app over Starlette's
TestClient.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from web_site_setup import ABSENT, AGREEMENT, OTHER, RESEARCHER, SITE, SiteFolder, build_site

from biofed.core import ConfigurationError
from biofed.governance import LOG_FILE, ApprovalStore, AuditLog, AuditSigner, verify_log
from biofed.identity import load_kit
from biofed.web import CSRF_FIELD, make_login_token, site_audience, site_dashboard


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> SiteFolder:
    return build_site(tmp_path_factory.mktemp("web-site"))


@pytest.fixture(scope="module")
def app(site: SiteFolder) -> object:
    return site_dashboard(site.kit_dir, site.node_toml)


def _login(client: TestClient, site: SiteFolder, name: str = SITE) -> str:
    """Log in with a link made from ``name``'s kit for this site's dashboard; the page's
    CSRF token."""
    token = make_login_token(site.kit(name), audience=site_audience(SITE))
    response = client.get("/login", params={"token": token})
    assert response.status_code == 200, response.text
    found = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', response.text)
    assert found, "no CSRF token on the page"
    return found.group(1)


@pytest.fixture
def client(app: object, site: SiteFolder) -> Iterator[tuple[TestClient, str]]:
    with TestClient(app, base_url="http://127.0.0.1:8766") as c:  # type: ignore[arg-type]
        yield c, _login(c, site)


def _entries(site: SiteFolder) -> list[dict[str, object]]:
    return [json.loads(x) for x in (site.kit_dir / LOG_FILE).read_text().splitlines()]


def _store(site: SiteFolder) -> ApprovalStore:
    log = AuditLog(site.kit_dir / LOG_FILE, AuditSigner.from_kit(site.kit()))
    return ApprovalStore(site.kit_dir / "approvals.json", audit=log)


def test_every_page_shows_the_sites_state(client: tuple[TestClient, str], site: SiteFolder) -> None:
    c, _ = client
    assert c.get("/").url.path == "/review"
    review = c.get("/review").text
    assert site.v2 in review
    assert ABSENT in review
    assert "file not here yet" in review
    assert f'data-digest="{site.v1}"' not in review  # approved: not pending
    approvals = c.get("/approvals").text
    assert site.v1 in approvals
    assert "dr-ops" in approvals
    assert "ticket 41" in approvals
    agreements = c.get("/agreements").text
    assert re.search(rf'data-agreement="{AGREEMENT}">.*?in force', agreements, re.S)
    assert re.search(r'data-agreement="brca-pilot">.*?expired', agreements, re.S)
    ledger = c.get("/ledger").text
    assert 'data-dataset="brca"' in ledger
    assert "brca-cox-1" in ledger
    assert "brca-cox-2" in ledger
    spec = json.loads(
        re.search(r'data-chart="([^"]+)"', ledger).group(1).replace("&#34;", '"')  # type: ignore[union-attr]
    )
    assert spec["labels"] == ["brca-cox-1", "brca-cox-2", "brca-km-1", "brca-cox-3"]
    assert spec["series"]["ε spent (cumulative)"] == pytest.approx([1.3, 2.7, 3.2, 5.1])
    assert spec["series"]["ε cap"] == [8.0] * 4
    audit = c.get("/audit").text
    assert 'data-ok="true"' in audit
    assert "budget.debited" in audit


def test_a_bundle_page_shows_files_digest_and_the_diff_safely(
    client: tuple[TestClient, str], site: SiteFolder
) -> None:
    c, _ = client
    page = c.get(f"/review/{site.v2}").text
    assert site.v2 in page
    assert site.v1 in page
    assert '<span class="add">+def make_task(num_features, l2=0.01):</span>' in page
    assert '<span class="del">-def make_task(num_features):</span>' in page
    # researcher-supplied content is escaped, never markup
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(" in page
    assert "binary file, not shown (2048 bytes" in page  # weights.bin
    assert "cut after 65536 of 136000 bytes" in page  # notes.txt
    assert "more diff lines not shown" in page  # and its 8000 added lines in the diff
    assert len(page) < 300_000
    assert c.get(f"/review/{site.v2}", params={"against": site.v1}).status_code == 200


def test_approving_on_the_page_is_the_cli_approval_audited_via_the_dashboard(
    client: tuple[TestClient, str], site: SiteFolder
) -> None:
    c, csrf = client
    before = len(_entries(site))
    response = c.post(
        "/approve",
        data={CSRF_FIELD: csrf, "digest": site.v2, "by": "dr-ops", "note": "v2 read"},
        headers={"origin": "http://127.0.0.1:8766"},
    )
    assert response.status_code == 200
    assert "approved <span" in response.text
    assert response.url.path == "/approvals"
    # exactly what `biofed node approve` leaves: the file entry, and the log approves it
    listed = {a.digest: a for a in _store(site).list()}
    assert (listed[site.v2].by, listed[site.v2].note) == ("dr-ops", "v2 read")
    assert listed[site.v2].approved_at[:4] == listed[site.v1].approved_at[:4]
    assert _store(site).is_approved(site.v2)
    _store(site).check()  # what the node runs at start: file and log agree
    new = _entries(site)[before:]
    assert [(e["event"], e["data"]) for e in new] == [
        (
            "bundle.approved",
            {"bundle": site.v2, "by": "dr-ops", "note": "v2 read", "via": "dashboard"},
        )
    ]
    cli_entry = next(e for e in _entries(site) if e["event"] == "bundle.approved")
    assert set(cli_entry["data"]) == {"bundle", "by", "note"}  # the CLI's, without via
    assert verify_log(site.kit_dir / LOG_FILE, site.kit().cert_pem, site.kit().ca_pem).ok
    assert 'data-ok="true"' in c.get("/audit").text
    assert "dashboard" in c.get("/audit").text

    # revoke it again: the CLI's revocation, audited
    response = c.post("/revoke", data={CSRF_FIELD: csrf, "digest": site.v2})
    assert response.status_code == 200
    assert "revoked" in response.text
    assert site.v2 not in {a.digest for a in _store(site).list()}
    assert not _store(site).is_approved(site.v2)
    last = _entries(site)[-1]
    assert (last["event"], last["data"]) == (
        "bundle.revoked",
        {"bundle": site.v2, "via": "dashboard"},
    )
    assert verify_log(site.kit_dir / LOG_FILE, site.kit().cert_pem, site.kit().ca_pem).ok
    assert f'data-digest="{site.v2}"' in c.get("/review").text  # pending again


def test_the_audit_page_pages_and_shows_a_tampered_log_as_failed(
    site: SiteFolder, tmp_path: Path
) -> None:
    import shutil
    from html import unescape

    copy = tmp_path / "fed"
    shutil.copytree(site.fed, copy)
    kit_dir = copy / SITE
    log = AuditLog(kit_dir / LOG_FILE, AuditSigner.from_kit(load_kit(kit_dir)))
    for i in range(60):
        log.append("test.filler", {"i": i})
    with TestClient(site_dashboard(kit_dir, kit_dir / "node.toml")) as c:
        c.get("/login", params={"token": make_login_token(load_kit(kit_dir))})
        first = unescape(c.get("/audit").text)
        assert "page 1 of 2" in first
        assert 'href="/audit?page=2"' in first
        assert '"i": 59' in first
        assert '"i": 0}' not in first
        second = unescape(c.get("/audit", params={"page": "2"}).text)
        assert '"i": 0}' in second
        assert "bundle.approved" in second
        assert "page 2 of 2" in c.get("/audit", params={"page": "99"}).text
        lines = (kit_dir / LOG_FILE).read_text().splitlines()
        entry = json.loads(lines[3])
        entry["data"]["epsilon_job"] = 0.1  # a smaller spend, written in afterwards
        lines[3] = json.dumps(entry, separators=(",", ":"), sort_keys=True)
        (kit_dir / LOG_FILE).write_text("\n".join(lines) + "\n")
        tampered = c.get("/audit").text
        assert 'data-ok="false"' in tampered
        assert "FAILED at entry" in tampered


def test_a_bundle_of_many_large_files_makes_a_bounded_page(
    site: SiteFolder, tmp_path: Path
) -> None:
    import shutil

    from biofed.governance import Bundle

    copy = tmp_path / "fed"
    shutil.copytree(site.fed, copy)
    kit_dir = copy / SITE
    files = {"task.py": b"x = 1\n", **{f"f{i:02d}.txt": b"y" * 60_000 for i in range(40)}}
    big = Bundle.from_files(files)  # 2.4 MB of text
    (kit_dir / "bundles" / f"{big.digest}.zip").write_bytes(big.to_bytes())
    with TestClient(site_dashboard(kit_dir, kit_dir / "node.toml")) as c:
        c.get("/login", params={"token": make_login_token(load_kit(kit_dir))})
        page = c.get(f"/review/{big.digest}").text
    assert len(page) < 2_300_000  # 1 MiB of files and 1 MiB of diff, not 4.8 MB
    assert "the rest of the diff is not shown" in page
    assert page.count("cut after 0 of 60000 bytes") > 10
    assert "f39.txt" in page


@pytest.mark.parametrize("who", [OTHER, RESEARCHER])
def test_only_the_sites_own_certificate_logs_in(app: object, site: SiteFolder, who: str) -> None:
    with TestClient(app, base_url="http://127.0.0.1:8766") as c:  # type: ignore[arg-type]
        own = make_login_token(site.kit(who))  # the link that kit makes for its own audience
        assert c.get("/login", params={"token": own}).status_code == 403
        forged = make_login_token(site.kit(who), audience=site_audience(SITE))
        assert c.get("/login", params={"token": forged}).status_code == 403
        assert c.get("/review", follow_redirects=False).status_code == 303
        assert c.post("/approve", data={"digest": site.v2}).url.path == "/login-required"


def test_actions_need_the_csrf_token_and_the_own_origin(
    client: tuple[TestClient, str], site: SiteFolder
) -> None:
    c, csrf = client
    form = {"digest": site.v2, "by": "mallory", "note": ""}
    assert c.post("/approve", data=form).status_code == 403
    assert c.post("/approve", data={**form, CSRF_FIELD: "x" * 43}).status_code == 403
    evil = c.post(
        "/approve", data={**form, CSRF_FIELD: csrf}, headers={"origin": "http://evil.example"}
    )
    assert evil.status_code == 403
    assert c.get("/approve").status_code == 405
    assert site.v2 not in {a.digest for a in _store(site).list()}


def test_only_a_pending_bundle_held_here_can_be_approved(
    client: tuple[TestClient, str], site: SiteFolder
) -> None:
    c, csrf = client
    before = (site.kit_dir / "approvals.json").read_bytes()
    for digest, status in ((site.v1, 403), (ABSENT, 403), ("cd" * 32, 403)):
        response = c.post("/approve", data={CSRF_FIELD: csrf, "digest": digest, "by": "x"})
        assert response.status_code == status, (digest, response.text[-600:])
        assert "not pending review" in response.text
    assert (site.kit_dir / "approvals.json").read_bytes() == before
    missing = c.post("/revoke", data={CSRF_FIELD: csrf, "digest": "cd" * 32})
    assert missing.status_code == 400
    assert "not approved here" in missing.text


@pytest.mark.parametrize(
    "attempt",
    [
        "/review/..%2F..%2Fkey.pem",
        "/review/../../key.pem",
        "/review/%2e%2e%2fkey.pem",
        "/review/" + "A" * 64,
    ],
)
def test_a_digest_that_is_a_path_reads_nothing(
    client: tuple[TestClient, str], attempt: str
) -> None:
    c, _ = client
    response = c.get(attempt)
    assert response.status_code in (400, 404)
    assert "PRIVATE KEY" not in response.text


def test_form_fields_that_are_paths_read_and_write_nothing(
    client: tuple[TestClient, str], site: SiteFolder
) -> None:
    c, csrf = client
    for field in ("../../key.pem", "../approvals", "/etc/passwd"):
        response = c.post("/approve", data={CSRF_FIELD: csrf, "digest": field, "by": "x"})
        assert response.status_code == 400
        assert "64 lowercase hex" in response.text
        assert c.post("/revoke", data={CSRF_FIELD: csrf, "digest": field}).status_code == 400
        against = c.get(f"/review/{site.v2}", params={"against": field})
        assert against.status_code == 400
        assert "PRIVATE KEY" not in against.text
    assert c.get("/audit", params={"page": "x"}).status_code == 400


def test_a_bundle_file_name_cannot_carry_markup(tmp_path: Path) -> None:
    from biofed.governance import pack_bundle

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "task.py").write_text("x = 1\n")
    (tmp_path / "t" / "<img src=x onerror=alert(1)>.py").write_text("")
    with pytest.raises(ConfigurationError, match="unsafe path"):
        pack_bundle(tmp_path / "t", tmp_path / "t.zip")


def test_a_site_dashboard_needs_a_governed_site_kit(site: SiteFolder, tmp_path: Path) -> None:
    plain = tmp_path / "node.toml"
    plain.write_text(f'[datasets.brca]\npath = "{site.kit_dir / "data" / "brca.csv"}"\n')
    with pytest.raises(ConfigurationError, match="governance"):
        site_dashboard(site.kit_dir, plain)
    with pytest.raises(ConfigurationError, match="not a site"):
        site_dashboard(site.fed / RESEARCHER, site.node_toml)


def test_biofed_node_dashboard_stays_on_loopback_without_remote(site: SiteFolder) -> None:
    from typer.testing import CliRunner

    from biofed.cli import app as cli

    args = ["--kit", str(site.kit_dir), "--config", str(site.node_toml)]
    refused = CliRunner().invoke(cli, ["node", "dashboard", *args, "--listen", "0.0.0.0:0"])
    assert refused.exit_code == 2
    assert "unless --remote allows 0.0.0.0" in refused.output.replace("\n", " ")


@pytest.mark.slow
def test_biofed_node_dashboard_serves_until_sigterm(site: SiteFolder) -> None:
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    command = [sys.executable, "-c", "from biofed.cli import main; main()", "node", "dashboard"]
    args = ["--kit", str(site.kit_dir), "--config", str(site.node_toml)]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [*command, *args, "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+)", first)
        assert url, first
        hint = proc.stderr.readline()
        assert f"biofed dashboard link --kit {site.kit_dir} --url {url.group(1)}" in hint
        with urllib.request.urlopen(f"{url.group(1)}/healthz", timeout=10) as reply:
            assert reply.read() == b"ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
