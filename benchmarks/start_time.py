"""Start-up time of ``import biofed`` and of the command line's help.

Each case runs in a fresh interpreter (a subprocess, as a user starts it), the cases taking
turns, and the fastest of ``--repeats`` runs is kept: the machine may be shared, and the
minimum is the run the least disturbed by it. ``python -c pass`` is measured the same way, as the floor no command can beat,
and so is a bare Typer app's ``--help`` and its group's, the floor of any Typer command line.
Prints each case's seconds, its ratio to the target (≤ 1 meets it) and to ``python -c pass``.

Targets (issue 12): ``import biofed`` ≤ 0.3 s, ``biofed --help`` and ``biofed run --help``
≤ 0.5 s. To see where the time goes: ``python -X importtime -c "import biofed.cli"``.

    python benchmarks/start_time.py [--repeats N] [--json]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from _common import emit, machine, parser

#: A Typer app with one command group and biofed's settings: what Typer and Rich cost to print
#: a help page, before any of biofed's own work (a group's help also imports pydantic, with
#: which Typer coerces the root's options).
_BARE_TYPER = """
import typer
app = typer.Typer(no_args_is_help=True, add_completion=False)
group = typer.Typer(no_args_is_help=True)
app.add_typer(group, name="group")
@group.command()
def hello(name: str = "x") -> None:
    "Say hello."
@app.callback()
def root() -> None:
    "A bare Typer app."
app()
"""


def _biofed() -> list[str]:
    """The ``biofed`` console script installed beside this interpreter, else ``-m biofed``."""
    script = Path(sys.executable).with_name("biofed")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "biofed"]


#: Case name → (the command line, target seconds or None for a floor).
CASES: dict[str, tuple[list[str], float | None]] = {
    "python -c pass": ([sys.executable, "-c", "pass"], None),
    "bare typer --help": ([sys.executable, "-c", _BARE_TYPER, "--help"], None),
    "bare typer group --help": ([sys.executable, "-c", _BARE_TYPER, "group", "--help"], None),
    "import biofed": ([sys.executable, "-c", "import biofed"], 0.3),
    "biofed --help": ([*_biofed(), "--help"], 0.5),
    "biofed run --help": ([*_biofed(), "run", "--help"], 0.5),
}


def fastest(cases: dict[str, list[str]], repeats: int) -> dict[str, float]:
    """Fastest wall time of ``repeats`` runs of each command line (output discarded). The
    cases take turns, so a burst of load on a shared machine slows one run of each, not
    every run of one."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeats):
        for name, argv in cases.items():
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="runs per case; the fastest is kept")
    args = p.parse_args()
    seconds = fastest({name: argv for name, (argv, _) in CASES.items()}, args.repeats)
    floor = seconds["python -c pass"]
    cases = []
    for name, (_, target) in CASES.items():
        cases.append(
            {
                "case": name,
                "seconds": round(seconds[name], 4),
                "target": target,
                "vs_target": None if target is None else round(seconds[name] / target, 3),
                "vs_floor": round(seconds[name] / floor, 2),
            }
        )
    if not args.json:
        print(f"fastest of {args.repeats} runs each (a fresh interpreter per run)")
        print(f"{'case':<24} {'seconds':>8} {'target':>7} {'÷ target':>9} {'÷ floor':>8}")
        for c in cases:
            target = "—" if c["target"] is None else f"{c['target']:.1f}"
            ratio = "—" if c["vs_target"] is None else f"{c['vs_target']:.2f}"
            print(
                f"{c['case']:<24} {c['seconds']:>8.3f} {target:>7} {ratio:>9} {c['vs_floor']:>8.1f}"
            )
    emit(
        {"benchmark": "start_time", "repeats": args.repeats, "cases": cases, **machine()}, args.json
    )


if __name__ == "__main__":
    main()
