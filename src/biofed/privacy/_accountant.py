"""Privacy accountants: one small interface over dp-accounting's RDP and PLD accountants.

dp-accounting is imported where an ε is computed, not with this module: it takes a second or
more to import (SciPy's statistics, mpmath), and every node, coordinator and CLI process
imports :mod:`biofed.privacy` whether or not it ever accounts for a DP run.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from biofed.core import ConfigurationError, PayloadError
from biofed.core.checks import check_float
from biofed.privacy import _dpa_logs
from biofed.privacy._checks import (
    check_delta,
    check_non_negative,
    check_sampling_rate,
    check_steps,
)

#: The accountant names :func:`make_accountant` understands.
ACCOUNTANTS = ("pld", "rdp")
#: PLD discretisation (dp-accounting's default; the reference table uses it).
PLD_VALUE_DISCRETIZATION_INTERVAL = 1e-4
_FORMAT = "biofed.privacy.accountant"
_EVENT_KEYS = ("noise_multiplier", "sampling_rate", "steps")
_VERSION = 1

_dpa_logs.install()  # dp-accounting's "failed to converge" warnings: DEBUG, not the site's log


def _dp_accounting() -> Any:
    """dp-accounting with its RDP and PLD accountants, imported on first use (see above)."""
    import dp_accounting  # type: ignore[import-untyped, unused-ignore]
    import dp_accounting.pld  # type: ignore[import-untyped, unused-ignore]
    import dp_accounting.rdp  # type: ignore[import-untyped, unused-ignore]

    return dp_accounting


@dataclass(frozen=True, slots=True, kw_only=True)
class SampledGaussian:
    """``steps`` runs of the Poisson-subsampled Gaussian mechanism.

    Parameters
    ----------
    noise_multiplier:
        z = noise std / L2 sensitivity (≥ 0; 0 means no privacy).
    sampling_rate:
        q, the probability that one record (or contributor) takes part in a step; 0 < q ≤ 1.
    steps:
        How many such steps (≥ 1).
    """

    noise_multiplier: float
    sampling_rate: float
    steps: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "noise_multiplier", check_non_negative(self.noise_multiplier, "noise_multiplier")
        )
        object.__setattr__(self, "sampling_rate", check_sampling_rate(self.sampling_rate))
        object.__setattr__(self, "steps", check_steps(self.steps))

    def to_dict(self) -> dict[str, float | int]:
        """The event as JSON-ready values: the one serialised form of an accountant's history
        (in :meth:`Accountant.to_bytes`, and in the mechanism text a node's ledger keeps with
        each debit)."""
        return {
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampledGaussian:
        """The event from :meth:`to_dict`'s keys (other keys, such as labels stored beside
        them, are ignored).

        Raises
        ------
        ConfigurationError
            If a key is missing or a value is out of range.
        """
        missing = [k for k in _EVENT_KEYS if k not in data]
        if missing:
            raise ConfigurationError(f"a sampled-Gaussian event needs {', '.join(missing)}")
        return cls(
            noise_multiplier=data["noise_multiplier"],
            sampling_rate=data["sampling_rate"],
            steps=data["steps"],
        )

    def to_dp_event(self) -> Any:
        """The matching ``dp_accounting`` event (self-composed Poisson-sampled Gaussian)."""
        dpa = _dp_accounting()
        gaussian = dpa.GaussianDpEvent(self.noise_multiplier)
        sampled = dpa.PoissonSampledDpEvent(self.sampling_rate, gaussian)
        return dpa.SelfComposedDpEvent(sampled, self.steps)


class Accountant(ABC):
    """Tracks the privacy spent by a sequence of subsampled Gaussian steps.

    Add/remove-one adjacency throughout, as for Poisson subsampling. The state is the event
    history; ε(δ) is recomputed from it, so the history is all that needs storing.

    Privacy notes
    -------------
    An accountant is only as honest as the steps it is told about: record a step for every
    release, with the noise that was **actually** in it (fewer contributors than planned in
    distributed noise means less noise). Both implementations give upper bounds on ε:
    RDP (Mironov 2017, "Rényi Differential Privacy"; Mironov, Talwar, Zhang 2019) is looser,
    PLD (Koskela et al. 2020; Doroshenko et al. 2022, "Connect the Dots") is near-tight.
    """

    #: Short name used by :func:`make_accountant` and in :meth:`to_bytes`.
    name: ClassVar[str]

    def __init__(self, events: Sequence[SampledGaussian] = ()) -> None:
        self._events: list[SampledGaussian] = []
        for event in events:
            self._append(event)

    # The interface ---------------------------------------------------------------------------
    def step(self, noise_multiplier: float, sampling_rate: float, steps: int = 1) -> None:
        """Record ``steps`` Poisson-subsampled Gaussian steps.

        Raises
        ------
        ConfigurationError
            If z < 0, q ∉ (0, 1] or steps < 1 (nothing is recorded then).
        """
        self._append(
            SampledGaussian(
                noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, steps=steps
            )
        )

    def epsilon(self, delta: float) -> float:
        """The ε such that everything recorded so far is (ε, δ)-DP (``inf`` when unbounded)."""
        d = check_delta(delta)
        if not self._events:
            return 0.0
        if any(e.noise_multiplier == 0 for e in self._events):
            return math.inf
        return float(self._epsilon(self._events, d))

    def to_bytes(self) -> bytes:
        """The accountant as UTF-8 JSON: its name, settings and event history (no pickle)."""
        document = {
            "format": _FORMAT,
            "version": _VERSION,
            "accountant": self.name,
            "settings": self._settings(),
            "events": [e.to_dict() for e in self._events],
        }
        return json.dumps(document, allow_nan=False, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Accountant:
        """An accountant from :meth:`to_bytes`'s output.

        On :class:`Accountant` itself it returns whichever kind the bytes name; on a subclass
        it insists on that kind.

        Raises
        ------
        PayloadError
            If the bytes are not such a document (or name another kind than ``cls``).
        """
        document = _parse(data)
        kind = document["accountant"]
        if kind not in _KINDS:
            raise PayloadError(f"unknown accountant {kind!r}; expected one of {ACCOUNTANTS}")
        target = _KINDS[kind]
        if cls is not Accountant and target is not cls:
            raise PayloadError(f"these bytes hold a {kind!r} accountant, not {cls.name!r}")
        try:
            events = [SampledGaussian.from_dict(e) for e in document["events"]]
            return target._restore(document["settings"], events)
        except (ConfigurationError, TypeError) as exc:
            raise PayloadError(f"invalid accountant state: {exc}") from exc

    # Helpers -----------------------------------------------------------------------------
    @property
    def events(self) -> tuple[SampledGaussian, ...]:
        """The recorded history (consecutive identical steps merged)."""
        return tuple(self._events)

    def copy(self) -> Accountant:
        """An independent accountant with the same history (to ask "what if one more step?")."""
        return type(self)._restore(self._settings(), self._events)

    def __repr__(self) -> str:
        steps = sum(e.steps for e in self._events)
        return f"{type(self).__name__}({len(self._events)} events, {steps} steps)"

    def _append(self, event: SampledGaussian) -> None:
        last = self._events[-1] if self._events else None
        if (
            last is not None
            and last.noise_multiplier == event.noise_multiplier
            and last.sampling_rate == event.sampling_rate
        ):
            # One self-composition of T steps is much cheaper for PLD than T compositions.
            self._events[-1] = SampledGaussian(
                noise_multiplier=last.noise_multiplier,
                sampling_rate=last.sampling_rate,
                steps=last.steps + event.steps,
            )
        else:
            self._events.append(event)

    # For implementations ---------------------------------------------------------------------
    @abstractmethod
    def _epsilon(self, events: Sequence[SampledGaussian], delta: float) -> float:
        """ε(δ) of a non-empty history whose noise multipliers are all > 0."""

    def _settings(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _restore(cls, settings: dict[str, Any], events: Sequence[SampledGaussian]) -> Accountant:
        if settings:
            raise ConfigurationError(f"{cls.name} accountant takes no settings, got {settings}")
        return cls(events)


class RdpAccountant(Accountant):
    """Rényi-DP accounting (``dp_accounting.rdp.RdpAccountant``, its default orders).

    Fast at any number of steps; a looser upper bound than :class:`PldAccountant`.
    """

    name = "rdp"

    def _epsilon(self, events: Sequence[SampledGaussian], delta: float) -> float:
        accountant = _dp_accounting().rdp.RdpAccountant()
        for event in events:
            accountant.compose(event.to_dp_event())
        return float(accountant.get_epsilon(delta))


class PldAccountant(Accountant):
    """Privacy-loss-distribution accounting (``dp_accounting.pld.PLDAccountant``).

    Near-tight (pessimistic discretisation, so still an upper bound); slower than RDP,
    increasingly so as ε grows.

    Parameters
    ----------
    events:
        A history to start from.
    value_discretization_interval:
        The PLD grid step; 1e-4 (the default) matches the reference values. Larger is
        faster and looser.
    """

    name = "pld"

    def __init__(
        self,
        events: Sequence[SampledGaussian] = (),
        *,
        value_discretization_interval: float = PLD_VALUE_DISCRETIZATION_INTERVAL,
    ) -> None:
        self.value_discretization_interval = check_float(
            value_discretization_interval, "value_discretization_interval", above=0
        )
        super().__init__(events)

    def _epsilon(self, events: Sequence[SampledGaussian], delta: float) -> float:
        interval = self.value_discretization_interval
        accountant = _dp_accounting().pld.PLDAccountant(value_discretization_interval=interval)
        for event in events:
            accountant.compose(event.to_dp_event())
        return float(accountant.get_epsilon(delta))

    def _settings(self) -> dict[str, Any]:
        return {"value_discretization_interval": self.value_discretization_interval}

    @classmethod
    def _restore(cls, settings: dict[str, Any], events: Sequence[SampledGaussian]) -> Accountant:
        unknown = set(settings) - {"value_discretization_interval"}
        if unknown:
            raise ConfigurationError(f"unknown pld settings {sorted(unknown)}")
        return cls(
            events,
            value_discretization_interval=settings.get(
                "value_discretization_interval", PLD_VALUE_DISCRETIZATION_INTERVAL
            ),
        )


_KINDS: dict[str, type[Accountant]] = {"pld": PldAccountant, "rdp": RdpAccountant}


def make_accountant(name: str) -> Accountant:
    """A fresh accountant by name: ``"pld"`` (near-tight) or ``"rdp"`` (fast, looser)."""
    if name not in _KINDS:
        choices = " or ".join(ACCOUNTANTS)
        raise ConfigurationError(f"accountant must be {choices}, got {name!r}")
    return _KINDS[name]()


def _reject_constant(token: str) -> None:
    raise PayloadError(f"accountant state holds {token}, which is not a number JSON allows")


def _parse(data: bytes) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PayloadError(f"accountant state must be bytes, got {type(data).__name__}")
    try:
        document = json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(f"accountant state is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise PayloadError(f"not a biofed accountant state (format must be {_FORMAT!r})")
    if document.get("version") != _VERSION:
        raise PayloadError(
            f"accountant state version {document.get('version')!r} is not supported "
            f"(this biofed reads version {_VERSION})"
        )
    keys = {"format", "version", "accountant", "settings", "events"}
    if set(document) != keys:
        raise PayloadError(f"accountant state needs exactly the keys {sorted(keys)}")
    if not isinstance(document["settings"], dict) or not isinstance(document["events"], list):
        raise PayloadError("accountant state: settings must be an object and events a list")
    for event in document["events"]:
        if not isinstance(event, dict) or set(event) != set(_EVENT_KEYS):
            raise PayloadError(
                "accountant state: each event needs noise_multiplier, sampling_rate and steps"
            )
    return document
