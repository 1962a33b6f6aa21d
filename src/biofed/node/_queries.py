"""The site's side of a federated query: its table, its rules, its answer.

A QUERY instruction carries one pass of a :class:`biofed.analytics.Request` (its JSON in
``directives.query_request``). The site

1. reads the request (bounded, every field checked) and refuses one that claims to be
   secure when it did not come through secure aggregation, or the reverse (a kind may
   answer a secure pass without the site's own suppression, since the coordinator then
   applies the rules to the consortium total only);
2. builds its :class:`~biofed.analytics.QueryTable` — ``QueryTable.from_site_data`` for a
   registered file, ``QueryTable.from_extracted`` of the study table for a study job —
   once per dataset (and study spec digest) and keeps it;
3. answers with :func:`biofed.analytics.answer` under its effective
   :class:`~biofed.analytics.DisclosureRules` (:meth:`SiteQueries.rules`: ``node.toml``'s
   ``[analytics]`` and the agreement's, the stricter key by key), with DP noise from the
   site's own CSPRNG when the query asks for DP;
4. checks the answer's cohorts and released cells against its query log
   (:class:`~biofed.node._query_log.QueryLog`: the differencing rule) and records them
   there before the reply is built — except for a cohort of fewer than ``min_cell`` rows
   (:func:`biofed.analytics.small_cohort`), whose fully suppressed answer releases
   nothing and is the same whatever the rows hold (so neither the answer nor a refusal
   by the log tells 0 from 1..k−1);
5. replies with the answer's arrays as float64 ``parameters`` and ``num_examples`` = the
   records it rests on.

The cohorts logged for one answer are the row sets its statistics can rest on: the rows
the query's split and filters select that are present in each column its kind reads (a
describe's per-column n and sums), and those complete in all of them (a correlation's or a
regression's complete cases); a kind without columns (a count) logs the selected rows. A
differencing through missing values — the same statistic of column X over two cohorts that
differ only by a patient whose Y is missing — is then caught like one through filters. The
price: a count after a describe (or the reverse) is refused when 1 to k−1 of the selected
rows miss the described column, since the two answers would count those patients.

Beside the cohorts it logs the row set of each count cell the answer releases (a
histogram's bins, a crosstab's cells and margins, a quantile pass's bins;
:func:`biofed.analytics.released_cells`, computed here and never sent; none for a DP
answer, whose noise is the control), so two queries on one cohort whose cells differ by
1..k−1 patients are refused too: shifted histogram edges, a margin minus a filtered count,
quantiles with shifted bounds.

Security notes
--------------
Threat: a coordinator (or researcher) that asks for row-level data through aggregates —
small cells, a dominated sum, two cohorts one patient apart, or a request that claims
looser rules or a secure sum it is not. The site's rules are its own (the coordinator's
request can only make them stricter, :func:`biofed.analytics.answer`); the differencing
rule is the site's (:mod:`biofed.node._query_log`); and whether a pass is secure comes
from the node's secure-aggregation step, never from the request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from biofed.analytics import (
    Answer,
    DisclosureRules,
    NoiseSource,
    QueryTable,
    Request,
    answer,
    complete_rows,
    kind_of,
    released_cells,
    small_cohort,
)
from biofed.core import (
    Array,
    ConfigurationError,
    Instruction,
    ParameterSet,
    PolicyViolation,
    Reply,
)
from biofed.core.sections import JobSection
from biofed.governance import Clearance
from biofed.node._query_log import QueryLog
from biofed.node._sites import SiteTasks

#: Builds the noise source of one DP answer (the site's CSPRNG).
NoiseFactory = Callable[[], NoiseSource]


def read_request(instruction: Instruction, *, secure: bool) -> Request:
    """The instruction's query request, checked against how it came.

    Raises
    ------
    PolicyViolation
        If the request's ``secure`` flag is not how the pass reached the site.
    ConfigurationError
        If there is no request or it is malformed (one line).
    """
    text = instruction.directives.query_request
    if text is None:
        raise ConfigurationError("a query instruction carries no query request")
    request = Request.from_json(text)
    if request.secure and not secure:
        raise PolicyViolation(
            "disclosure: the request is marked secure but did not come through secure "
            "aggregation; this site answers it only as a masked input"
        )
    if secure and not request.secure:
        raise PolicyViolation("disclosure: a masked input's query request is not marked secure")
    return request


class SiteQueries:
    """Answers the QUERY instructions of one site.

    Parameters
    ----------
    node_id:
        The site's identity.
    sites:
        The site's datasets (their tables and study sources).
    log:
        The site's query log.
    rules:
        ``node.toml``'s ``[analytics]`` rules (the defaults when it has none).
    noise:
        Builds the noise source of a DP answer (the site's CSPRNG), or None: DP queries
        are then refused.
    """

    def __init__(
        self,
        node_id: str,
        sites: SiteTasks,
        log: QueryLog,
        rules: DisclosureRules,
        noise: NoiseFactory | None,
    ) -> None:
        self.node_id = node_id
        self.sites = sites
        self.log = log
        self.node_rules = rules
        self.noise = noise
        self._tables: dict[tuple[str, str], QueryTable] = {}
        self._lock = threading.Lock()

    def rules(self, clearance: Clearance | None) -> DisclosureRules:
        """The site's effective rules: ``node.toml``'s, made stricter by the agreement's
        ``[analytics]`` thresholds under governance.

        Raises
        ------
        PolicyViolation
            If the agreement's thresholds cannot be read as rules.
        """
        if clearance is None:
            return self.node_rules
        table = dict(clearance.agreement.agreement.analytics.rules)
        if not table:
            return self.node_rules
        try:
            agreed = DisclosureRules.from_mapping(table, what="the agreement's [analytics]")
        except ConfigurationError as exc:
            raise PolicyViolation(f"disclosure: {exc}") from None
        return self.node_rules.stricter(agreed)

    def table(self, job: JobSection) -> QueryTable:
        """The job's dataset as a query table (built once per dataset and study spec).

        Raises
        ------
        PolicyViolation
            If this site holds no such dataset or cannot compile the study here.
        """
        dataset = job.dataset or ""
        key = (dataset, "" if job.study is None else job.study.digest)
        with self._lock:
            cached = self._tables.get(key)
        if cached is not None:
            return cached
        if job.study is not None:
            built = QueryTable.from_extracted(self.sites.study_table(job))
        else:
            if dataset not in self.sites.data:
                raise PolicyViolation(f"this site holds no dataset {dataset!r}")
            built = QueryTable.from_site_data(self.sites.data[dataset], name=dataset)
        with self._lock:
            return self._tables.setdefault(key, built)

    def answer(
        self, instruction: Instruction, clearance: Clearance | None, *, secure: bool
    ) -> tuple[Request, Answer]:
        """This site's answer to the instruction's request, its cohort checked against and
        recorded in the query log.

        Raises
        ------
        biofed.core.BiofedError
            A refusal or failure, one line (no record-level data).
        """
        request = read_request(instruction, secure=secure)
        rules = self.rules(clearance)
        table = self.table(instruction.job)
        noise = None
        if request.query.dp is not None:
            if self.noise is None:
                raise PolicyViolation("privacy: this site has no noise source for DP answers")
            noise = self.noise()
        out = answer(request, table, rules, noise=noise)
        if small_cohort(request, table, rules):
            # the kind's fully suppressed answer, the same for 0 and 1..k-1 selected rows:
            # it releases nothing, so it is neither logged nor checked against the log (a
            # refusal by the log would tell 0 from 1..k-1 after all)
            return request, out
        # one log per dataset the site holds: a study table is named after its study, but
        # its rows are the dataset's persons (ids stable across studies), so two studies —
        # or one spec renamed — must not each get a fresh log to difference against
        self.log.check_and_record(
            instruction.job.dataset or table.name,
            *_cohorts(table, request),
            *released_cells(request, table, out, rules),
            min_difference=rules.min_difference,
            run_id=instruction.run_id,
            query_sha256=request.query.digest,
        )
        return request, out

    def reply(
        self, instruction: Instruction, clearance: Clearance | None, *, secure: bool
    ) -> Reply:
        """Answer a QUERY instruction: the answer's arrays as float64 parameters (in a
        secure pass, what the secure-aggregation step masks)."""
        _, out = self.answer(instruction, clearance, secure=secure)
        return answer_reply(instruction, out, self.node_id)


def _cohorts(table: QueryTable, request: Request) -> list[Array]:
    """The row-id sets an answer's statistics can rest on (see the module docstring)."""
    query = request.query
    selected = table.cohort(query)
    columns = list(kind_of(query.kind).columns(query.options))
    masks = [complete_rows(table, selected, [c]) for c in columns]
    masks.append(complete_rows(table, selected, columns))
    return [table.ids[mask] for mask in masks]


def answer_reply(instruction: Instruction, out: Answer, node_id: str) -> Reply:
    """The reply carrying ``out``: its arrays (float64) and its record count."""
    arrays = {name: np.asarray(value, dtype=np.float64) for name, value in out.arrays.items()}
    return Reply.answering(
        instruction,
        node_id=node_id,
        parameters=ParameterSet(arrays),
        num_examples=out.records,
    )
