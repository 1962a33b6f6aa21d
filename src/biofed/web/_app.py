"""The part every biofed dashboard shares: login, sessions, CSRF, security headers, pages.

Built on Starlette (routing, requests, responses, static files) with Jinja2 templates
rendered on the server; the only script a page runs is ours (``static/charts.js``) and
Chart.js, so the Content-Security-Policy forbids every inline script and every other
origin. Chart data travel inside the page as ``data-chart`` JSON attributes.

A dashboard is a :class:`Dashboard`: its pages are Starlette routes whose endpoints call
:meth:`Dashboard.viewer` (who is logged in) and :meth:`Dashboard.form` (a POST's fields,
after the CSRF check), and render with :meth:`Dashboard.page`.

Security notes
--------------
See :mod:`biofed.web._auth` for authentication, sessions and CSRF. Here: every response
carries a strict Content-Security-Policy (no inline script, no foreign origin, no framing:
OWASP ASVS 4.0 V14.4), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
same-origin`` (no URL leaves for another site; ``no-referrer`` would make browsers send
``Origin: null`` with the dashboard's own form posts, which the Origin check refuses) and
``Cache-Control: no-store`` on pages; Jinja2 autoescapes every value
(run ids, site names and messages come from job files and sites: ASVS V5.3.3).

Login CSRF (OWASP CSRF Prevention Cheat Sheet, "login CSRF"): a login link logs in at once
when the participant opens it themselves (typed, pasted, or from a terminal: the browser
sends ``Sec-Fetch-Site: none``, or nothing); one that another site's page sent the browser
to — another participant's own link, to make the victim work in the attacker's session —
only shows whose link it is, and logs in on a click: a POST whose ``Origin`` and
``Sec-Fetch-Site`` must be this dashboard's own. The session cookie's name is the
dashboard's own (:func:`~biofed.web._auth.cookie_name`): browsers share cookies between
the ports of one host.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from biofed.core import BiofedError, PolicyViolation
from biofed.web._auth import CSRF_FIELD, LoginGate, Session, Sessions, cookie_name, csrf_ok

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"

T = TypeVar("T")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """ASGI middleware adding the security headers to every response, and ``no-store`` to
    everything but the static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = (
                    [h for h in message.get("headers", []) if h[0].lower() != b"cache-control"]
                    if not static
                    else list(message.get("headers", []))
                )
                headers.extend(_HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


@dataclass(frozen=True, slots=True)
class NavItem:
    """One link of a dashboard's navigation bar."""

    label: str
    path: str


def chart(
    kind: str, labels: Sequence[Any], series: Mapping[str, Sequence[Any]], **opts: Any
) -> str:
    """The ``data-chart`` attribute value for ``static/charts.js``: a Chart.js chart of
    ``kind`` (``line``, ``bar``, ``scatter``, ``stepped``) with one dataset per ``series``
    entry over ``labels``. ``opts`` (``x_label``, ``y_label``, ``title``) label the axes.
    Non-finite numbers become gaps (JSON null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            return None
        return v

    return json.dumps(
        {
            "kind": kind,
            "labels": [clean(x) for x in labels],
            "series": {name: [clean(v) for v in values] for name, values in series.items()},
            **opts,
        },
        allow_nan=False,
    )


class Dashboard:
    """A dashboard's shared machinery: its login gate, sessions, templates and nav.

    Parameters
    ----------
    title:
        Shown in every page's header (``biofed · coordinator``).
    gate:
        Who may log in.
    nav:
        The navigation bar's links.
    templates:
        Extra template folders, searched before the shared one.
    """

    def __init__(
        self,
        *,
        title: str,
        gate: LoginGate,
        nav: Sequence[NavItem] = (),
        templates: Sequence[Path] = (),
        help_login: str = "biofed dashboard link --kit YOUR_KIT",
    ) -> None:
        self.title = title
        self.gate = gate
        self.sessions = Sessions(gate)
        self.cookie = cookie_name(gate.audience)
        self.nav = tuple(nav)
        self.help_login = help_login
        self.env = Environment(
            loader=ChoiceLoader([FileSystemLoader([*map(str, templates), str(TEMPLATES)])]),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )

    # -- who is there ---------------------------------------------------------------------------
    def session(self, request: Request) -> Session | None:
        """The request's live session, if any."""
        return self.sessions.get(request.cookies.get(self.cookie))

    def viewer(self, request: Request) -> Session:
        """The logged-in participant; 401 (with how to log in) when nobody is."""
        session = self.session(request)
        if session is None:
            raise HTTPException(401, "log in with a login link")
        return session

    async def form(self, request: Request) -> tuple[Session, FormData]:
        """A POST's session and fields, after the CSRF check (403 when it fails).

        Every state-changing endpoint reads its input through here and nowhere else.
        """
        session = self.viewer(request)
        if request.method != "POST":
            raise HTTPException(405, "actions are POST requests")
        origin = request.headers.get("origin")
        if origin is not None and origin != _origin_of(request):
            raise HTTPException(403, "the request came from another site")
        form = await request.form(max_files=0, max_fields=64, max_part_size=64 * 1024)
        sent = form.get(CSRF_FIELD)
        if not csrf_ok(
            session, sent if isinstance(sent, str) else request.headers.get("x-csrf-token")
        ):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page")
        return session, form

    # -- pages ----------------------------------------------------------------------------------
    def page(
        self, request: Request, template: str, context: Mapping[str, Any], status: int = 200
    ) -> HTMLResponse:
        """Render ``template`` with ``context`` plus the viewer, CSRF token and nav."""
        session = self.session(request)
        html = self.env.get_template(template).render(
            {
                "title": self.title,
                "nav": self.nav,
                "path": request.url.path,
                "viewer": session,
                "csrf_field": CSRF_FIELD,
                "csrf": session.csrf if session else "",
                **context,
            }
        )
        return HTMLResponse(html, status_code=status)

    # -- the app --------------------------------------------------------------------------------
    async def _login(self, request: Request) -> Response:
        """A login link opened: log in, or — when the browser says another site sent it
        here (login CSRF) — show whose link it is with a button that logs in."""
        if request.method == "POST":
            if not _same_origin_post(request):
                return self._refused(request, "the login came from another site")
            form = await request.form(max_files=0, max_fields=4, max_part_size=16 * 1024)
            sent = form.get("token")
            token = sent if isinstance(sent, str) else ""
        else:
            token = request.query_params.get("token", "")
        cross_site = request.method == "GET" and request.headers.get("sec-fetch-site") not in (
            None,
            "none",
            "same-origin",
        )
        try:
            peer, certificate = self.gate.verify(token, consume=not cross_site)
        except PolicyViolation as exc:
            return self._refused(request, str(exc))
        if cross_site:
            return self.page(
                request,
                "login.html",
                {"peer": peer, "token": token, "help_login": self.help_login},
            )
        session = self.sessions.start(peer, certificate)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            self.cookie,
            session.id,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def _logout(self, request: Request) -> Response:
        session, _ = await self.form(request)
        self.sessions.end(session.id)
        response = RedirectResponse("/login-required", status_code=303)
        response.delete_cookie(self.cookie, path="/")
        return response

    def _refused(self, request: Request, message: str) -> Response:
        return self.page(
            request,
            "error.html",
            {"status": 403, "message": message, "help_login": self.help_login},
            403,
        )

    async def _login_required(self, request: Request) -> Response:
        return self.page(
            request,
            "error.html",
            {"status": 401, "message": "log in with a login link", "help_login": self.help_login},
            401,
        )

    async def _error(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            status, detail = exc.status_code, exc.detail
        elif isinstance(exc, PolicyViolation):
            status, detail = 403, str(exc)
        elif isinstance(exc, LookupError):
            status, detail = 404, str(exc.args[0]) if exc.args else "not found"
        else:
            status, detail = 400, str(exc)
        if status == 401:
            return RedirectResponse("/login-required", status_code=303)
        return self.page(
            request,
            "error.html",
            {"status": status, "message": detail, "help_login": self.help_login},
            status,
        )

    def app(self, routes: Sequence[BaseRoute]) -> Starlette:
        """The ASGI app: ``routes`` plus login, logout, health and the static files.

        A biofed error raised by a page (a refusal, a bad value) becomes an error page
        with its one-line message, never a traceback.
        """

        async def health(request: Request) -> Response:
            return PlainTextResponse("ok")

        handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
            HTTPException: self._error,
            BiofedError: self._error,
            LookupError: self._error,
        }
        return Starlette(
            routes=[
                Route("/login", self._login, methods=["GET", "POST"]),
                Route("/logout", self._logout, methods=["POST"]),
                Route("/login-required", self._login_required, methods=["GET"]),
                Route("/healthz", health, methods=["GET"]),
                Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
                *routes,
            ],
            middleware=[Middleware(SecurityHeaders)],
            exception_handlers=handlers,
        )


class FileMemo(Generic[T]):
    """The last value computed from a file, computed again only once the file changed
    (its inode, size, modification or change time) or :attr:`seconds` passed, and by one
    request at a time — the others wait for it and share it.

    Verifying a signed audit log costs about a millisecond an entry: without this, every
    view of an audit page of a 100,000-entry log would verify it again, and a few reloads
    would keep the dashboard's CPU busy (insider denial of service).
    """

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._value: T | None = None

    def get(self, path: Path, compute: Callable[[], T]) -> T:
        """``compute()``'s value for ``path`` as it is now."""
        with self._lock:
            try:
                st = path.stat()
                key: tuple[object, ...] = (
                    st.st_dev,
                    st.st_ino,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    int(time.monotonic() // self.seconds),
                )
            except OSError:
                key = ("absent", time.monotonic())  # never the same: computed each time
            if self._key != key or self._value is None:
                self._value = compute()
                self._key = key
            return self._value


def _origin_of(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _same_origin_post(request: Request) -> bool:
    """Whether a POST says it came from this dashboard's own page (``Origin`` and
    ``Sec-Fetch-Site`` where the browser sends them)."""
    origin = request.headers.get("origin")
    fetch_site = request.headers.get("sec-fetch-site")
    return (origin is None or origin == _origin_of(request)) and fetch_site in (
        None,
        "same-origin",
    )
