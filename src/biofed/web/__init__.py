"""biofed.web: the dashboards a coordinator serves to researchers and a node to its site's
operator.

Both are Starlette apps with pages rendered on the server (Jinja2) and charts drawn by
Chart.js (vendored in ``static/``, MIT): :class:`Dashboard` holds what they share — login
links signed with a consortium key (:func:`make_login_token`, :class:`LoginGate`),
server-side sessions, CSRF tokens, security headers — and :func:`serve_dashboard` serves
one with uvicorn on a thread of the process that owns the data (off by default, on loopback
unless configured). Authorisation is the gRPC API's: the coordinator's pages ask the same
:class:`biofed.coordinator.Coordinator` methods with the viewer's identity.
"""

from biofed.web._app import Dashboard, NavItem, chart
from biofed.web._auth import (
    COOKIE,
    CSRF_FIELD,
    DEFAULT_TOKEN_SECONDS,
    MAX_TOKEN_SECONDS,
    LoginGate,
    Session,
    audience_of,
    coordinator_audience,
    login_url,
    make_login_token,
    site_audience,
)
from biofed.web._coordinator import coordinator_dashboard, coordinator_gate
from biofed.web._serve import (
    RunningDashboard,
    TlsFiles,
    is_loopback,
    parse_listen,
    serve_dashboard,
    serve_kit_dashboard,
)
from biofed.web._site import site_dashboard

__all__ = [
    "COOKIE",
    "CSRF_FIELD",
    "DEFAULT_TOKEN_SECONDS",
    "MAX_TOKEN_SECONDS",
    "Dashboard",
    "LoginGate",
    "NavItem",
    "RunningDashboard",
    "Session",
    "TlsFiles",
    "audience_of",
    "chart",
    "coordinator_audience",
    "coordinator_dashboard",
    "coordinator_gate",
    "is_loopback",
    "login_url",
    "make_login_token",
    "parse_listen",
    "serve_dashboard",
    "serve_kit_dashboard",
    "site_audience",
    "site_dashboard",
]
