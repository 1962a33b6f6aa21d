"""Red team: the dashboards' login links, sessions, cookies and POST routes, attacked.

A real consortium (test_web_auth's fixtures), real login gates and Starlette apps over
Starlette's TestClient: a malleated signature, payloads that parsers read differently, a
login link planted by another site (login CSRF), one participant minting sessions to push
the others out, two dashboards on one host sharing a cookie jar, every POST route of both
real dashboards without its CSRF token, huge forms and paths out of the static folder.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import time
from types import SimpleNamespace
from typing import Any

import pytest
import test_web_auth
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from test_web_auth import coordinator_gate, kit, site_gate

from biofed.core import PolicyViolation
from biofed.identity import Consortium
from biofed.web import Dashboard, make_login_token, site_audience
from biofed.web._auth import DOMAIN, MAX_SESSIONS_EACH, cookie_name

fed = test_web_auth.fed  # the module's consortium (a fixture)

#: The order of the P-256 group: (r, n − s) verifies wherever (r, s) does.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signed(fed: Consortium, who: str, payload: str) -> str:
    """A token whose payload text is exactly ``payload``, properly signed by ``who``."""
    own = kit(fed, who)
    head = _b64(payload.encode())
    key = serialization.load_pem_private_key(own.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(DOMAIN + head.encode(), ec.ECDSA(hashes.SHA256()))
    _, cert, _ = make_login_token(own).split(".")
    return f"{head}.{cert}.{_b64(signature)}"


def test_a_malleated_signature_does_not_make_a_used_link_usable_again(fed: Consortium) -> None:
    gate = coordinator_gate(fed)
    token = make_login_token(kit(fed, "alice"))
    head, cert, sig = token.split(".")
    r, s = decode_dss_signature(_unb64(sig))
    twin = f"{head}.{cert}.{_b64(encode_dss_signature(r, P256_N - s))}"
    assert twin != token
    assert gate.verify(token)[0].name == "alice"
    with pytest.raises(PolicyViolation, match="used already"):
        gate.verify(twin)  # the same signed nonce: single use holds for both forms


@pytest.mark.parametrize(
    "template",
    [
        '{{"v":1,"aud":"elsewhere","aud":"coordinator","sub":"alice","iat":{iat},'
        '"exp":{exp},"nonce":"{nonce}"}}',  # parsers disagree on which aud counts
        '{{"v":true,"aud":"coordinator","sub":"alice","iat":{iat},"exp":{exp},"nonce":"{nonce}"}}',
        '{{"v":1.0,"aud":"coordinator","sub":"alice","iat":{iat},"exp":{exp},"nonce":"{nonce}"}}',
        '{{"v":1,"aud":"coordinator","sub":"alice","iat":NaN,"exp":{exp},"nonce":"{nonce}"}}',
        '{{"v":1,"aud":"coordinator","sub":"alice","iat":{iat}.0,"exp":{exp},"nonce":"{nonce}"}}',
        '{{"v":1,"aud":"coordinator","sub":"alice","iat":1{big},"exp":{exp},"nonce":"{nonce}"}}',
    ],
)
def test_a_signed_payload_that_parsers_read_differently_is_malformed(
    fed: Consortium, template: str
) -> None:
    now = int(time.time())
    payload = template.format(iat=now, exp=now + 60, nonce="n" * 32, big="0" * 5000)
    with pytest.raises(PolicyViolation, match="malformed"):
        coordinator_gate(fed).verify(_signed(fed, "alice", payload))


def test_a_link_cannot_be_replayed_at_another_sites_dashboard(fed: Consortium) -> None:
    token = make_login_token(kit(fed, "hosp-a"))
    assert site_gate(fed, "hosp-a").verify(token)[0].name == "hosp-a"
    with pytest.raises(PolicyViolation, match="another dashboard"):
        site_gate(fed, "hosp-b").verify(token)  # its own replay cache never saw the nonce


def _board_client(fed: Consortium, port: int = 8765) -> tuple[Dashboard, TestClient]:
    board = Dashboard(title="biofed · test", gate=coordinator_gate(fed))

    async def home(request: Request) -> Response:
        return PlainTextResponse(f"hello {board.viewer(request).name}")

    app = board.app([Route("/", home)])
    return board, TestClient(app, base_url=f"http://127.0.0.1:{port}", follow_redirects=False)


def test_a_link_another_site_sends_the_browser_to_asks_first(fed: Consortium) -> None:
    """Login CSRF: mallory's page sends alice's browser to mallory's own link."""
    board, browser = _board_client(fed)
    token = make_login_token(kit(fed, "mallory"))
    planted = browser.get(
        "/login", params={"token": token}, headers={"sec-fetch-site": "cross-site"}
    )
    assert planted.status_code == 200
    assert board.cookie not in planted.headers.get("set-cookie", "")
    assert "Log in as mallory?" in planted.text  # the victim sees whose link it is
    assert browser.get("/").status_code == 303  # not logged in
    # a forged auto-submitting form from mallory's page is refused …
    for headers in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"}):
        forged = browser.post("/login", data={"token": token}, headers=headers)
        assert forged.status_code == 403
        assert browser.get("/").status_code == 303
    # … and the click on the page itself (same origin) logs in, once
    origin = {"origin": "http://127.0.0.1:8765", "sec-fetch-site": "same-origin"}
    clicked = browser.post("/login", data={"token": token}, headers=origin)
    assert clicked.status_code == 303
    assert browser.get("/").text == "hello mallory"
    assert browser.post("/login", data={"token": token}, headers=origin).status_code == 403
    # a link the participant opens themselves (terminal, address bar) logs in at once
    own = make_login_token(kit(fed, "alice"))
    direct = browser.get("/login", params={"token": own}, headers={"sec-fetch-site": "none"})
    assert direct.status_code == 303
    assert browser.get("/").text == "hello alice"


def test_one_participant_minting_sessions_cannot_log_the_others_out(fed: Consortium) -> None:
    board, browser = _board_client(fed)
    browser.get("/login", params={"token": make_login_token(kit(fed, "alice"))})
    assert browser.get("/").text == "hello alice"
    peer, cert = coordinator_gate(fed).verify(make_login_token(kit(fed, "mallory")))
    minted = [board.sessions.start(peer, cert) for _ in range(1100)]
    assert browser.get("/").text == "hello alice"  # still logged in
    assert board.sessions.get(minted[-1].id) is not None
    assert board.sessions.get(minted[0].id) is None  # mallory pushed out only her own
    live = [s for s in minted if board.sessions.get(s.id) is not None]
    assert len(live) == MAX_SESSIONS_EACH


def test_session_ids_are_long_random_and_the_cookie_is_locked_down(fed: Consortium) -> None:
    board, browser = _board_client(fed)
    ids = set()
    for _ in range(3):
        reply = browser.get("/login", params={"token": make_login_token(kit(fed, "alice"))})
        cookie = reply.headers["set-cookie"]
        value = re.search(rf"{board.cookie}=([^;]+)", cookie)
        assert value is not None
        assert len(value.group(1)) >= 43  # 256 bits, URL-safe base64
        ids.add(value.group(1))
        assert {"httponly", "samesite=strict", "path=/"} <= {
            p.strip().lower() for p in cookie.split(";")
        }
    assert len(ids) == 3


def test_two_dashboards_on_one_host_keep_their_own_sessions(fed: Consortium) -> None:
    """Browsers share cookies between a host's ports: the coordinator's dashboard on :8765
    and a site's on :8766 must not overwrite each other's session cookie."""
    assert cookie_name("coordinator") != cookie_name(site_audience("hosp-a"))
    _, coordinator = _board_client(fed, 8765)
    site = Dashboard(title="site", gate=site_gate(fed, "hosp-a"))

    async def home(request: Request) -> Response:
        return PlainTextResponse(f"site {site.viewer(request).name}")

    other = TestClient(
        site.app([Route("/", home)]), base_url="http://127.0.0.1:8766", follow_redirects=False
    )
    coordinator.get("/login", params={"token": make_login_token(kit(fed, "alice"))})
    other.get("/login", params={"token": make_login_token(kit(fed, "hosp-a"))})
    # one browser keeps one cookie jar for the host, whatever the port: merge them
    jar = dict(coordinator.cookies.items())
    jar.update(other.cookies.items())
    coordinator.cookies.clear()
    other.cookies.clear()
    for name, value in jar.items():
        coordinator.cookies.set(name, value)
        other.cookies.set(name, value)
    assert coordinator.get("/").text == "hello alice"
    assert other.get("/").text == "site hosp-a"


def test_huge_forms_are_refused_before_they_are_read_whole(fed: Consortium) -> None:
    _, browser = _board_client(fed)
    browser.get("/login", params={"token": make_login_token(kit(fed, "alice"))})
    many = {f"f{i}": "x" for i in range(100)}
    assert browser.post("/logout", data=many).status_code == 400
    assert browser.post("/logout", data={"f": "x" * 100_000}).status_code == 400
    assert browser.get("/").text == "hello alice"  # neither logged out


@pytest.mark.parametrize(
    "path",
    [
        "/static/../_auth.py",
        "/static/%2e%2e/_auth.py",
        "/static/..%2f_app.py",
        "/static/%2e%2e%2ftemplates/base.html",
        "/static//etc/passwd",
        "/static/..\\_auth.py",
    ],
)
def test_nothing_outside_the_static_folder_is_served(fed: Consortium, path: str) -> None:
    _, browser = _board_client(fed)
    reply = browser.get(path)
    assert reply.status_code in (400, 404)
    assert "import" not in reply.text
    assert "root:" not in reply.text


def test_a_login_link_never_sends_the_browser_elsewhere(fed: Consortium) -> None:
    _, browser = _board_client(fed)
    token = make_login_token(kit(fed, "alice"))
    for extra in ({"next": "https://evil.example"}, {"redirect": "//evil.example"}):
        reply = browser.get("/login", params={"token": token, **extra})
        assert reply.headers.get("location") in (None, "/")
        token = make_login_token(kit(fed, "alice"))


def test_the_payload_keys_are_still_read_in_a_good_token(fed: Consortium) -> None:
    """The strict parser still accepts what make_login_token makes (sorted, unique keys)."""
    token = make_login_token(kit(fed, "alice"))
    payload = json.loads(_unb64(token.split(".")[0]))
    assert sorted(payload) == ["aud", "exp", "iat", "nonce", "sub", "v"]
    assert coordinator_gate(fed).verify(token)[0].name == "alice"


def _token_of(credentials: Any, audience: str = "coordinator") -> str:
    """A login token from freshly issued credentials (what a kit would hold)."""
    holder = SimpleNamespace(
        name=credentials.name,
        role=credentials.role,
        cert_pem=credentials.cert_pem,
        key_pem=credentials.key_pem,
    )
    return make_login_token(holder, audience=audience)  # type: ignore[arg-type]


def test_an_expired_certificate_neither_logs_in_nor_keeps_its_session(fed: Consortium) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = fed.ca.issue(
        "carol",
        "researcher",
        not_before=now - dt.timedelta(days=2),
        not_after=now - dt.timedelta(days=1),
    )
    gate = coordinator_gate(fed)
    with pytest.raises(PolicyViolation, match="expired"):
        gate.verify(_token_of(expired))
    ending = fed.ca.issue(
        "dave",
        "researcher",
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(seconds=2),
    )
    board = Dashboard(title="t", gate=gate)
    session = board.sessions.start(*gate.verify(_token_of(ending)))
    deadline = time.monotonic() + 30
    while board.sessions.get(session.id) is not None:  # ends once the certificate expires
        assert time.monotonic() < deadline, "the session outlived its certificate"
        time.sleep(0.1)
