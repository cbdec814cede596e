"""Proxy fidelity end to end through the CLI: sampled specs, short and long training, correlations, table, PNG."""

import json
import math

from fastvit_nas.cli import main
from fastvit_nas.search import FidelityReport, ProxyBudget, load_data, measure_fidelity, sample_specs
from fastvit_nas.space import load_space


def test_sample_specs_are_distinct_seeded_and_capped():
    specs = sample_specs(5, "tiny", seed=3)
    assert len({s.arch_id for s in specs}) == 5 and sample_specs(5, "tiny", seed=3) == specs
    assert all(s.stages[0].width == 16 for s in sample_specs(3, "tiny", seed=0, max_flops=3_000_000))


def test_spread_sample_spans_the_cost_range_in_flops_order():
    """The spread sample holds the uniform one's pool, so its FLOPs range can only be wider; here strictly."""
    space = load_space("default")
    flops = [[space.size(s).flops for s in sample_specs(6, "default", seed=2, spread=spread)]
             for spread in (False, True)]
    assert flops[1] == sorted(flops[1]) and len(set(flops[1])) == 6
    assert flops[1][0] < min(flops[0]) and flops[1][-1] > max(flops[0])
    assert sample_specs(6, "default", seed=2, spread=True) == sample_specs(6, "default", seed=2, spread=True)


def test_proxy_validate_writes_table_json_and_png(tmp_path, capsys):
    out = tmp_path / "fid"
    code = main(["proxy", "validate", "-n", "3", "--space", "tiny", "--train-per-class", "4", "--val-per-class", "2",
                 "--factor", "2", "--budget", "batch_size=20,threads=1", "--out", str(out),
                 "--cache", str(tmp_path / "cache"), "--repeat-long"])
    assert code == 0
    table = capsys.readouterr().out
    for scorer in ("proxy", "synflow", "naswot", "grad_norm", "snip", "params", "flops", "zc_vote", "long_reseeded"):
        assert f"\n{scorer} " in table
    assert "seconds per candidate" in table
    report = json.loads((out / "proxy_fidelity.json").read_text())
    assert report["factor"] == 2 and len(report["rows"]) == 3
    assert report["settings"]["long_budget"]["epochs"] == 2 * report["settings"]["budget"]["epochs"]
    assert report["settings"]["long_budget"]["seed"] != report["settings"]["budget"]["seed"]  # no shared noise
    assert all(-1 <= c["kendall"] <= 1 for c in report["correlations"].values() if c["kendall"] is not None)
    assert (out / "proxy_fidelity.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((tmp_path / "cache").glob("*.json"))) == 9  # proxy, long and long with another seed


def test_correlations_are_nan_when_undefined():
    corr = FidelityReport(rows=[], factor=8).correlations()
    assert corr["proxy"]["n"] == 0 and math.isnan(corr["proxy"]["kendall"])


def test_worker_processes_give_the_serial_results_in_spec_order():
    data = load_data(img_size=32, train_per_class=4, val_per_class=2, seed=0)
    specs = sample_specs(2, "tiny", seed=5)
    budget = ProxyBudget(epochs=1, batch_size=20, threads=1)
    seen = []
    parallel = measure_fidelity(specs, data, budget, factor=2, zero_cost=["params"], workers=2,
                                on_row=lambda row: seen.append(row.spec.arch_id))
    serial = measure_fidelity(specs, data, budget, factor=2, zero_cost=["params"])
    assert sorted(seen) == sorted(s.arch_id for s in specs)
    assert [r.spec for r in parallel.rows] == specs
    for p, s in zip(parallel.rows, serial.rows, strict=True):
        assert (p.proxy.loss_curve, p.long.val_curve, p.zero_cost) == (s.proxy.loss_curve, s.long.val_curve,
                                                                       s.zero_cost)
