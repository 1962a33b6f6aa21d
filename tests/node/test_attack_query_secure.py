"""A hostile coordinator against secure query passes: the sites' real chains (NodeApps with
kits) and the real SecAgg+ state machines, driven by a coordinator that drops an honest
site after the key exchange so that the "secure" sum covers one honest site and one site
it colludes with.

In secure mode a site sends its exact, unsuppressed statistics (the coordinator applies
the disclosure rules to the consortium total), so a sum over two sites, one of them the
coordinator's accomplice, is the other site's exact answer — a small count plain mode
would have withheld. The site refuses to unmask a query pass whose sum would rest on
fewer live sites than the rules' ``min_sites``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from biofed.analytics import DisclosureRules, Query, Request, start, total_from_vector
from biofed.core import Instruction, MessageKind, ParameterSet, SecureAggregationError
from biofed.datasets import load_tcga_brca
from biofed.identity import Consortium, load_kit
from biofed.node import NodeApp, NodeConfig
from biofed.secagg import (
    CERTIFICATE_ARRAY,
    CERTIFICATE_PREFIX,
    STAGE_KEY,
    SecAggServer,
    SecAggStage,
    SecureAggregationSettings,
    pack_message,
    unpack_message,
)

SITES = ("center-0", "center-1", "center-2")
HONEST, ACCOMPLICE, DROPPED = SITES
AGE = "age_at_index"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("attack-sfed") / "c"
    Consortium.create(folder, consortium="s", coordinator="127.0.0.1:7443", sites=list(SITES))
    return folder


def _apps(fed: Path) -> dict[str, NodeApp]:
    brca = load_tcga_brca()
    return {
        site: NodeApp(
            site, NodeConfig(datasets={}), kit=load_kit(fed / site), data={"brca": brca.sites[site]}
        )
        for site in SITES
    }


def _count_over_85(site: str) -> int:
    data = load_tcga_brca().sites[site]
    parts = [data.train] + ([data.test] if data.test is not None else [])
    column = list(data.train.feature_names).index(AGE)
    return int(sum((p.features[:, column] > 85).sum() for p in parts))


def test_a_secure_count_cannot_be_narrowed_to_one_honest_site_and_an_accomplice(
    fed: Path,
) -> None:
    query = Query.from_dict({"kind": "count", "where": [{"column": AGE, "op": ">", "value": 85}]})
    request: Request = start(query, DisclosureRules(), secure=True).request()
    settings = SecureAggregationSettings(clip_range=1e6, quantisation_step=1e-3)
    plan = settings.secagg_config(request.size + 1).plan(len(SITES))
    server = SecAggServer(plan, list(SITES), run_id="sq-1", round=1)
    apps = _apps(fed)
    outgoing = {n: plan.to_bytes() for n in SITES}
    certificates: dict[str, bytes] = {}
    refusals: list[str] = []
    for stage in (
        SecAggStage.ADVERTISE_KEYS,
        SecAggStage.SHARE_KEYS,
        SecAggStage.MASKED_INPUT,
        SecAggStage.UNMASK,
    ):
        for node_id, message in outgoing.items():
            if stage in (SecAggStage.MASKED_INPUT, SecAggStage.UNMASK) and node_id == DROPPED:
                continue  # "dropped out": never asked for its masked input
            more = {}
            if stage is SecAggStage.SHARE_KEYS:
                more = {f"{CERTIFICATE_PREFIX}{n}": c for n, c in certificates.items()}
            inst = Instruction(
                run_id="sq-1",
                round=1,
                node_id=node_id,
                kind=MessageKind.SECAGG,
                parameters=ParameterSet(),
                config={
                    "dataset": "brca",
                    **settings.to_config(),
                    STAGE_KEY: stage.value,
                    "query.request": request.to_json(),
                },
                extras=pack_message(message, **more),
            )
            reply = apps[node_id].handle(inst)
            if not reply.ok:
                refusals.append(reply.error or "")
                continue
            msg, extra = unpack_message(reply.extras)
            if CERTIFICATE_ARRAY in extra:
                certificates[node_id] = extra[CERTIFICATE_ARRAY]
            server.receive(node_id, msg)
        try:
            outgoing = {n: m.to_bytes() for n, m in server.close_stage().items()}
        except SecureAggregationError:
            break  # the sum cannot be unmasked without the honest site's shares
    assert 0 < _count_over_85(HONEST) < 10  # the attack's premise: a small count
    try:
        result = server.result()
    except SecureAggregationError:
        assert any("min_sites" in r for r in refusals), refusals
        return
    assert result.total is not None
    total = total_from_vector(request, result.total)
    honest_count = round(float(total.arrays["count"][0])) - _count_over_85(ACCOMPLICE)
    assert honest_count != _count_over_85(HONEST)
