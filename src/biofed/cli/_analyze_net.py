"""``biofed analyze … --kit KIT --dataset NAME``: a query as an analysis job on a federation.

The query and the requested rules become an :class:`~biofed.coordinator.AnalysisJob`
(``[run]``, ``[analysis]``, ``[secure_aggregation]`` with ``--secure``, ``[study]`` with
``--spec``), submitted through the coordinator's ControlService with the kit's mutual TLS
(and the agreement's file and signers' certificates when ``--agreement`` names a file).
The run's events are followed: each ``query_pass`` is shown as it lands; the run ends
``finished`` with an ``analysis_result`` event (read back with
:func:`biofed.analytics.result_from_json`, hostile input like any other) or ``failed`` with
the sites' reasons.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.markup import escape

from biofed.cli._common import call, err, kit_option

if TYPE_CHECKING:
    from biofed.analytics import DisclosureRules, Query, Result
    from biofed.coordinator import AnalysisJob
    from biofed.transport.grpc import ControlClient


class RunFailed(Exception):
    """The analysis run ended failed or cancelled (its reasons in the message)."""


def analysis_job(query: Query, rules: DisclosureRules | None, flags: dict[str, Any]) -> AnalysisJob:
    """The job the flags describe."""
    from biofed.coordinator import AnalysisJob
    from biofed.core import ConfigurationError

    for flag in ("tcga", "data", "site"):
        if flags[flag]:
            raise ConfigurationError(
                f"--{flag} is for a simulation; a networked query reads the sites' --dataset"
            )
    if not flags["dataset"]:
        raise ConfigurationError("a networked query needs --dataset NAME (what the sites hold)")
    min_nodes = flags["min_nodes"] or 1
    run: dict[str, Any] = {
        "name": f"analyze-{query.kind.replace('_', '-')}",
        "dataset": flags["dataset"],
        "min_nodes": min_nodes,
        "min_replies": flags["min_replies"] or min_nodes,
        "round_timeout": flags["round_timeout"],
    }
    tables: dict[str, Any] = {"run": run, "analysis": analysis_table(query, rules)}
    if flags["secure"]:
        tables["secure_aggregation"] = {}
    if flags["spec"] is not None:
        tables["study"] = {"spec": str(Path(flags["spec"]).resolve())}
    return AnalysisJob.from_mapping(tables)


def analysis_table(query: Query, rules: DisclosureRules | None) -> dict[str, Any]:
    """The ``[analysis]`` table of ``query``: its options inline, ``where`` as an array of
    tables, ``dp`` and ``rules`` as sub-tables (None values left out: TOML has no null)."""
    table: dict[str, Any] = {k: v for k, v in query.options.items() if v is not None}
    table["kind"] = query.kind
    table["split"] = query.split
    if query.where:
        table["where"] = [
            {k: v for k, v in f.to_dict().items() if v is not None} for f in query.where
        ]
    if query.dp is not None:
        table["dp"] = query.dp.to_dict()
    if rules is not None:
        table["rules"] = rules.to_dict()
    return table


def _with_agreement(
    job: AnalysisJob, value: str, kit: Path
) -> tuple[AnalysisJob, bytes, dict[str, bytes]]:
    """The job under agreement ``value``: an id the coordinator holds, or a file sent with
    its signers' certificates (found beside the kit, as ``biofed run submit`` finds them)."""
    import dataclasses

    from biofed.cli._run import _with_agreement as under

    file = Path(value)
    if not file.is_file():
        return dataclasses.replace(job, agreement=value), b"", {}
    spec, data, certs = under(job, file, kit.resolve().parent)
    return cast("AnalysisJob", spec), data, certs  # dataclasses.replace keeps the class


def run_networked(query: Query, rules: DisclosureRules | None, flags: dict[str, Any]) -> Result:
    """Submit the query, follow its passes, and return its result (RunFailed otherwise)."""
    from biofed.cli._run import control_client

    job = analysis_job(query, rules, flags)
    signed, certs = b"", dict[str, bytes]()
    if flags["agreement"] is not None:
        job, signed, certs = _with_agreement(job, flags["agreement"], kit_option(flags["kit"]))
    with control_client(flags["kit"], flags["coordinator"]) as client:
        run = call(lambda: client.submit_run(job.to_json(), agreement=signed, certificates=certs))
        err.print(f"submitted [bold]{escape(run.run_id)}[/]", highlight=False)
        return _follow(client, run.run_id)


def _follow(client: ControlClient, run_id: str) -> Result:
    from biofed.analytics import result_from_json
    from biofed.core import ProtocolError

    message = None
    problems: list[str] = []
    with err.status(f"{run_id}: waiting for the sites…") as status:
        for event in client.watch_run(run_id, follow=True):
            if event.kind == "query_pass":
                err.print(f"[dim]{escape(event.message)}[/]", highlight=False)
                status.update(f"{run_id}: {event.message}; next pass…")
            elif event.kind == "analysis_result":
                message = event.message
            elif event.kind in ("reply_rejected", "node_failed", "node_refused", "run_failed"):
                who = f"{event.node_id}: " if event.node_id else ""
                problems.append(f"{who}{event.message}")
    summary = call(lambda: client.get_run(run_id))
    if summary.status != "finished" or message is None:
        reasons = summary.error or "; ".join(problems[-3:]) or summary.status
        raise RunFailed(f"run {run_id} {summary.status}: {reasons}")
    try:
        return result_from_json(message)
    except ValueError as exc:  # result_from_json names what is wrong in one line
        raise ProtocolError(f"run {run_id}: its result cannot be read: {exc}") from None
