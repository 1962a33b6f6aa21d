"""How far each site's data is from the rest of the consortium, from federated summaries only.

The input is what every site already sent in the last pass of federated preprocessing (its
:class:`SiteSummary`: record count, outcome counts, per-feature moments, histograms on common
edges, category counts); no further query reaches a site, and nothing is computed that a
library already offers on these inputs (SciPy's distances need the records themselves).

**Against whom.** Each site is compared with the **other sites pooled** (leave-one-out), not
with all sites: a pool that holds the site shrinks its difference by its own weight (a site with
60 % of the records would be compared mostly with itself). Leave-one-out alone has the opposite
fault, *swamping*: one shifted site moves every other site's reference, so all of them look
shifted. So for each measure the sites that stand out are taken out of the reference one at a
time, the most extreme first, while one is over the threshold and more than two sites are left
(backward elimination, as in outlier detection by forward search; Atkinson & Riani 2000); every
site is then compared with the remaining *core* sites other than itself, and
:attr:`HeterogeneityFinding.left_out` names the sites its reference left out.

Measures, each flagged when over its threshold:

* **quantity skew**: the site's records as a ratio to the median site's (flagged outside
  ``[1/size_ratio, size_ratio]``; the median, like the core below, is not moved by one site
  that is much larger than the rest);
* **outcome**: prevalence (binary) or event proportion (time to event, with events per unit of
  follow-up beside it), compared as a standardised difference of two proportions;
* **SMD** per numeric feature: ``(mean_site − mean_ref) / sqrt((s²_site + s²_ref) / 2)``, the
  form Austin (2009, Stat Med 28:3083) uses for balance diagnostics; for 0/1 features the
  variances are ``p(1 − p)`` (Austin 2009, Commun Stat Simul Comput 38:1228). The default
  threshold, 0.2, is Cohen's "small" standardised effect; balance checks after matching often
  use 0.1;
* **distribution shift** per numeric feature, from the histograms on common edges: the
  1-Wasserstein distance in units of the same pooled standard deviation (for a pure shift it
  equals the SMD; it also sees changes of spread and shape) and the largest difference of the
  two cumulative distributions (the Kolmogorov–Smirnov statistic, on the bars). Values are taken
  to spread evenly inside a bar, so both are exact to within a bar's width (the bars are those
  disclosure control leaves, below);
* **missingness**: the share of a feature's values that are missing, flagged when it differs
  from the reference's by more than ``missing_threshold``;
* **categories**: each category's share, compared as a standardised difference of proportions.

Privacy notes
-------------
Threat: a reader of the report learns about a handful of patients — a count below the
consortium's disclosure threshold ``min_cell`` shown outright, or recovered by subtracting shown
numbers from one another (the differencing attack that primary cell suppression alone leaves
open; Hundepool et al., *Statistical Disclosure Control*, Wiley 2012, on secondary suppression
and global recoding). Rules:

* every count the report rests on is 0 or at least ``min_cell``: a site with fewer records is
  listed as suppressed; a site's block (its outcome; one feature) that rests on a count in
  ``1 … min_cell − 1`` — values present or missing, the ones or zeros of a 0/1 feature,
  positives or negatives — is withheld;
* a withheld site or block enters **no** other number (not the totals, not the other sites'
  references), so it cannot be recovered by differencing;
* histograms and categories are coarsened until every cell is safe
  (:mod:`biofed.data._disclosure`), and the distances are computed on the coarsened bars;
* means and standard deviations are over at least ``min_cell`` values; numbers are rounded to
  4 decimals in :meth:`HeterogeneityReport.to_json`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from biofed.core import Array, ConfigurationError, DataError
from biofed.data._disclosure import OTHER, Recoded, merge_bars, recode, safe
from biofed.data._summary import NumericStats, SiteSummary

DEFAULT_SMD_THRESHOLD = 0.2
DEFAULT_DISTANCE_THRESHOLD = 0.2
DEFAULT_KS_THRESHOLD = 0.1
DEFAULT_MISSING_THRESHOLD = 0.1
DEFAULT_SIZE_RATIO = 2.0
#: Measures in the order a table shows them.
MEASURES = ("records", "outcome", "smd", "wasserstein", "ks", "missing", "category")

# (value at the site, value of the reference, score) for one site against reference sites.
_Compare = Callable[[str, Sequence[str]], tuple[float | None, float | None, float]]


@dataclass(frozen=True, slots=True, kw_only=True)
class HeterogeneityFinding:
    """One comparison of one site with the other sites.

    Attributes
    ----------
    site, feature, category:
        What is compared (``feature`` is ``""`` for records and outcome; ``category`` is
        ``""`` except for category shares).
    measure:
        One of :data:`MEASURES`.
    value, reference:
        The site's statistic and the reference's: share of records (the median site's),
        prevalence or event proportion, mean, share missing, category share; ``None`` for the
        distances.
    score:
        What is held against the threshold: size ratio, SMD, distance, share difference.
    flagged:
        ``|score|`` over the threshold (the size ratio: outside ``[1/t, t]``).
    left_out:
        Sites the reference leaves out because they stand out themselves (see the module).
    note:
        Why the comparison is withheld or not made (``score`` is then ``None``).
    """

    site: str
    feature: str = ""
    category: str = ""
    measure: str
    value: float | None = None
    reference: float | None = None
    score: float | None = None
    threshold: float
    flagged: bool = False
    left_out: tuple[str, ...] = ()
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (numbers rounded to 4 decimals)."""
        return {
            "site": self.site,
            "feature": self.feature,
            "category": self.category,
            "measure": self.measure,
            "value": _round(self.value),
            "reference": _round(self.reference),
            "score": _round(self.score),
            "threshold": self.threshold,
            "flagged": self.flagged,
            "left_out": list(self.left_out),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteOverview:
    """One site's headline numbers (``None`` where withheld)."""

    site: str
    records: int | None
    share: float | None = None
    outcome: float | None = None  # prevalence or event proportion
    event_rate: float | None = None  # events per unit of follow-up (time to event)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "site": self.site,
            "records": self.records,
            "share": _round(self.share),
            "outcome": _round(self.outcome),
            "event_rate": _round(self.event_rate, 6),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureHistogram:
    """One numeric feature's disclosure-controlled histogram at each shown site.

    ``edges`` are the merged bars' boundaries (``len(edges) − 1`` bars; the outermost also hold
    the values beyond them); ``counts[site]`` has one count per bar, each 0 or ≥ ``min_cell``.
    """

    feature: str
    edges: tuple[float, ...]
    counts: Mapping[str, tuple[int, ...]]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "feature": self.feature,
            "edges": [_round(e, 6) for e in self.edges],
            "counts": {site: list(c) for site, c in self.counts.items()},
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class HeterogeneityReport:
    """Each site against the rest of the consortium, disclosure-controlled.

    Build it with :func:`heterogeneity_report`; every number in it is safe to show.
    """

    min_cell: int
    thresholds: Mapping[str, float]
    outcome_kind: str  # "binary", "time_to_event", or "" when no outcome was summarised
    sites: tuple[SiteOverview, ...]
    findings: tuple[HeterogeneityFinding, ...]
    histograms: tuple[FeatureHistogram, ...] = ()
    total_records: int = 0  # over the shown sites only

    @property
    def flags(self) -> tuple[HeterogeneityFinding, ...]:
        """The flagged findings."""
        return tuple(f for f in self.findings if f.flagged)

    def ranked(self) -> list[HeterogeneityFinding]:
        """The findings, flagged first, then by site, feature, measure and category."""
        order = {m: i for i, m in enumerate(MEASURES)}
        return sorted(
            self.findings,
            key=lambda f: (not f.flagged, f.site, f.feature, order[f.measure], f.category),
        )

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per finding, in :meth:`ranked` order (a table's rows)."""
        return [f.to_json() for f in self.ranked()]

    def to_json(self) -> dict[str, Any]:
        """The whole report as a JSON-ready dict."""
        return {
            "min_cell": self.min_cell,
            "comparison": "each site against the other sites pooled, outliers left out",
            "thresholds": dict(self.thresholds),
            "outcome_kind": self.outcome_kind,
            "total_records": self.total_records,
            "sites": [s.to_json() for s in self.sites],
            "flags": len(self.flags),
            "findings": self.rows(),
            "histograms": [h.to_json() for h in self.histograms],
        }


def heterogeneity_report(
    summaries: Mapping[str, SiteSummary],
    *,
    min_cell: int,
    smd_threshold: float = DEFAULT_SMD_THRESHOLD,
    distance_threshold: float = DEFAULT_DISTANCE_THRESHOLD,
    ks_threshold: float = DEFAULT_KS_THRESHOLD,
    missing_threshold: float = DEFAULT_MISSING_THRESHOLD,
    size_ratio: float = DEFAULT_SIZE_RATIO,
    binary: Sequence[str] = (),
) -> HeterogeneityReport:
    """Compare every site with the other sites, from their summaries only.

    Parameters
    ----------
    summaries:
        Site name → the site's summary of its training rows (the final preprocessing pass's,
        :attr:`PreprocessingFit.last_summaries`, which carries histograms on common edges).
    min_cell:
        The disclosure threshold: no number rests on a count in ``1 … min_cell − 1``.
    smd_threshold:
        Flag ``|SMD|`` over this (features, outcome, categories).
    distance_threshold:
        Flag a 1-Wasserstein distance, in pooled standard deviations, over this.
    ks_threshold:
        Flag a largest difference of the cumulative distributions over this.
    missing_threshold:
        Flag a share of missing values differing from the reference's by more than this.
    size_ratio:
        Flag records over ``size_ratio`` or under ``1/size_ratio`` times the median site's.
    binary:
        Numeric features that are 0/1 indicators (also recognised from their moments).

    Raises
    ------
    ConfigurationError
        ``min_cell`` or a threshold out of range.
    DataError
        No summaries, outcomes of different kinds, or histograms on different edges.
    """
    if isinstance(min_cell, bool) or not isinstance(min_cell, int) or min_cell < 1:
        raise ConfigurationError(f"min_cell must be an integer ≥ 1, got {min_cell!r}")
    thresholds = {
        "smd": smd_threshold,
        "wasserstein": distance_threshold,
        "ks": ks_threshold,
        "missing": missing_threshold,
        "size_ratio": size_ratio,
    }
    for name, value in thresholds.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigurationError(f"{name} threshold must be a number > 0, got {value!r}")
        if not math.isfinite(value):
            raise ConfigurationError(f"{name} threshold must be finite, got {value!r}")
    if size_ratio <= 1:
        raise ConfigurationError(f"size_ratio must be > 1, got {size_ratio!r}")
    if not summaries:
        raise DataError("no site summaries to compare")
    for site, summary in summaries.items():
        if not isinstance(summary, SiteSummary):
            raise DataError(f"site {site!r}: not a SiteSummary")

    k = min_cell
    shown = sorted(s for s in summaries if summaries[s].records >= k)
    records = {s: summaries[s].records for s in shown}
    total = sum(records.values())
    overviews = {
        s: SiteOverview(
            site=s,
            records=0 if summaries[s].records == 0 else None,
            note=f"fewer than {k} records" if summaries[s].records else "no records",
        )
        for s in summaries
        if s not in shown
    }
    findings: list[HeterogeneityFinding] = []
    typical = float(np.median(list(records.values()))) if shown else 0.0
    for site in shown:
        ratio = records[site] / typical
        overviews[site] = SiteOverview(
            site=site, records=records[site], share=records[site] / total
        )
        findings.append(
            HeterogeneityFinding(
                site=site,
                measure="records",
                value=records[site] / total,
                reference=typical / total,
                score=ratio,
                threshold=size_ratio,
                flagged=ratio > size_ratio or ratio < 1 / size_ratio,
            )
        )
    outcome_kind = _outcome_kind([summaries[s] for s in shown])
    if outcome_kind:
        found, rates = _outcome(summaries, shown, outcome_kind, k, smd_threshold)
        findings += found
        for site, (p, rate) in rates.items():
            overviews[site] = SiteOverview(
                site=site,
                records=records[site],
                share=records[site] / total,
                outcome=p,
                event_rate=rate,
            )
    histograms: list[FeatureHistogram] = []
    for name in sorted({n for s in shown for n in summaries[s].numeric}):
        stats = {s: summaries[s].numeric[name] for s in shown if name in summaries[s].numeric}
        found_numeric, histogram = _numeric_feature(name, stats, k, thresholds, name in binary)
        findings += found_numeric
        if histogram is not None:
            histograms.append(histogram)
    for name in sorted({n for s in shown for n in summaries[s].categorical}):
        tables = {
            s: summaries[s].categorical[name] for s in shown if name in summaries[s].categorical
        }
        merged = {s: summaries[s].suppressed.get(name, 0) for s in tables}
        findings += _categorical_feature(name, tables, merged, records, k, smd_threshold)
    return HeterogeneityReport(
        min_cell=k,
        thresholds=thresholds,
        outcome_kind=outcome_kind,
        sites=tuple(overviews[s] for s in sorted(overviews)),
        findings=tuple(findings),
        histograms=tuple(histograms),
        total_records=total,
    )


# -- the comparison ----------------------------------------------------------------------------


def _compare_all(
    sites: Sequence[str],
    compare: _Compare,
    threshold: float,
    *,
    measure: str,
    feature: str = "",
    category: str = "",
) -> list[HeterogeneityFinding]:
    """Each site against the core of the others: sites over the threshold leave the reference
    one at a time, the most extreme first, while more than two sites remain."""
    core = list(sites)
    while len(core) > 2:
        over: dict[str, float] = {}
        for site in core:
            score = compare(site, [o for o in core if o != site])[2]
            if abs(score) > threshold:
                over[site] = abs(score)
        if not over:
            break
        core.remove(max(sorted(over), key=over.__getitem__))
    findings = []
    for site in sites:
        refs = [o for o in core if o != site]
        if not refs:
            findings.append(
                HeterogeneityFinding(
                    site=site,
                    feature=feature,
                    category=category,
                    measure=measure,
                    value=compare(site, [])[0],
                    threshold=threshold,
                    note="no other site to compare with",
                )
            )
            continue
        value, reference, score = compare(site, refs)
        findings.append(
            HeterogeneityFinding(
                site=site,
                feature=feature,
                category=category,
                measure=measure,
                value=value,
                reference=reference,
                score=score,
                threshold=threshold,
                flagged=abs(score) > threshold,
                left_out=tuple(o for o in sites if o not in core and o != site),
                note="" if math.isfinite(score) else "no spread to standardise by",
            )
        )
    return findings


def _withheld(
    site: str, measure: str, threshold: float, k: int, feature: str = "", category: str = ""
) -> HeterogeneityFinding:
    return HeterogeneityFinding(
        site=site,
        feature=feature,
        category=category,
        measure=measure,
        threshold=threshold,
        note=f"withheld: rests on a count below {k}",
    )


def _round(value: float | None, decimals: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), decimals)


def _smd_proportion(p: float, q: float) -> float:
    """Austin's standardised difference of two proportions."""
    var = (p * (1 - p) + q * (1 - q)) / 2
    if var <= 0:
        return 0.0 if p == q else math.copysign(math.inf, p - q)
    return (p - q) / math.sqrt(var)


# -- outcome ---------------------------------------------------------------------------------


def _outcome_kind(summaries: Sequence[SiteSummary]) -> str:
    kinds = {
        "binary" if "positives" in s.outcome else "time_to_event" if "events" in s.outcome else ""
        for s in summaries
    }
    kinds.discard("")
    if len(kinds) > 1:
        raise DataError("the sites' outcome summaries differ in kind (positives vs events)")
    return kinds.pop() if kinds else ""


def _outcome(
    summaries: Mapping[str, SiteSummary], shown: Sequence[str], kind: str, k: int, threshold: float
) -> tuple[list[HeterogeneityFinding], dict[str, tuple[float, float | None]]]:
    key = "positives" if kind == "binary" else "events"
    blocks: dict[str, tuple[float, float, float]] = {}  # site → (n, cases, follow-up time)
    findings: list[HeterogeneityFinding] = []
    for site in shown:
        out = summaries[site].outcome
        n, cases = out.get("n", 0.0), out.get(key, 0.0)
        if key in out and n >= k and safe(cases, k) and safe(n - cases, k):
            blocks[site] = (n, cases, out.get("time_sum", 0.0))
        else:
            findings.append(_withheld(site, "outcome", threshold, k))

    def compare(site: str, refs: Sequence[str]) -> tuple[float, float | None, float]:
        p = blocks[site][1] / blocks[site][0]
        if not refs:
            return p, None, 0.0
        q = sum(blocks[r][1] for r in refs) / sum(blocks[r][0] for r in refs)
        return p, q, _smd_proportion(p, q)

    findings += _compare_all(sorted(blocks), compare, threshold, measure="outcome")
    rates = {
        site: (
            cases / n,
            cases / time if kind == "time_to_event" and time > 0 else None,
        )
        for site, (n, cases, time) in blocks.items()
    }
    return findings, rates


# -- numeric features ------------------------------------------------------------------------


def _is_binary(stats: NumericStats) -> bool:
    """Moments of a 0/1 variable: ``n·mean`` whole and ``m2 = n·p·(1 − p)``."""
    if stats.n == 0 or not 0 <= stats.mean <= 1:
        return False
    ones = stats.mean * stats.n
    expected = stats.n * stats.mean * (1 - stats.mean)
    return abs(ones - round(ones)) < 1e-6 and abs(stats.m2 - expected) <= 1e-9 * stats.n


def _sample_variance(stats: Sequence[NumericStats]) -> tuple[float, float]:
    """Pooled mean and sample variance of several sites' moments (Chan et al.'s combine)."""
    pooled = NumericStats.combine(
        [NumericStats(n=s.n, missing=s.missing, mean=s.mean, m2=s.m2) for s in stats]
    )
    return pooled.mean, pooled.m2 / (pooled.n - 1) if pooled.n > 1 else 0.0


def _numeric_feature(
    name: str,
    stats: Mapping[str, NumericStats],
    k: int,
    thresholds: Mapping[str, float],
    declared_binary: bool,
) -> tuple[list[HeterogeneityFinding], FeatureHistogram | None]:
    binary = declared_binary or all(_is_binary(s) for s in stats.values() if s.n)
    measures = ("smd", "missing") if binary else ("smd", "wasserstein", "ks", "missing")
    findings: list[HeterogeneityFinding] = []
    ok: dict[str, NumericStats] = {}
    for site, s in sorted(stats.items()):
        cells = [s.n, s.missing]
        if binary:
            ones = round(s.mean * s.n)
            cells += [ones, s.n - ones]
        if s.n >= k and all(safe(c, k) for c in cells):
            ok[site] = s
        else:
            findings += [_withheld(site, m, thresholds[m], k, name) for m in measures]
    sites = sorted(ok)

    def smd(site: str, refs: Sequence[str]) -> tuple[float, float | None, float]:
        s = ok[site]
        if not refs:
            return s.mean, None, 0.0
        mean, var = _sample_variance([ok[r] for r in refs])
        if binary:
            return s.mean, mean, _smd_proportion(s.mean, mean)
        var_site = s.m2 / (s.n - 1) if s.n > 1 else 0.0
        sd = math.sqrt((var_site + var) / 2)
        if sd == 0:
            return s.mean, mean, 0.0 if s.mean == mean else math.inf
        return s.mean, mean, (s.mean - mean) / sd

    def missing(site: str, refs: Sequence[str]) -> tuple[float, float | None, float]:
        s = ok[site]
        share = s.missing / (s.n + s.missing)
        if not refs:
            return share, None, 0.0
        ref = sum(ok[r].missing for r in refs) / sum(ok[r].n + ok[r].missing for r in refs)
        return share, ref, share - ref

    findings += _compare_all(sites, smd, thresholds["smd"], measure="smd", feature=name)
    findings += _compare_all(sites, missing, thresholds["missing"], measure="missing", feature=name)
    if binary:
        return findings, None
    bars = merge_bars(name, ok, k)
    if bars is None:
        for measure in ("wasserstein", "ks"):
            findings += [
                HeterogeneityFinding(
                    site=site,
                    feature=name,
                    measure=measure,
                    threshold=thresholds[measure],
                    note="no histogram on common edges",
                )
                for site in sites
            ]
        return findings, None
    edges, counts = bars

    def distance(which: int) -> _Compare:
        def compare(site: str, refs: Sequence[str]) -> tuple[None, None, float]:
            if not refs:
                return None, None, 0.0
            rest = np.sum([counts[r] for r in refs], axis=0).astype(np.float64)
            w1, ks = _histogram_distances(edges, counts[site].astype(np.float64), rest)
            if which == 1:
                return None, None, ks
            _, var = _sample_variance([ok[r] for r in refs])
            s = ok[site]
            sd = math.sqrt(((s.m2 / (s.n - 1) if s.n > 1 else 0.0) + var) / 2)
            return None, None, w1 / sd if sd > 0 else (0.0 if w1 == 0 else math.inf)

        return compare

    findings += _compare_all(
        sites, distance(0), thresholds["wasserstein"], measure="wasserstein", feature=name
    )
    findings += _compare_all(sites, distance(1), thresholds["ks"], measure="ks", feature=name)
    histogram = FeatureHistogram(
        feature=name,
        edges=tuple(float(e) for e in edges),
        counts={site: tuple(int(c) for c in counts[site]) for site in sites},
    )
    return findings, histogram


def _histogram_distances(edges: Array, a: Array, b: Array) -> tuple[float, float]:
    """The 1-Wasserstein distance and the largest CDF difference of two histograms on the same
    bars, each bar's mass spread evenly over it (the CDFs are then linear inside a bar)."""
    d = np.concatenate([[0.0], np.cumsum(a) / a.sum() - np.cumsum(b) / b.sum()])
    d0, d1 = d[:-1], d[1:]
    spread = np.abs(d0) + np.abs(d1)
    # ∫|D| over a bar where D runs linearly from d0 to d1: a trapezium, or two triangles
    crossing = np.divide(d0**2 + d1**2, 2 * spread, out=np.zeros_like(spread), where=spread > 0)
    area = np.where(d0 * d1 >= 0, spread / 2, crossing)
    return float(np.sum(np.diff(edges) * area)), float(np.max(np.abs(d)))


# -- categorical features --------------------------------------------------------------------


def _categorical_feature(
    name: str,
    tables: Mapping[str, Mapping[str, int]],
    merged: Mapping[str, int],
    records: Mapping[str, int],
    k: int,
    threshold: float,
) -> list[HeterogeneityFinding]:
    findings: list[HeterogeneityFinding] = []
    recoded: dict[str, Recoded] = {}
    for site, counts in sorted(tables.items()):
        total = sum(counts.values())
        if total >= k and safe(records[site] - total, k):  # records − total: values missing
            recoded[site] = recode(counts, k, merged[site])
        else:
            findings.append(_withheld(site, "category", threshold, k, name))
    categories = sorted({c for r in recoded.values() for c in r.counts} - {OTHER})
    if any(r.counts[OTHER] or r.merged_before for r in recoded.values()):
        categories.append(OTHER)
    for category in categories:
        known = sorted(s for s, r in recoded.items() if r.count(category) is not None)
        findings += [
            HeterogeneityFinding(
                site=site,
                feature=name,
                category=category,
                measure="category",
                value=recoded[site].counts[OTHER] / recoded[site].total
                if category == OTHER
                else None,
                threshold=threshold,
                note="holds categories merged for disclosure control: not compared"
                if category == OTHER
                else f"counted in {OTHER!r} at this site",
            )
            for site in sorted(set(recoded) - set(known))
        ]

        def compare(
            site: str, refs: Sequence[str], category: str = category
        ) -> tuple[float, float | None, float]:
            share = (recoded[site].count(category) or 0) / recoded[site].total
            if not refs:
                return share, None, 0.0
            ref = sum(recoded[r].count(category) or 0 for r in refs) / sum(
                recoded[r].total for r in refs
            )
            return share, ref, _smd_proportion(share, ref)

        findings += _compare_all(
            known, compare, threshold, measure="category", feature=name, category=category
        )
    return findings
