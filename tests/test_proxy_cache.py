"""The proxy cache: one training per (arch, settings, data), shared across processes, pruned runs not kept."""

import json
import multiprocessing

import pytest

from fastvit_nas.errors import FastVitNasError
from fastvit_nas.search import ProxyBudget, ProxyCache, cache_key, load_data
from fastvit_nas.search import cache as cache_module
from fastvit_nas.space import load_space

SPEC = load_space("tiny").sample(1)
BUDGET = ProxyBudget(epochs=1, batch_size=25, threads=1)


@pytest.fixture(scope="module")
def data():
    return load_data(img_size=32, train_per_class=5, val_per_class=2, seed=0)


@pytest.fixture
def calls(monkeypatch):
    """Count real trainings behind the cache."""
    counted = []
    real = cache_module.proxy_score

    def counting(*args, **kwargs):
        counted.append(args[0].arch_id)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "proxy_score", counting)
    return counted


def test_cache_prevents_retraining(tmp_path, data, calls):
    first = ProxyCache(tmp_path).score(SPEC, data, BUDGET)
    again = ProxyCache(tmp_path).score(SPEC, data, BUDGET)  # a new process would open the folder afresh
    assert len(calls) == 1 and again == first
    ProxyCache(tmp_path).score(SPEC, data, BUDGET.model_copy(update={"threads": 2}))  # speed only: same key
    assert len(calls) == 1
    ProxyCache(tmp_path).score(SPEC, data, BUDGET.model_copy(update={"lr": 1e-3}))
    assert len(calls) == 2
    entry = json.loads((tmp_path / f"{cache_key(SPEC, data, BUDGET)}.json").read_text())
    assert entry["data"]["fingerprint"] == data.fingerprint and entry["spec"] == SPEC.to_dict()


def test_key_covers_arch_settings_and_data(data):
    other_data = load_data(img_size=32, train_per_class=5, val_per_class=2, seed=1)
    keys = {cache_key(SPEC, data, BUDGET), cache_key(load_space("tiny").sample(2), data, BUDGET),
            cache_key(SPEC, other_data, BUDGET), cache_key(SPEC, data, BUDGET.model_copy(update={"seed": 1}))}
    assert len(keys) == 4


def test_pruned_runs_are_not_cached_and_cached_curves_are_replayed(tmp_path, data, calls):
    cache = ProxyCache(tmp_path)
    assert cache.score(SPEC, data, BUDGET, lambda _r: False).status == "pruned"
    full = cache.score(SPEC, data, BUDGET)
    assert full.ok and len(calls) == 2
    replayed = []
    assert cache.score(SPEC, data, BUDGET, replayed.append) == full and len(calls) == 2
    assert [r.val_top1 for r in replayed] == list(full.val_curve)
    assert cache.score(SPEC, data, BUDGET, lambda _r: False).status == "pruned"


def test_corrupt_entry_is_a_clear_error(tmp_path, data):
    (tmp_path / f"{cache_key(SPEC, data, BUDGET)}.json").write_text("{")
    with pytest.raises(FastVitNasError, match="corrupt cache entry"):
        ProxyCache(tmp_path).score(SPEC, data, BUDGET)


def _score_in_child(folder: str) -> dict:
    data = load_data(img_size=32, train_per_class=5, val_per_class=2, seed=0)
    return ProxyCache(folder).score(SPEC, data, BUDGET).to_dict()


def test_two_processes_train_a_candidate_once(tmp_path):
    """The per-key lock makes the second worker wait and read, instead of training the same network again:
    both get the very same result, wall time included, which two separate trainings would not share."""
    with multiprocessing.get_context("fork").Pool(2) as pool:
        first, second = pool.map(_score_in_child, [str(tmp_path)] * 2)
    assert first == second and first["status"] == "ok"
    assert len(list(tmp_path.glob("*.json"))) == 1
