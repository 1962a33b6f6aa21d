"""Who is at the browser: login links signed with a consortium key, sessions, CSRF tokens.

A participant opens a dashboard with a *login link* that ``biofed dashboard link --kit KIT``
prints: ``<dashboard>/login?token=…``. The token is made on the participant's machine and
signed with its kit key; the dashboard checks it as the gRPC API checks a TLS client
certificate, then starts a server-side session and forgets the token.

Security notes
--------------
Threats and the standards followed (OWASP ASVS 4.0: V2 authentication, V3 session
management, V4 access control, V13 API; OWASP CSRF Prevention Cheat Sheet):

- *Someone outside the consortium opens the dashboard.* Every session starts from a token
  that carries the participant's certificate and an ECDSA P-256 / SHA-256 signature by its
  key. The certificate must pass :func:`biofed.identity.identify_peer` against the
  consortium CA and the current CRL (as mTLS does on the gRPC API), and the signature proves
  possession of the key: the same authentication as mutual TLS, usable from any browser.
- *A leaked link* (shell history, a proxy's log, browser history): a token is for one
  dashboard (its audience), lives at most :data:`MAX_TOKEN_SECONDS`, and is single-use (its
  nonce is remembered until it expires). Uvicorn's access log, which would print the query
  string, is off (:mod:`biofed.web._serve`); pages send ``Referrer-Policy: same-origin``
  (no address is sent to another site).
- *A signature made for something else* (an audit entry, an agreement) replayed as a token:
  the signed bytes start with :data:`DOMAIN`, which no other biofed signature starts with.
- *Session fixation or theft*: session ids are 256-bit random values minted at login and
  kept server-side; the cookie is ``HttpOnly``, ``SameSite=Strict`` and ``Secure`` over
  HTTPS; a session ends after :data:`IDLE_SECONDS` idle or :data:`SESSION_SECONDS` in all,
  at logout, and when the participant's certificate is revoked (checked on every request).
- *Cross-site request forgery*: every state-changing request is a POST that must carry the
  session's synchronizer token (compared in constant time), and an ``Origin`` header, when
  the browser sends one, must be the dashboard's own origin.
- *Login CSRF* (another participant's page makes the victim's browser open *their* link,
  so the victim works in the attacker's session): a login link that a browser says came
  from another site (``Sec-Fetch-Site``) only shows whose link it is and logs in on the
  participant's click, a same-origin POST (:mod:`biofed.web._app`).
- *A token that parsers read differently*: a payload with a repeated key, a non-integer
  version or times, or NaN is malformed; an ECDSA signature has two valid forms (s and
  n − s), so a link is single-use by its signed nonce, not by its text.
- *One participant pushing everyone out*: sessions are capped per participant
  (:data:`MAX_SESSIONS_EACH`) below the global cap, so minting links ends only one's own
  sessions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from biofed.core import ConfigurationError, PolicyViolation
from biofed.identity import Kit, PeerIdentity, identify_peer

#: The prefix of every signed login token (domain separation from other biofed signatures).
DOMAIN = b"biofed-dashboard-login-v1\x00"
#: The longest a login token may live.
MAX_TOKEN_SECONDS = 600
#: The default life of a login token.
DEFAULT_TOKEN_SECONDS = 300
#: A session ends after this long without a request …
IDLE_SECONDS = 30 * 60
#: … and this long after login whatever happens.
SESSION_SECONDS = 8 * 3600
#: Clock skew tolerated between the participant's machine and the dashboard's.
SKEW_SECONDS = 60
#: The session cookie's name.
COOKIE = "biofed_session"
#: The name of the form field (or ``X-CSRF-Token`` header) that carries the CSRF token.
CSRF_FIELD = "csrf"
_MAX_TOKEN_CHARS = 8192
_MAX_SESSIONS = 1000
#: The most live sessions of one participant: past it their own oldest ends, so one
#: participant minting login links cannot push everyone else's sessions out of the
#: :data:`_MAX_SESSIONS` (insider denial of service).
MAX_SESSIONS_EACH = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise PolicyViolation("the login token is malformed") from exc


def coordinator_audience() -> str:
    """The audience of the coordinator's dashboard (one coordinator per consortium)."""
    return "coordinator"


def site_audience(site: str) -> str:
    """The audience of site ``site``'s dashboard."""
    return f"site:{site}"


def audience_of(kit: Kit) -> str:
    """The dashboard a participant's kit logs in to: a site's own, else the coordinator's."""
    return site_audience(kit.name) if kit.role == "site" else coordinator_audience()


def make_login_token(
    kit: Kit,
    *,
    audience: str | None = None,
    seconds: int = DEFAULT_TOKEN_SECONDS,
    now: float | None = None,
) -> str:
    """A single-use login token for ``audience`` (default: :func:`audience_of` the kit),
    signed with the kit's key and valid for ``seconds`` (at most :data:`MAX_TOKEN_SECONDS`)."""
    if not 0 < seconds <= MAX_TOKEN_SECONDS:
        raise ConfigurationError(f"a login link lives 1-{MAX_TOKEN_SECONDS} seconds, not {seconds}")
    issued = int(time.time() if now is None else now)
    payload = {
        "v": 1,
        "aud": audience or audience_of(kit),
        "sub": kit.name,
        "iat": issued,
        "exp": issued + seconds,
        "nonce": secrets.token_hex(16),
    }
    head = _b64(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    cert = x509.load_pem_x509_certificate(kit.cert_pem).public_bytes(serialization.Encoding.DER)
    key = serialization.load_pem_private_key(kit.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError("kit keys are ECDSA P-256 keys")
    signature = key.sign(DOMAIN + head.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    return f"{head}.{_b64(cert)}.{_b64(signature)}"


def login_url(base: str, token: str) -> str:
    """The login link for a dashboard at ``base`` (``http://127.0.0.1:8765``).

    Raises
    ------
    ConfigurationError
        ``base`` is not an ``http://`` or ``https://`` address of a host (a ``javascript:``
        or ``file:`` "link" would not reach a dashboard, and a query or fragment in it would
        be sent along with the token).
    """
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigurationError(
            f"the dashboard address {base!r} is not http(s)://HOST[:PORT] (e.g. {'http://127.0.0.1:8765'})"
        )
    return f"{base.rstrip('/')}/login?{urlencode({'token': token})}"


class LoginGate:
    """Checks login tokens for one dashboard.

    Parameters
    ----------
    audience:
        This dashboard's audience (:func:`coordinator_audience`, :func:`site_audience`).
    ca_pem:
        The consortium CA certificate.
    crl:
        Returns the CA's current revocation list (None where the kit keeps none).
    roles:
        The roles that may log in.
    fingerprints:
        If given, only these certificates (hex SHA-256) may log in — a site's dashboard
        admits its own certificate alone.
    """

    def __init__(
        self,
        *,
        audience: str,
        ca_pem: bytes,
        crl: Callable[[], bytes | None],
        roles: Collection[str],
        fingerprints: Collection[str] | None = None,
    ) -> None:
        self.audience = audience
        self._ca = ca_pem
        self._crl = crl
        self.roles = frozenset(roles)
        self._fingerprints = None if fingerprints is None else frozenset(fingerprints)
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def identify(self, certificate: bytes) -> PeerIdentity:
        """The participant of ``certificate`` if it may use this dashboard now (CA, CRL,
        validity, role, and the fingerprint list)."""
        peer = identify_peer(certificate, self._ca, crl_pem=self._crl(), roles=self.roles)
        if self._fingerprints is not None and peer.fingerprint not in self._fingerprints:
            raise PolicyViolation(f"{peer.name} may not use this dashboard")
        return peer

    def verify(
        self, token: str, *, now: float | None = None, consume: bool = True
    ) -> tuple[PeerIdentity, bytes]:
        """The participant a login token proves, and its certificate (DER). With ``consume``
        false the token is checked (unused too) but stays usable: the login confirmation
        page shows whose it is before the participant's click logs in with it.

        Raises
        ------
        PolicyViolation
            Malformed, forged, expired, replayed, for another dashboard, or from a
            certificate this dashboard does not admit.
        """
        at = time.time() if now is None else now
        if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS or token.count(".") != 2:
            raise PolicyViolation("the login token is malformed")
        head, cert_b64, sig_b64 = token.split(".")
        try:
            payload = json.loads(_unb64(head), object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise PolicyViolation("the login token is malformed") from exc
        if not isinstance(payload, dict) or type(payload.get("v")) is not int or payload["v"] != 1:
            raise PolicyViolation("the login token is malformed")
        aud, sub, iat, exp, nonce = (payload.get(k) for k in ("aud", "sub", "iat", "exp", "nonce"))
        if not (
            isinstance(aud, str)
            and isinstance(sub, str)
            and isinstance(nonce, str)
            and 16 <= len(nonce) <= 64
            and type(iat) is int
            and type(exp) is int
        ):
            raise PolicyViolation("the login token is malformed")
        if aud != self.audience:
            raise PolicyViolation("the login token is for another dashboard")
        if exp - iat > MAX_TOKEN_SECONDS or exp <= iat:
            raise PolicyViolation("the login token claims too long a life")
        if iat > at + SKEW_SECONDS:
            raise PolicyViolation("the login token is from the future (check the clocks)")
        if at >= exp:
            raise PolicyViolation("the login link has expired: make a new one")
        certificate = _unb64(cert_b64)
        peer = self.identify(certificate)
        if peer.name != sub:
            raise PolicyViolation("the login token names someone else than its certificate")
        public = x509.load_der_x509_certificate(certificate).public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise PolicyViolation("the login token's certificate has no ECDSA key")
        try:
            public.verify(_unb64(sig_b64), DOMAIN + head.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise PolicyViolation("the login token's signature does not verify") from exc
        with self._lock:
            for old in [n for n, until in self._seen.items() if until <= at]:
                del self._seen[old]
            if nonce in self._seen:
                raise PolicyViolation("the login link was used already: make a new one")
            if consume:
                self._seen[nonce] = float(exp)
        return peer, certificate


@dataclass(slots=True)
class Session:
    """A logged-in participant."""

    id: str
    name: str
    role: str
    certificate: bytes
    csrf: str
    created: float
    seen: float


class Sessions:
    """Server-side sessions, kept in memory (a restart logs everyone out)."""

    def __init__(self, gate: LoginGate) -> None:
        self._gate = gate
        self._by_id: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, peer: PeerIdentity, certificate: bytes, *, now: float | None = None) -> Session:
        """A new session for ``peer``: past :data:`MAX_SESSIONS_EACH` sessions of the same
        participant their oldest ends, and past 1000 in all the oldest of all."""
        at = time.time() if now is None else now
        session = Session(
            id=secrets.token_urlsafe(32),
            name=peer.name,
            role=peer.role,
            certificate=certificate,
            csrf=secrets.token_urlsafe(32),
            created=at,
            seen=at,
        )
        with self._lock:
            mine = [k for k, v in self._by_id.items() if v.name == peer.name]
            for old in mine[: max(0, len(mine) - MAX_SESSIONS_EACH + 1)]:
                del self._by_id[old]
            self._by_id[session.id] = session
            while len(self._by_id) > _MAX_SESSIONS:
                self._by_id.popitem(last=False)
        return session

    def get(self, session_id: str | None, *, now: float | None = None) -> Session | None:
        """The live session of ``session_id``, or None (unknown, idle too long, too old, or
        its certificate revoked or expired since login — then it is ended)."""
        if not session_id:
            return None
        at = time.time() if now is None else now
        with self._lock:
            session = self._by_id.get(session_id)
        if session is None:
            return None
        if at - session.seen > IDLE_SECONDS or at - session.created > SESSION_SECONDS:
            self.end(session_id)
            return None
        try:
            self._gate.identify(session.certificate)
        except PolicyViolation:
            self.end(session_id)
            return None
        session.seen = at
        return session

    def end(self, session_id: str) -> None:
        """End a session (logout)."""
        with self._lock:
            self._by_id.pop(session_id, None)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (``{"aud": "x", "aud": "coordinator"}``
    is malformed: parsers disagree on which one counts)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key is repeated")
    return out


def cookie_name(audience: str) -> str:
    """The session cookie of the dashboard for ``audience``: ``biofed_session_<12 hex>``.
    Browsers keep cookies per host, not per port, so a coordinator's and a site's
    dashboards on one machine (``127.0.0.1:8765`` and ``:8766``) need different names or
    logging in to one logs out of the other."""
    return f"{COOKIE}_{hashlib.sha256(audience.encode()).hexdigest()[:12]}"


def csrf_ok(session: Session, sent: str | None) -> bool:
    """Whether ``sent`` is ``session``'s CSRF token (constant-time comparison)."""
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), session.csrf.encode())
