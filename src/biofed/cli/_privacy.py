"""``biofed privacy``: plan a study's privacy, ε for a noise multiplier or the reverse.

Exit codes: 0 done, 2 an invalid option (with what to change).
"""

import math
from typing import Annotated

import typer

from biofed.cli._common import clean_errors
from biofed.cli._names import ACCOUNTANT_NAMES
from biofed.cli._output import Format, FormatOption, print_json

app = typer.Typer(
    name="privacy",
    help="Plan differential privacy: ε for a noise multiplier, or the noise for a target ε.",
    no_args_is_help=True,
    add_completion=False,
)

_Q_HELP = "Poisson sampling rate q of a record per step (0 < q ≤ 1), e.g. batch / dataset size."
_T_HELP = "Number of steps T (≥ 1): DP-SGD steps, or rounds for client-level DP."
_D_HELP = "δ (0 < δ < 1), e.g. below 1 / number of records."
_A_HELP = f"Accountant: {' or '.join(ACCOUNTANT_NAMES)} (pld is tighter, rdp faster)."

SamplingRate = Annotated[float, typer.Option("--sampling-rate", "-q", help=_Q_HELP)]
Steps = Annotated[int, typer.Option("--steps", "-t", help=_T_HELP)]
Delta = Annotated[float, typer.Option("--delta", "-d", help=_D_HELP)]
AccountantName = Annotated[str, typer.Option("--accountant", help=_A_HELP)]


def _prepare(accountant: str) -> None:
    from biofed.privacy import make_accountant

    make_accountant(accountant)  # validates the name


def _epsilon(accountant: str, z: float, q: float, steps: int, delta: float) -> float:
    from biofed.privacy import make_accountant

    acc = make_accountant(accountant)
    acc.step(z, q, steps)
    return acc.epsilon(delta)


def _up(value: float, decimals: int = 4) -> str:
    """``value`` rounded **up** to ``decimals`` places: a printed ε never understates."""
    if not math.isfinite(value):
        return "∞"
    return f"{math.ceil(value * 10**decimals) / 10**decimals:.{decimals}f}"


def _up_significant(value: float, digits: int = 4) -> float:
    """``value`` rounded up to ``digits`` significant digits (more noise, never less)."""
    exponent = math.floor(math.log10(value)) - digits + 1
    return float(f"{math.ceil(value / 10**exponent) * 10**exponent:.{digits}g}")


@app.command("epsilon")
def epsilon_command(
    noise_multiplier: Annotated[
        float, typer.Option("--noise-multiplier", "-z", help="Noise std / clip norm (≥ 0).")
    ],
    sampling_rate: SamplingRate,
    steps: Steps,
    delta: Delta,
    accountant: AccountantName = "pld",
    output: FormatOption = Format.table,
) -> None:
    """Print the ε(δ) of T Poisson-subsampled Gaussian steps."""
    with clean_errors():
        _prepare(accountant)
        epsilon = _epsilon(accountant, noise_multiplier, sampling_rate, steps, delta)
    if output is Format.json:
        print_json(
            {
                "epsilon": epsilon if epsilon != float("inf") else None,
                "delta": delta,
                "noise_multiplier": noise_multiplier,
                "sampling_rate": sampling_rate,
                "steps": steps,
                "accountant": accountant,
            }
        )
    else:
        print(
            f"ε = {_up(epsilon)} at δ = {delta:g} "
            f"(z = {noise_multiplier:g}, q = {sampling_rate:g}, T = {steps}, {accountant})"
        )


@app.command("noise")
def noise_command(
    target_epsilon: Annotated[
        float, typer.Option("--target-epsilon", "-e", help="The ε not to exceed (> 0).")
    ],
    sampling_rate: SamplingRate,
    steps: Steps,
    delta: Delta,
    accountant: AccountantName = "pld",
    output: FormatOption = Format.table,
) -> None:
    """Print the smallest noise multiplier whose ε(δ) stays within the target, and that ε."""
    from biofed.privacy import calibrate_noise

    with clean_errors():
        _prepare(accountant)
        exact = calibrate_noise(target_epsilon, delta, sampling_rate, steps, accountant)
        # A z someone may copy: in text, rounded up (more noise), with its own ε.
        z = _up_significant(exact) if output is Format.table else exact
        epsilon = _epsilon(accountant, z, sampling_rate, steps, delta)
        if epsilon > target_epsilon:  # only if ε were not monotone at this precision
            z = exact
            epsilon = _epsilon(accountant, z, sampling_rate, steps, delta)
    if output is Format.json:
        print_json(
            {
                "noise_multiplier": z,
                "epsilon": epsilon,
                "target_epsilon": target_epsilon,
                "delta": delta,
                "sampling_rate": sampling_rate,
                "steps": steps,
                "accountant": accountant,
            }
        )
    else:
        print(f"noise multiplier z = {z:g}")
        print(
            f"ε = {_up(epsilon)} ≤ {target_epsilon:g} at δ = {delta:g} "
            f"(q = {sampling_rate:g}, T = {steps}, {accountant})"
        )
