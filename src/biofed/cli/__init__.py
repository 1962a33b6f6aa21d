"""biofed.cli: the ``biofed`` command line (a thin layer over the SDKs)."""

from biofed.cli._app import app


def main() -> None:
    """Entry point of the ``biofed`` console script."""
    app()


__all__ = ["app", "main"]
