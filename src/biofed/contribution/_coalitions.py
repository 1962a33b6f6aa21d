"""A round's coalition values as published data, and exact Shapley values recomputed from them.

When a run publishes every coalition value ``v(S)`` of a round (exact Shapley computed them
all), any site can recompute the Shapley values from that table alone, without the updates
or the validation data, and check the ledger's figures for the round.

The table (JSON object, ``COALITIONS_FORMAT``)::

    {
      "format": "biofed-coalitions/1",
      "server_round": 3,
      "players": [["center-0"], ["center-1", "center-1-copy"], ...],
      "split": {"center-0": 1.0, "center-1": 0.5, "center-1-copy": 0.5, ...},
      "free_riders": ["lazy"],
      "values": [v(0), v(1), ..., v(2^n − 1)]
    }

``players`` are the game's players in order (a site, or a group of near-duplicate sites:
see :class:`~biofed.contribution.RoundGame`); ``values[mask]`` is ``v(S)`` for the
coalition whose players are the set bits of ``mask`` (bit ``k`` is ``players[k]``;
``values[0] = 0``); ``split`` is each member's fraction of its player's value (its weight
over the group's); ``free_riders`` are null players (value 0, in no coalition).

A run's ``contribution`` event (``biofed.contribution.Measured``'s round record:
``{"contributions": <Contributions.to_dict()>, "coalitions": [{"sites": [...], "value":
v(S)}, ...], "excluded": [...]}``, every evaluated non-empty coalition by its sorted sites) is
read too: its players are the recorded near-duplicate groups and the other measured sites
but the free-riders. That record carries no weights, so a group's total is recomputed and
its split between the members is the record's own.

What the table does not prove: that ``v(S)`` is the true score of the coalition model (that
needs the updates and the validation data). It lets a site check the arithmetic from
coalition values to credits, and compare the values with what it knows (e.g. ``v`` of its
own coalition, when the run tells it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from biofed.contribution._exact import MAX_EXACT_SITES, shapley_of_table
from biofed.contribution._game import RoundGame
from biofed.contribution._result import Contributions, strict_json
from biofed.core import ConfigurationError, check_id

#: The format marker of a coalition table.
COALITIONS_FORMAT = "biofed-coalitions/1"

_KEYS = ("format", "server_round", "players", "split", "free_riders", "values")
_MAX_TABLE_CHARS = 1 << 20


def coalition_table(game: RoundGame, *, server_round: int = 0) -> dict[str, Any]:
    """The round's coalition values (JSON-ready), for publication.

    Costs no evaluation: every coalition must already be known (run
    :func:`~biofed.contribution.shapley` on ``game`` first).

    Raises
    ------
    ConfigurationError
        More players than :data:`~biofed.contribution.MAX_EXACT_SITES`, or a coalition
        whose value was not computed.
    """
    if game.n > MAX_EXACT_SITES:
        raise ConfigurationError(
            f"contribution: a coalition table is for at most {MAX_EXACT_SITES} players, "
            f"this round has {game.n}"
        )
    size = 1 << game.n
    missing = sum(not game.has(m) for m in range(size))
    if missing:
        raise ConfigurationError(
            f"contribution: {missing} of the {size} coalition values are not computed; "
            "run exact shapley on the game first"
        )
    split: dict[str, float] = {}
    for k, members in enumerate(game.groups):
        unit = game.site_values(1.0 if j == k else 0.0 for j in range(game.n))
        split.update({s: unit[s] for s in members})
    return {
        "format": COALITIONS_FORMAT,
        "server_round": server_round,
        "players": [list(g) for g in game.groups],
        "split": split,
        "free_riders": list(game.free_riders),
        "values": [game.v(m) for m in range(size)],
    }


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"coalitions: {what} must be a number, got {value!r:.40}")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond float range (10**400)
        number = math.inf
    if not math.isfinite(number):
        raise ConfigurationError(f"coalitions: {what} must be finite, got {number}")
    return number


def _sites(value: object, what: str, seen: set[str]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ConfigurationError(f"coalitions: {what} must be a list of site names")
    for site in value:
        check_id(site, what=f"coalitions: a site name in {what}")
        if site in seen:
            raise ConfigurationError(f"coalitions: site {site!r} is named twice")
        seen.add(site)
    return list(value)


_RECORD_KEYS = ("contributions", "coalitions", "excluded")


def _table_from_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A round record (``Measured``'s ``contribution`` event) as a coalition table."""
    if set(record) - set(_RECORD_KEYS):
        raise ConfigurationError(
            f"coalitions: a round record has keys {sorted(map(str, record))[:10]}, "
            f"expected {sorted(_RECORD_KEYS)}"
        )
    measured = Contributions.from_dict(record["contributions"])
    riders = set(measured.free_riders)
    grouped = {s for g in measured.duplicates for s in g}
    groups = sorted(
        [list(g) for g in measured.duplicates]
        + [[s] for s in measured.values if s not in riders and s not in grouped]
    )
    if len(groups) > MAX_EXACT_SITES:
        raise ConfigurationError(
            f"coalitions: the record has {len(groups)} players; exact Shapley is for at most "
            f"{MAX_EXACT_SITES}"
        )
    player = {s: k for k, g in enumerate(groups) for s in g}
    coalitions = record["coalitions"]
    if not isinstance(coalitions, list):
        raise ConfigurationError("coalitions: the record's coalitions must be a list")
    values: list[object] = [None] * (1 << len(groups))
    values[0] = 0.0
    for entry in coalitions:
        if not isinstance(entry, Mapping) or set(entry) != {"sites", "value"}:
            raise ConfigurationError("coalitions: a coalition must be {sites, value}")
        sites = entry["sites"]
        if not isinstance(sites, list) or not all(
            isinstance(s, str) and s in player for s in sites
        ):
            raise ConfigurationError(
                f"coalitions: the coalition {str(sites)[:80]} names a site that is no player"
            )
        mask = 0
        for site in sites:
            mask |= 1 << player[site]
        whole = sorted(s for k, g in enumerate(groups) if mask >> k & 1 for s in g)
        if sorted(sites) != whole or not mask or values[mask] is not None:
            raise ConfigurationError(
                f"coalitions: the coalition {str(sites)[:80]} is not a new set of whole players"
            )
        values[mask] = entry["value"]
    missing = sum(v is None for v in values)
    if missing:
        raise ConfigurationError(
            f"coalitions: the record lacks {missing} of the {len(values) - 1} coalitions exact "
            f"Shapley needs (the round was measured by {measured.method})"
        )
    split: dict[str, float] = {}
    for group in groups:
        total = sum(measured.values[s] for s in group)
        for s in group:
            split[s] = measured.values[s] / total if total else 1.0 / len(group)
    return {
        "format": COALITIONS_FORMAT,
        "server_round": measured.server_round,
        "players": groups,
        "split": split,
        "free_riders": sorted(riders),
        "values": values,
    }


def shapley_from_table(table: Mapping[str, Any] | str) -> dict[str, float]:
    """Each site's exact Shapley value recomputed from a published coalition table.

    ``table`` is :func:`coalition_table`'s output, or a run's round record (see the module
    notes), as a mapping or its JSON text. The result
    is what :func:`~biofed.contribution.shapley` credited each site for the round (free
    riders 0, a near-duplicate group's value split by ``split``), by the same arithmetic.

    Raises
    ------
    ConfigurationError
        A table that is not in the format (one line naming what is wrong): wrong keys,
        more than :data:`~biofed.contribution.MAX_EXACT_SITES` players, not ``2^n`` finite
        values, ``values[0] ≠ 0``, a split that is not a fraction or does not sum to 1 in a
        group, a site named twice.
    """
    if isinstance(table, str):
        if len(table) > _MAX_TABLE_CHARS:
            raise ConfigurationError(f"coalitions: the table is over {_MAX_TABLE_CHARS} characters")
        try:
            table = strict_json(table)
        except ValueError as exc:
            raise ConfigurationError(f"coalitions: the table is not JSON: {exc}") from None
    if not isinstance(table, Mapping):
        raise ConfigurationError("coalitions: the table must be a JSON object")
    if "coalitions" in table and "contributions" in table:
        table = _table_from_record(table)
    if set(table) != set(_KEYS):
        raise ConfigurationError(
            f"coalitions: the table has keys {sorted(map(str, table))[:10]}, "
            f"expected {sorted(_KEYS)}"
        )
    if table["format"] != COALITIONS_FORMAT:
        raise ConfigurationError(f"coalitions: format must be {COALITIONS_FORMAT!r}")
    rnd = table["server_round"]
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
        raise ConfigurationError("coalitions: server_round must be an integer ≥ 0")
    players = table["players"]
    if not isinstance(players, list) or len(players) > MAX_EXACT_SITES:
        raise ConfigurationError(
            f"coalitions: players must be a list of at most {MAX_EXACT_SITES} groups"
        )
    seen: set[str] = set()
    groups = [_sites(g, "players", seen) for g in players]
    if any(not g for g in groups):
        raise ConfigurationError("coalitions: a player must have at least one site")
    riders = _sites(table["free_riders"], "free_riders", seen)
    split = table["split"]
    if not isinstance(split, Mapping) or set(split) != {s for g in groups for s in g}:
        raise ConfigurationError("coalitions: split must give a fraction for every player's site")
    fractions = {s: _number(split[s], f"split[{s!r}]") for s in split}
    for group in groups:
        if any(not 0.0 < fractions[s] <= 1.0 for s in group) or not math.isclose(
            sum(fractions[s] for s in group), 1.0, rel_tol=1e-9
        ):
            raise ConfigurationError(
                f"coalitions: the split of {group} must be fractions in (0, 1] summing to 1"
            )
    values = table["values"]
    n = len(groups)
    if not isinstance(values, list) or len(values) != 1 << n:
        raise ConfigurationError(f"coalitions: values must list 2^{n} = {1 << n} numbers")
    v = np.array([_number(x, f"values[{m}]") for m, x in enumerate(values)])
    if v[0] != 0.0:
        raise ConfigurationError("coalitions: values[0] (the empty coalition) must be 0")
    out = dict.fromkeys(riders, 0.0)
    for group, value in zip(groups, shapley_of_table(v, n), strict=True):
        for site in group:
            out[site] = float(value) * fractions[site]
    return out
