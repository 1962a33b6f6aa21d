"""Serve a dashboard with uvicorn on a thread of the process that owns its data.

Security notes
--------------
A dashboard listens on loopback unless its operator says otherwise (``allow_remote``), and
off loopback only over HTTPS with the participant's consortium certificate (OWASP ASVS 4.0
V9.1.1: TLS for all client connectivity). Uvicorn's access log is off: it would print login
tokens from the query string.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from biofed.core import ConfigurationError

_START_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The certificate and key files a dashboard serves HTTPS with (a kit's cert.pem and
    key.pem)."""

    certificate: Path
    key: Path


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` → (host, port); port 0 picks a free one."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"dashboard address {listen!r} is not host:port")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RunningDashboard:
    """A dashboard being served: its :attr:`url`, and :meth:`stop`."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, url: str) -> None:
        self._server = server
        self._thread = thread
        self.url = url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (open connections get uvicorn's graceful shutdown)."""
        self._server.should_exit = True
        self._thread.join(timeout)


def serve_dashboard(
    app: ASGIApp,
    listen: str,
    *,
    tls: TlsFiles | None = None,
    allow_remote: bool = False,
    remote_flag: str = "allow_remote",
) -> RunningDashboard:
    """Serve ``app`` on ``listen`` (``host:port``) in a daemon thread; returns once it
    accepts connections.

    Raises
    ------
    ConfigurationError
        ``listen`` is not loopback and ``allow_remote`` is not set (the message names
        ``remote_flag``, the option that sets it), or is not loopback and
        no TLS files are given, or the server did not start.
    """
    host, port = parse_listen(listen)
    if not is_loopback(host):
        if not allow_remote:
            raise ConfigurationError(
                f"the dashboard listens on loopback unless {remote_flag} allows {host}"
            )
        if tls is None:
            raise ConfigurationError("a dashboard off loopback serves HTTPS only: give it TLS")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        ssl_certfile=str(tls.certificate) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
    )
    server = uvicorn.Server(config)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # reported by the caller below
            failed.append(exc)

    thread = threading.Thread(target=run, name="biofed-dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_SECONDS
    while not server.started:
        if failed or not thread.is_alive():
            raise ConfigurationError(
                f"the dashboard could not listen on {listen}" + (f": {failed[0]}" if failed else "")
            )
        if time.monotonic() > deadline:
            server.should_exit = True
            raise ConfigurationError(f"the dashboard did not start on {listen} in time")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return RunningDashboard(server, thread, f"{'https' if tls else 'http'}://{shown}:{bound}")


def serve_kit_dashboard(
    app: ASGIApp,
    listen: str,
    kit_dir: Path,
    *,
    allow_remote: bool = False,
    remote_flag: str = "allow_remote",
) -> RunningDashboard:
    """:func:`serve_dashboard` for a participant's own dashboard: plain HTTP on loopback,
    HTTPS with the kit's ``cert.pem`` and ``key.pem`` anywhere else (and only where
    ``allow_remote``)."""
    host, _ = parse_listen(listen)
    tls = None if is_loopback(host) else TlsFiles(kit_dir / "cert.pem", kit_dir / "key.pem")
    return serve_dashboard(app, listen, tls=tls, allow_remote=allow_remote, remote_flag=remote_flag)
