"""Login links, sessions and CSRF of the dashboards, attacked.

A real consortium (CA, CRL, kits); a real Starlette app over Starlette's TestClient.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from biofed.core import PolicyViolation
from biofed.identity import Consortium, Kit, load_kit
from biofed.web import (
    COOKIE,
    CSRF_FIELD,
    Dashboard,
    LoginGate,
    coordinator_audience,
    make_login_token,
    site_audience,
)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    return Consortium.create(
        tmp_path_factory.mktemp("web") / "fed",
        consortium="Web Oncology",
        coordinator="127.0.0.1:50051",
        sites=["hosp-a", "hosp-b"],
        researchers=["alice", "mallory"],
    )


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """A second consortium whose CA the first does not trust."""
    return Consortium.create(
        tmp_path_factory.mktemp("web-other") / "fed",
        consortium="Elsewhere",
        coordinator="127.0.0.1:50051",
        sites=["hosp-a"],
        researchers=["alice"],
    )


def kit(fed: Consortium, name: str) -> Kit:
    return load_kit(fed.kit_directory(name))


def coordinator_gate(fed: Consortium) -> LoginGate:
    coordinator = kit(fed, "coordinator")
    assert coordinator.crl_path is not None
    crl = coordinator.crl_path
    return LoginGate(
        audience=coordinator_audience(),
        ca_pem=coordinator.ca_pem,
        crl=crl.read_bytes,
        roles={"researcher", "admin"},
    )


def site_gate(fed: Consortium, site: str) -> LoginGate:
    own = kit(fed, site)
    return LoginGate(
        audience=site_audience(site),
        ca_pem=own.ca_pem,
        crl=lambda: None,
        roles={"site"},
        fingerprints={own.fingerprint},
    )


def _parts(token: str) -> list[str]:
    return token.split(".")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_researchers_link_logs_in_once(fed: Consortium) -> None:
    gate = coordinator_gate(fed)
    token = make_login_token(kit(fed, "alice"))
    peer, _ = gate.verify(token)
    assert (peer.name, peer.role) == ("alice", "researcher")
    with pytest.raises(PolicyViolation, match="used already"):
        gate.verify(token)


def test_an_admin_logs_in_to_the_coordinator(fed: Consortium) -> None:
    peer, _ = coordinator_gate(fed).verify(make_login_token(kit(fed, "admin")))
    assert peer.role == "admin"


def test_a_site_kit_cannot_log_in_to_the_coordinator(fed: Consortium) -> None:
    token = make_login_token(kit(fed, "hosp-a"), audience=coordinator_audience())
    with pytest.raises(PolicyViolation, match="role"):
        coordinator_gate(fed).verify(token)


def test_a_site_dashboard_admits_its_own_certificate_alone(fed: Consortium) -> None:
    gate = site_gate(fed, "hosp-a")
    peer, _ = gate.verify(make_login_token(kit(fed, "hosp-a")))
    assert peer.name == "hosp-a"
    with pytest.raises(PolicyViolation, match="another dashboard"):
        gate.verify(make_login_token(kit(fed, "hosp-b")))
    forged_audience = make_login_token(kit(fed, "hosp-b"), audience=site_audience("hosp-a"))
    with pytest.raises(PolicyViolation, match="may not use this dashboard"):
        gate.verify(forged_audience)
    with pytest.raises(PolicyViolation):
        gate.verify(make_login_token(kit(fed, "alice"), audience=site_audience("hosp-a")))


def test_an_expired_link_is_refused(fed: Consortium) -> None:
    token = make_login_token(kit(fed, "alice"), seconds=60, now=time.time() - 120)
    with pytest.raises(PolicyViolation, match="expired"):
        coordinator_gate(fed).verify(token)


def test_a_link_from_the_future_or_too_long_lived_is_refused(fed: Consortium) -> None:
    gate = coordinator_gate(fed)
    with pytest.raises(PolicyViolation, match="future"):
        gate.verify(make_login_token(kit(fed, "alice"), now=time.time() + 3600))
    with pytest.raises(Exception, match="600"):
        make_login_token(kit(fed, "alice"), seconds=86_400)


def test_a_tampered_payload_breaks_the_signature(fed: Consortium) -> None:
    head, cert, sig = _parts(make_login_token(kit(fed, "alice")))
    payload = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    payload["exp"] = payload["iat"] + 600  # a longer life, still within the cap
    forged = _b64(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(PolicyViolation, match="signature"):
        coordinator_gate(fed).verify(f"{forged}.{cert}.{sig}")


def test_someone_elses_certificate_with_my_signature_is_refused(fed: Consortium) -> None:
    """mallory signs a token naming alice and attaches alice's (public) certificate."""
    head, _, sig = _parts(make_login_token(kit(fed, "mallory")))
    _, alice_cert, _ = _parts(make_login_token(kit(fed, "alice")))
    with pytest.raises(PolicyViolation, match=r"someone else|signature"):
        coordinator_gate(fed).verify(f"{head}.{alice_cert}.{sig}")
    payload = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    payload["sub"] = "alice"
    renamed = _b64(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(PolicyViolation, match="signature"):
        coordinator_gate(fed).verify(f"{renamed}.{alice_cert}.{sig}")


def test_a_foreign_consortiums_kit_is_refused(fed: Consortium, other: Consortium) -> None:
    with pytest.raises(PolicyViolation):
        coordinator_gate(fed).verify(make_login_token(kit(other, "alice")))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "!!!.###.$$$",
        "x" * 9000,
        _b64(b"[1,2]") + ".AA.AA",
        _b64(b'{"v":1,"aud":"coordinator","sub":"alice","iat":"0","exp":1,"nonce":"x"}') + ".AA.AA",
    ],
)
def test_garbage_tokens_are_refused_cleanly(fed: Consortium, token: str) -> None:
    with pytest.raises(PolicyViolation):
        coordinator_gate(fed).verify(token)


def test_a_revoked_researcher_is_refused_and_their_session_ends(tmp_path: Path) -> None:
    fed = Consortium.create(
        tmp_path / "fed",
        consortium="Revoking",
        coordinator="127.0.0.1:50051",
        sites=["hosp-a"],
        researchers=["eve"],
    )
    gate = coordinator_gate(fed)
    board = Dashboard(title="t", gate=gate)
    peer, cert = gate.verify(make_login_token(kit(fed, "eve")))
    session = board.sessions.start(peer, cert)
    assert board.sessions.get(session.id) is not None
    fed.revoke("eve")
    coordinator = kit(fed, "coordinator")
    assert coordinator.crl_path is not None
    coordinator.crl_path.write_bytes(fed.ca.crl_pem())
    assert board.sessions.get(session.id) is None  # ended on the next request
    with pytest.raises(PolicyViolation, match="revoked"):
        gate.verify(make_login_token(kit(fed, "eve")))


def test_sessions_end_when_idle(fed: Consortium) -> None:
    gate = coordinator_gate(fed)
    board = Dashboard(title="t", gate=gate)
    peer, cert = gate.verify(make_login_token(kit(fed, "alice")))
    session = board.sessions.start(peer, cert, now=time.time() - 3 * 3600)
    assert board.sessions.get(session.id) is None


# -- the app: cookies, headers, CSRF ---------------------------------------------------------
@pytest.fixture
def client(fed: Consortium) -> TestClient:
    board = Dashboard(title="biofed · test", gate=coordinator_gate(fed))

    async def home(request: Request) -> Response:
        who = board.viewer(request)
        return PlainTextResponse(f"hello {who.name}")

    async def act(request: Request) -> Response:
        who, form = await board.form(request)
        return PlainTextResponse(f"done by {who.name}: {form.get('what')}")

    return TestClient(
        board.app([Route("/", home), Route("/act", act, methods=["POST"])]),
        base_url="http://127.0.0.1:8765",
        follow_redirects=False,
    )


def _login(client: TestClient, fed: Consortium, who: str = "alice") -> str:
    reply = client.get("/login", params={"token": make_login_token(kit(fed, who))})
    assert reply.status_code == 303
    cookie = reply.headers["set-cookie"]
    assert "httponly" in cookie.lower()
    assert "samesite=strict" in cookie.lower()
    page = client.get("/")
    assert page.text == f"hello {who}"
    return cookie


def _csrf(client: TestClient) -> str:
    page = client.get("/login-required")  # any rendered page carries the token
    marker = f'name="{CSRF_FIELD}" value="'
    assert marker in page.text
    return page.text.split(marker, 1)[1].split('"', 1)[0]


def test_pages_need_a_session(client: TestClient) -> None:
    reply = client.get("/")
    assert reply.status_code == 303
    assert reply.headers["location"] == "/login-required"
    assert client.get("/login-required").status_code == 401


def test_security_headers_on_every_page(client: TestClient) -> None:
    reply = client.get("/login-required")
    csp = reply.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert reply.headers["referrer-policy"] == "same-origin"  # no-referrer: Origin null
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["x-content-type-options"] == "nosniff"


def test_a_bad_link_shows_why_and_sets_no_cookie(client: TestClient, fed: Consortium) -> None:
    reply = client.get("/login", params={"token": "a.b.c"})
    assert reply.status_code == 403
    assert "set-cookie" not in reply.headers
    assert "malformed" in reply.text
    assert "biofed dashboard link" in reply.text


def test_actions_need_the_csrf_token(client: TestClient, fed: Consortium) -> None:
    _login(client, fed)
    assert client.post("/act", data={"what": "x"}).status_code == 403
    assert client.post("/act", data={"what": "x", CSRF_FIELD: "guess"}).status_code == 403
    token = _csrf(client)
    evil = client.post(
        "/act", data={"what": "x", CSRF_FIELD: token}, headers={"origin": "https://evil.example"}
    )
    assert evil.status_code == 403
    ok = client.post("/act", data={"what": "x", CSRF_FIELD: token})
    assert ok.status_code == 200
    assert ok.text == "done by alice: x"


def test_logout_ends_the_session(client: TestClient, fed: Consortium) -> None:
    _login(client, fed)
    token = _csrf(client)
    assert client.post("/logout", data={CSRF_FIELD: token}).status_code == 303
    client.cookies.clear()
    assert client.get("/").status_code == 303


def test_a_stolen_cookie_value_from_another_session_is_just_unknown(
    client: TestClient, fed: Consortium
) -> None:
    client.cookies.set(COOKIE, "not-a-session")
    assert client.get("/").status_code == 303


def test_the_cli_prints_a_link_the_dashboard_accepts(fed: Consortium) -> None:
    from urllib.parse import parse_qs, urlparse

    from typer.testing import CliRunner

    from biofed.cli import app

    result = CliRunner().invoke(
        app,
        ["dashboard", "link", "--kit", str(fed.kit_directory("alice")), "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    link = json.loads(result.stdout)
    url = urlparse(link["url"])
    assert (url.scheme, url.netloc, url.path) == ("http", "127.0.0.1:8765", "/login")
    token = parse_qs(url.query)["token"][0]
    peer, _ = coordinator_gate(fed).verify(token)
    assert peer.name == "alice"
    site = CliRunner().invoke(app, ["dashboard", "link", "--kit", str(fed.kit_directory("hosp-a"))])
    assert site.exit_code == 0, site.output
    assert site.stdout.startswith("http://127.0.0.1:8766/login?token=")


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "127.0.0.1:8765",
        "http://",
        "http://h/?a=b",
        "http://h/#x",
    ],
)
def test_a_link_to_something_that_is_no_dashboard_is_refused(fed: Consortium, url: str) -> None:
    from typer.testing import CliRunner

    from biofed.cli import app

    result = CliRunner().invoke(
        app, ["dashboard", "link", "--kit", str(fed.kit_directory("alice")), "--url", url]
    )
    assert result.exit_code == 2
    assert "is not http(s)://HOST[:PORT]" in result.output
    assert "token=" not in result.output
