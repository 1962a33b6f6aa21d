"""Malicious sites of biofed.attacks: each tamper changes exactly what it claims on a real
node's reply, data poisoning on real data (Fed-TCGA-BRCA, WDBC), the backdoor's success
measure, and the harness on a real federation (a scaling attacker wrecks FedAvg's C-index)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest

from biofed.attacks import (
    ATTACKS,
    DECISION_EVENTS,
    INFLATED_EXAMPLES,
    Attack,
    Chain,
    FreeRiding,
    GaussianNoise,
    LyingEvaluation,
    Scaling,
    SignFlip,
    Trigger,
    WeightInflation,
    apply_trigger,
    attack_success_rate,
    backdoor,
    choose_malicious,
    label_flip,
    make_attack,
    make_trigger,
    run_attack,
)
from biofed.coordinator import JobSpec
from biofed.core import ConfigurationError, Instruction, MessageKind, Reply
from biofed.data import Dataset, FederatedDataset, partition_iid, train_test_split
from biofed.datasets import load_tcga_brca
from biofed.simulation import TamperingBackend, simulate, train_centralised
from biofed.strategies import DECISION_ACTIONS
from biofed.tasks import CoxPHTask, LogisticRegressionTask

SITES = [f"center-{k}" for k in range(6)]


def _cox_job(*, rounds: int = 1, steps: int = 5, **strategy: Any) -> JobSpec:
    return JobSpec.from_mapping(
        {
            "run": {
                "name": "atk",
                "dataset": "tcga-brca",
                "rounds": rounds,
                "seed": 1,
                "min_nodes": 6,
                "min_replies": 2,
            },
            "task": {"name": "cox_ph", "num_features": 39},
            "strategy": {"name": "fedavg", **strategy},
            "train": {
                "local_steps": steps,
                "batch_size": 8,
                "learning_rate": 0.01,
                "optimizer": "adam",
            },
            "evaluate": {"split": "test"},
        }
    )


@pytest.fixture(scope="module")
def tcga() -> FederatedDataset:
    return load_tcga_brca()


@pytest.fixture(scope="module")
def wdbc() -> FederatedDataset:
    """WDBC (569 patients, 30 features, scikit-learn's copy), standardised, 6 IID sites."""
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    X = (raw.data - raw.data.mean(0)) / raw.data.std(0)
    ds = Dataset(
        name="wdbc",
        features=X,
        feature_names=tuple(f"f{j}" for j in range(X.shape[1])),
        targets={"label": raw.target.astype(np.float64)},
    )
    rng = np.random.default_rng(0)
    parts = partition_iid(ds, 6, rng)
    return FederatedDataset(
        name="wdbc",
        sites={s: train_test_split(d, 0.25, rng, stratify_key="label") for s, d in parts.items()},
    )


class Recorder:
    """A 'tamper' that keeps every (instruction, honest reply) and changes nothing."""

    def __init__(self) -> None:
        self.seen: list[tuple[Instruction, Reply]] = []

    def __call__(self, instruction: Instruction, reply: Reply) -> Reply | None:
        self.seen.append((instruction, reply))
        return reply


@pytest.fixture(scope="module")
def real_replies(tcga: FederatedDataset) -> dict[MessageKind, tuple[Instruction, Reply]]:
    """A real node's TRAIN and EVALUATE replies from a one-round run (after round 1 the
    global model is no longer zero, so x and Δ are both non-trivial in round 2)."""
    recorder = Recorder()
    simulate(
        tcga,
        job=_cox_job(rounds=2),
        backend=TamperingBackend({"center-1": recorder}),
        baselines=False,
    )
    out = {}
    for inst, reply in recorder.seen:
        if inst.round == 2:
            out[reply.kind] = (inst, reply)
    assert set(out) == {MessageKind.TRAIN, MessageKind.EVALUATE}
    return out


def _delta(inst: Instruction, reply: Reply | None) -> dict[str, np.ndarray]:
    assert reply is not None
    assert reply.parameters is not None
    return {
        n: np.asarray(reply.parameters[n], np.float64) - np.asarray(inst.parameters[n], np.float64)
        for n in inst.parameters
    }


def test_sign_flip_and_scaling_multiply_the_real_update(real_replies: Any) -> None:
    inst, honest = real_replies[MessageKind.TRAIN]
    delta = _delta(inst, honest)
    assert np.abs(delta["weight"]).max() > 1e-3  # a real update, not zero
    for tamper, factor in [(SignFlip(), -1.0), (SignFlip(3.0), -3.0), (Scaling(6.0), 6.0)]:
        lied = tamper(inst, honest)
        assert lied is not None
        assert lied.parameters is not None
        got = _delta(inst, lied)
        for n in delta:
            np.testing.assert_allclose(got[n], factor * delta[n], rtol=1e-5, atol=1e-6)
            assert lied.parameters[n].dtype == honest.parameters[n].dtype
        assert lied.num_examples == honest.num_examples
        assert lied.metrics == honest.metrics
    assert Scaling.model_replacement(6).boost == 6.0


def test_gaussian_noise_replaces_the_update_and_is_seeded_per_round(real_replies: Any) -> None:
    inst, honest = real_replies[MessageKind.TRAIN]
    lied = GaussianNoise(sigma=2.0, seed=7)(inst, honest)
    noise = _delta(inst, lied)["weight"].ravel()
    honest_delta = _delta(inst, honest)["weight"].ravel()
    assert 1.0 < noise.std() < 3.0  # 39 draws of N(0, 4)
    assert abs(np.corrcoef(noise, honest_delta)[0, 1]) < 0.6  # not the honest update
    again = GaussianNoise(sigma=2.0, seed=7)(inst, honest)
    assert again is not None
    assert lied is not None
    assert again.parameters == lied.parameters
    later = GaussianNoise(sigma=2.0, seed=7)(dataclasses.replace(inst, round=3), honest)
    assert later is not None
    assert later.parameters != lied.parameters


def test_weight_inflation_claims_1e15_and_shifts(real_replies: Any) -> None:
    inst, honest = real_replies[MessageKind.TRAIN]
    lied = WeightInflation(shift=50.0)(inst, honest)
    assert lied is not None
    assert lied.num_examples == INFLATED_EXAMPLES == 10**15
    for n, d in _delta(inst, honest).items():
        np.testing.assert_allclose(_delta(inst, lied)[n], d + 50.0, rtol=1e-5, atol=1e-4)
    plain = WeightInflation()(inst, honest)
    assert plain is not None
    assert plain.parameters == honest.parameters


def test_free_rider_returns_the_global_model_with_its_honest_count(real_replies: Any) -> None:
    inst, honest = real_replies[MessageKind.TRAIN]
    lied = FreeRiding()(inst, honest)
    assert lied is not None
    assert lied.parameters == inst.parameters
    assert lied.num_examples == honest.num_examples > 0
    assert FreeRiding(num_examples=500)(inst, honest).num_examples == 500  # type: ignore[union-attr]


def test_lying_evaluation_changes_only_the_claimed_figures(real_replies: Any) -> None:
    inst, honest = real_replies[MessageKind.EVALUATE]
    assert 0.3 < honest.metrics["c_index"] < 0.95
    lied = LyingEvaluation()(inst, honest)
    assert lied is not None
    assert lied.metrics["c_index"] == 0.99996
    assert lied.metrics["cox_loss"] == honest.metrics["cox_loss"]
    assert lied.num_examples == honest.num_examples
    assert LyingEvaluation(num_examples=10**15)(inst, honest).num_examples == 10**15  # type: ignore[union-attr]
    train_inst, train_reply = real_replies[MessageKind.TRAIN]
    assert LyingEvaluation()(train_inst, train_reply) is train_reply


def test_training_tampers_pass_other_replies_through(real_replies: Any) -> None:
    inst, evaluation = real_replies[MessageKind.EVALUATE]
    train_inst, train = real_replies[MessageKind.TRAIN]
    failed = dataclasses.replace(train, parameters=None, error="task_error: diverged")
    for tamper in [SignFlip(), Scaling(9.0), GaussianNoise(), WeightInflation(), FreeRiding()]:
        assert tamper(inst, evaluation) is evaluation
        assert tamper(train_inst, failed) is failed
    both = Chain((Scaling(2.0), LyingEvaluation()))
    assert both(inst, evaluation).metrics["c_index"] == 0.99996  # type: ignore[union-attr]
    np.testing.assert_allclose(
        _delta(train_inst, both(train_inst, train))["weight"],
        2 * _delta(train_inst, train)["weight"],
        rtol=1e-5,
        atol=1e-6,
    )


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="boost"):
        Scaling(float("inf"))
    with pytest.raises(ConfigurationError, match="sigma"):
        GaussianNoise(sigma=-1.0)
    with pytest.raises(ConfigurationError, match="claim"):
        WeightInflation(claim=0)
    with pytest.raises(ConfigurationError, match="unknown attack"):
        make_attack("nope", load_tcga_brca())
    with pytest.raises(ConfigurationError, match="no such site to attack from: center-9"):
        run_attack(load_tcga_brca(), _cox_job(), attacks={"center-9": Attack(name="x")})


def test_label_flip_on_wdbc_flips_exactly_the_chosen_fraction(wdbc: FederatedDataset) -> None:
    site = wdbc.sites["site-0"]
    y = np.asarray(site.train.targets["label"])
    flipped = label_flip(site, fraction=0.5, rng=np.random.default_rng(1))
    changed = flipped.train.targets["label"] != y
    assert changed.sum() == round(0.5 * len(y))
    assert np.all(flipped.train.targets["label"][changed] == 1 - y[changed])
    np.testing.assert_array_equal(flipped.train.features, site.train.features)
    assert flipped.test is site.test
    everything = label_flip(site)
    np.testing.assert_array_equal(everything.train.targets["label"], 1 - y)


def test_label_flip_on_tcga_reverses_survival_order(tcga: FederatedDataset) -> None:
    site = tcga.sites["center-0"]
    t = np.asarray(site.train.targets["time"])
    flipped = label_flip(site)
    t2 = np.asarray(flipped.train.targets["time"])
    assert t2.min() == t.min()
    assert t2.max() == t.max()
    np.testing.assert_array_equal(np.argsort(t2, kind="stable")[::-1][:5].size, 5)
    assert np.corrcoef(t, t2)[0, 1] == pytest.approx(-1.0)
    np.testing.assert_array_equal(flipped.train.targets["event"], site.train.targets["event"])


def test_trigger_and_backdoor_on_real_data(tcga: FederatedDataset, wdbc: FederatedDataset) -> None:
    pooled = wdbc.pooled("train")
    trigger = make_trigger(pooled, num_features=3)
    assert len(trigger.values) == 3
    for name, value in trigger.values.items():
        j = pooled.feature_names.index(name)
        assert value > pooled.features[:, j].max()  # out of range, by one s.d.
        assert value < pooled.features[:, j].max() + 1.5 * pooled.features[:, j].std()
    test = wdbc.sites["site-1"].split("test")
    triggered = apply_trigger(test, trigger)
    cols = [pooled.feature_names.index(n) for n in trigger.values]
    others = [j for j in range(test.num_features) if j not in cols]
    np.testing.assert_array_equal(triggered.features[:, others], test.features[:, others])
    np.testing.assert_allclose(
        triggered.features[:, cols], [list(trigger.values.values())] * len(test)
    )
    site = wdbc.sites["site-0"]
    poisoned = backdoor(site, trigger, copies=0.5, rng=np.random.default_rng(0))
    n = len(site.train)
    extra = len(poisoned.train) - n
    assert extra == round(0.5 * n)
    assert np.all(poisoned.train.targets["label"][n:] == 1)
    np.testing.assert_allclose(
        poisoned.train.features[n:, cols], [list(trigger.values.values())] * extra
    )
    np.testing.assert_array_equal(poisoned.train.features[:n], site.train.features)
    cox_site = tcga.sites["center-2"]
    cox = backdoor(cox_site, make_trigger(tcga.pooled("train")))
    m = len(cox_site.train)
    assert len(cox.train) == 2 * m
    assert np.all(cox.train.targets["event"][m:] == 1)
    assert np.all(cox.train.targets["time"][m:] < cox_site.train.targets["time"].min())
    with pytest.raises(ConfigurationError, match="not in the data"):
        apply_trigger(test, Trigger({"no-such": 1.0}))


def test_attack_success_rate_is_low_on_clean_models_and_high_on_backdoored(
    tcga: FederatedDataset, wdbc: FederatedDataset
) -> None:
    """Measured: a clean centrally trained model gives the trigger little weight (the
    trigger sits on the features least correlated with the outcome); one trained on a
    backdoored site's data learns it."""
    config = {"local_steps": 300, "batch_size": 32, "learning_rate": 0.05, "optimizer": "adam"}
    logistic = LogisticRegressionTask(30)
    init = logistic.init_parameters(np.random.default_rng(0))
    trigger = make_trigger(wdbc.pooled("train"))
    test = wdbc.pooled("test")
    clean = train_centralised(logistic, wdbc.pooled("train"), init, config, seed=0)
    clean_asr = attack_success_rate(logistic, clean, test, trigger)
    poisoned = backdoor(wdbc.sites["site-0"], trigger, copies=1.0)
    bad = train_centralised(logistic, poisoned.train, init, config, seed=0)
    bad_asr = attack_success_rate(logistic, bad, test, trigger)
    print(f"WDBC logistic ASR: clean {clean_asr:.3f}, backdoored {bad_asr:.3f}")
    assert clean_asr <= 0.2
    assert bad_asr >= 0.8
    cox = CoxPHTask(39)
    cinit = cox.init_parameters(np.random.default_rng(0))
    ctrigger = make_trigger(tcga.pooled("train"))
    cconfig = {**config, "batch_size": 8, "learning_rate": 0.01}
    cclean = train_centralised(cox, tcga.pooled("train"), cinit, cconfig, seed=0)
    cclean_asr = attack_success_rate(cox, cclean, tcga.pooled("test"), ctrigger)
    cbad = train_centralised(
        cox, backdoor(tcga.sites["center-0"], ctrigger).train, cinit, cconfig, seed=0
    )
    cbad_asr = attack_success_rate(cox, cbad, tcga.pooled("test"), ctrigger)
    print(f"TCGA Cox ASR: clean {cclean_asr:.3f}, backdoored {cbad_asr:.3f}")
    assert cclean_asr <= 0.2
    assert cbad_asr >= 0.8


def test_choose_malicious_is_deterministic_and_in_site_order() -> None:
    one = choose_malicious(SITES, 1, seed=3)
    assert one == choose_malicious(SITES, 1, seed=3)
    assert len(one) == 1
    two = choose_malicious(SITES, 2, seed=3)
    assert len(set(two)) == 2
    assert list(two) == sorted(two, key=SITES.index)
    assert len({choose_malicious(SITES, 2, seed=s) for s in range(10)}) > 1
    with pytest.raises(ConfigurationError):
        choose_malicious(SITES, 7, seed=0)


def test_every_attack_is_built_and_decision_events_match_the_actions(
    tcga: FederatedDataset,
) -> None:
    for name in ATTACKS:
        attack = make_attack(name, tcga)
        assert attack.name == name
        assert attack.tamper is not None or attack.poison is not None
    assert make_attack("scaling", tcga).tamper == Scaling(6.0)
    assert tuple(f"update_{a}" for a in DECISION_ACTIONS) == DECISION_EVENTS


def test_scaling_attacker_wrecks_fedavg_and_lying_evaluation_fools_the_summary(
    tcga: FederatedDataset,
) -> None:
    """1 of 6 sites boosts its update 100-fold. Reversed (x − 100·Δ, the boosted sign
    flip) it drives FedAvg's C-index on the clean pooled test split from ~0.8 to ≤ 0.55; in
    its honest direction (x + 100·Δ, model replacement by the site's own model) it does not:
    the C-index ranks, so the site's own model (~0.7) survives any positive scale. A site
    that declares and claims 10¹⁵ evaluation records with C-index 0.99996 sets the run's
    reported figure (no defence) while the model is untouched."""
    job = _cox_job(rounds=3, steps=20)
    mal = choose_malicious(SITES, 1, seed=0)[0]
    baseline = run_attack(tcga, job, attacks={})
    reversed_ = run_attack(tcga, job, attacks={mal: make_attack("scaling", tcga, boost=-100.0)})
    forward = run_attack(tcga, job, attacks={mal: make_attack("scaling", tcga, boost=100.0)})
    print(
        f"clean C-index: no attack {baseline.clean_metric:.4f}, {mal} scaling x-100 "
        f"{reversed_.clean_metric:.4f}, x+100 {forward.clean_metric:.4f}"
    )
    assert baseline.clean_metric > 0.75
    assert reversed_.clean_metric <= 0.55
    assert 0.6 < forward.clean_metric < baseline.clean_metric
    assert reversed_.malicious == {mal: "scaling"}
    assert reversed_.decisions == {}
    summary = json.loads(json.dumps(reversed_.to_dict()))
    assert summary["clean_metric"] == pytest.approx(reversed_.clean_metric)
    assert len(summary["rounds"]) == 3
    liar = {mal: make_attack("lying_evaluation", tcga)}
    lied = run_attack(tcga, job, attacks=liar)
    assert lied.reported_metric == pytest.approx(0.99996, abs=1e-4)
    assert lied.clean_metric == pytest.approx(baseline.clean_metric, abs=1e-9)  # model untouched
    print(
        f"reported C-index: honest {baseline.reported_metric:.4f}, liar {lied.reported_metric:.4f}"
    )
    assert not math.isnan(baseline.reported_metric)


def _secure(job: JobSpec) -> JobSpec:
    tables = job.to_mapping()
    tables["secure_aggregation"] = {"clip_range": 8.0, "quantisation_step": 1e-6}
    return JobSpec.from_mapping(tables)


def test_weight_inflation_needs_its_declared_count_and_then_dominates(
    tcga: FederatedDataset,
) -> None:
    """The exchange refuses a claim above what the site declared at registration (here its
    honest 129 rows); declared 10¹⁵ (as the harness does; a site that declared nothing is
    not capped either), the 10¹⁵-example update is the whole FedAvg aggregate."""
    job = _cox_job(rounds=1)
    inflated = make_attack("weight_inflation", tcga)
    assert inflated.declared == INFLATED_EXAMPLES
    honest_count = dataclasses.replace(inflated, declared=len(tcga.sites["center-3"].train))
    refused = run_attack(tcga, job, attacks={"center-3": honest_count})
    assert refused.history[0].num_rejected == 1
    assert refused.history[0].num_replies == 5
    assert any(
        e.kind != "round_failed" and e.node_id == "center-3" and "declared" in e.message
        for e in refused.events
    )
    taken = run_attack(tcga, job, attacks={"center-3": inflated})
    assert taken.history[0].num_rejected == 0
    assert taken.parameters is not None
    # every weight moved by ~50: the honest sites' 866 − n examples weigh nothing beside 10¹⁵
    np.testing.assert_allclose(taken.parameters["weight"], 50.0, atol=0.1)


def test_tampers_cannot_reach_a_secure_aggregation_update(tcga: FederatedDataset) -> None:
    """Under SecAgg+ the update leaves only masked inside SECAGG replies, which every
    training tamper passes through: the model is bit-identical to the honest run's. The
    evaluation replies are in the clear, so a lying evaluation still sets the figure."""
    job = _secure(_cox_job(rounds=1))
    honest = run_attack(tcga, job, attacks={})
    liar = make_attack("lying_evaluation", tcga)
    attacked = run_attack(
        tcga,
        job,
        attacks={
            "center-2": dataclasses.replace(liar, tamper=Chain((SignFlip(100.0), liar.tamper)))
        },  # type: ignore[arg-type]
    )
    assert attacked.history[0].train_metrics["secagg.survivors"] == 6.0
    assert honest.parameters is not None
    assert attacked.parameters is not None
    for name in honest.parameters:
        np.testing.assert_array_equal(attacked.parameters[name], honest.parameters[name])
    assert attacked.reported_metric == pytest.approx(0.99996, abs=1e-4)
    assert honest.reported_metric < 0.9


def test_robust_median_keeps_the_c_index_against_the_boosted_attacker(
    tcga: FederatedDataset,
) -> None:
    """The attacker of the test above, against ``[robust] aggregator = "median"``: the
    coordinate-wise median ignores one boosted update, so the C-index stays near the
    no-attack run's; every update of the run is a decision event."""
    tables = _cox_job(rounds=3, steps=20).to_mapping()
    tables["robust"] = {"aggregator": "median"}
    job = JobSpec.from_mapping(tables)
    mal = choose_malicious(SITES, 1, seed=0)[0]
    clean = run_attack(tcga, job, attacks={})
    attacked = run_attack(tcga, job, attacks={mal: make_attack("scaling", tcga, boost=-100.0)})
    print(
        f"median: clean C-index no attack {clean.clean_metric:.4f}, "
        f"{mal} scaling x-100 {attacked.clean_metric:.4f}"
    )
    assert attacked.clean_metric >= clean.clean_metric - 0.05
    assert attacked.clean_metric > 0.7
    assert set(attacked.decisions) == set(SITES)
    assert sum(attacked.decisions[mal].values()) == 3


def test_weight_caps_and_median_against_the_issues_liar(tcga: FederatedDataset) -> None:
    """The issue's site (declares and claims 10¹⁵ examples, parameters + 50; reports
    C-index 0.99996). ``max_weight`` bounds its evaluation claim's weight, so the reported
    figure is no longer the liar's, but not its parameter shift (+50 at a capped weight
    still dominates the mean); the median ignores the shift."""
    mal = choose_malicious(SITES, 1, seed=0)[0]
    capped = _cox_job(rounds=3, steps=20, max_weight=250)
    liar = run_attack(tcga, capped, attacks={mal: make_attack("lying_evaluation", tcga)})
    honest = run_attack(tcga, capped, attacks={})
    inflated = {mal: make_attack("weight_inflation", tcga)}
    still = run_attack(tcga, capped, attacks=inflated)
    tables = capped.to_mapping()
    tables["robust"] = {"aggregator": "median"}
    median = run_attack(tcga, JobSpec.from_mapping(tables), attacks=inflated)
    print(
        f"max_weight 250: reported C-index honest {honest.reported_metric:.4f}, "
        f"liar {liar.reported_metric:.4f}; weight inflation clean C-index "
        f"{still.clean_metric:.4f} (median: {median.clean_metric:.4f})"
    )
    assert liar.reported_metric < 0.95
    assert liar.reported_metric > honest.reported_metric  # bounded, not removed
    assert still.clean_metric < honest.clean_metric - 0.08
    assert median.clean_metric > 0.72
    assert sum(median.decisions[mal].values()) == 3  # one decision per round
