"""Proxy training: real learning on a small subset, exact repeatability, failures and pruning as results."""

import dataclasses

import pytest

from fastvit_nas.errors import FastVitNasError
from fastvit_nas.search import ProxyBudget, load_data, proxy_score
from fastvit_nas.space import load_space

SPEC = load_space("tiny").sample(0)
"""A 4-stage network of widths 16–128 with depth-1 stages: trains in seconds at 32 px on one thread."""


@pytest.fixture(scope="module")
def data():
    return load_data(img_size=32, train_per_class=20, val_per_class=10, seed=0)


def test_training_lifts_held_out_accuracy_well_above_chance(data):
    result = proxy_score(SPEC, data, ProxyBudget(epochs=6, batch_size=20, threads=1))
    assert result.ok and result.reason is None
    assert result.top1 > 0.3, result.val_curve  # 10 classes: chance is 0.1
    assert len(result.loss_curve) == 6 and result.loss_curve[-1] < result.loss_curve[0]
    assert result.steps == 60 and result.images_per_s > 0 and result.wall_time_s > 0


def test_same_seed_same_result_exactly(data):
    budget = ProxyBudget(epochs=1, batch_size=20, threads=1, drop_path_rate=0.1, seed=3)
    timing = {"wall_time_s", "images_per_s"}

    def run(b):
        return {k: v for k, v in proxy_score(SPEC, data, b).to_dict().items() if k not in timing}

    first = run(budget)
    assert run(budget) == first
    assert run(budget.model_copy(update={"seed": 4})) != first


def test_steps_budget_stops_mid_epoch(data):
    result = proxy_score(SPEC, data, ProxyBudget(steps=7, batch_size=50, threads=1))
    assert result.ok and result.steps == 7 and result.epochs == 2  # 4 steps per epoch


@pytest.mark.parametrize("budget, dataset_change", [
    (ProxyBudget(epochs=1, batch_size=20, lr=1e6, threads=1), {}),
    (ProxyBudget(epochs=1, batch_size=20, threads=1), {"std": (0.0,)}),  # x / 0: injected inf/NaN input
])
def test_diverging_run_is_a_failed_result_not_an_exception(data, budget, dataset_change):
    result = proxy_score(SPEC, dataclasses.replace(data, **dataset_change), budget)
    assert result.status == "failed" and not result.ok and result.top1 is None
    assert "non-finite" in result.reason


def test_callback_sees_every_epoch_and_can_prune(data):
    seen = []

    def stop_after_first(report):
        seen.append(report)
        return False

    result = proxy_score(SPEC, data, ProxyBudget(epochs=3, batch_size=50, threads=1), stop_after_first)
    assert result.status == "pruned" and result.epochs == 1 and len(seen) == 1
    assert seen[0].epoch == 0 and 0.0 <= seen[0].val_top1 <= 1.0

    class Pruned(Exception):
        pass

    def raise_pruned(_report):
        raise Pruned

    with pytest.raises(Pruned):  # e.g. optuna.TrialPruned reaches the objective untouched
        proxy_score(SPEC, data, ProxyBudget(epochs=2, batch_size=50, threads=1), raise_pruned)


def test_budget_parsing_and_scaling():
    budget = ProxyBudget.parse("epochs=2, optimizer=sgd,lr=0.1,threads=none", seed=5)
    assert (budget.epochs, budget.optimizer, budget.lr, budget.threads, budget.seed) == (2, "sgd", 0.1, None, 5)
    assert budget.scaled(8).epochs == 16 and ProxyBudget(steps=10).scaled(8).steps == 80
    assert "threads" not in budget.cache_settings()
    for text, message in [("epochs", "key=value"), ("epochs=0", "epochs"), ("color=red", "color"),
                          ("optimizer=lion", "optimizer"), ("device=tpu", "device")]:
        with pytest.raises(FastVitNasError, match=message):
            ProxyBudget.parse(text)
