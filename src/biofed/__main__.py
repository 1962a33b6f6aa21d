"""``python -m biofed`` runs the command line."""

from biofed.cli import main

main()
