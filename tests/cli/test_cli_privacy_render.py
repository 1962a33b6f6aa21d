"""`biofed run status` and `biofed demo` print the job's DP guarantee and each site's spend."""

from __future__ import annotations

import io

from rich.console import Console

from biofed.cli._render import print_privacy


def test_privacy_summary_is_rendered_per_site() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=120)
    print_privacy(
        console,
        {
            "guarantee": {
                "mode": "client",
                "protects": "each site's participation",
                "noise_multiplier": 1.1,
                "delta": 1e-5,
                "max_grad_norm": 0.5,
                "accountant": "rdp",
                "rounds": 3,
            },
            "sites": {"a": {"epsilon": 1.25, "delta": 1e-5, "round": 2.0}},
            "client_level_epsilon": 2.5,
        },
    )
    text = buffer.getvalue()
    assert "client level (each site's participation), noise multiplier 1.1" in text
    assert "client-level ε so far (noise really in the sums): 2.5000" in text
    assert "1.2500" in text
