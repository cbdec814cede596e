"""Rules for ending an op's sweeps, replayed on the timings of builds that gave every op all its sweeps.

A build times each op in `Protocol.passes` sweeps, and one whose two fastest calm sweeps disagree by more than
`agree_tol` gets up to `extra_passes` more (`measure.best_of_passes`). On a noisy host most ops earn them: a torch
build made 9,458 timings where its sweeps planned 5,426 (`lut_fidelity_anchor27_torch_128.json`). Whether a looser
rule loses fidelity cannot be told from two builds, since the host differs between them by more than the rules do.
So a run of `benchmarks/lut_fidelity.py --agree-tol 0 --sweep-log` gives every op all its sweeps and logs each
timing; this script replays rules on those timings: for each op the sweeps a rule would have made, the one it
would have kept (calm first, then the fastest as measured, as a build keeps), the table that makes, refitted on the
run's calibration points, and how it predicts the run's held-out networks, the same end-to-end timings for every
rule. Each rule is scored without and with the re-check of entries above their family's trend (`trend.py`), the
re-check's logged sweeps replayed by the same rule on the entries the run re-checked; replayed with every sweep,
the table is the run's own (same figures).

A rule is `extra:agree_tol[:floor_ms]`: two sweeps agree when the slower is within `agree_tol` of the faster, or
within `agree_tol` of `floor_ms` for ops faster than that (an absolute tolerance for small ops, whose share of a
network is small).

    .venv/bin/python benchmarks/sweep_rules_replay.py benchmarks/results/lut_fidelity_sweeplog27_torch_128.json

Prints a table per run and writes benchmarks/results/sweep_rules_replay.json.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fastvit_nas.fastvit.spec import ArchSpec
from fastvit_nas.latency_lut import LatencyTable, Predictor, resolve_space
from fastvit_nas.latency_lut.build import refit
from fastvit_nas.latency_lut.speed import within_calm_band
from fastvit_nas.latency_lut.validate import figures

RESULTS = Path(__file__).parent / "results"
BUILD_SWEEPS = "ops + networks"
"""The `desc` of a build's sweeps in the log (`lut_fidelity.sweeps_logged`)."""
RECHECK_SWEEPS = "re-check"
"""The `desc` of its re-check of entries above their family's trend (`build.measure_missing`)."""
DEFAULT_RULES = ("2:0", "0:0", "1:0.05", "2:0.05", "2:0.10", "2:0.20", "2:0.05:0.2", "2:0.05:0.5", "2:0.05:1.0")


@dataclass(frozen=True)
class Rule:
    """When an op's sweeps end: after the planned two, once two calm sweeps agree or `extra` more were made."""

    extra: int
    agree_tol: float
    floor_ms: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Rule:
        return cls(*(f(v) for f, v in zip((int, float, float), text.split(":"), strict=False)))

    def __str__(self) -> str:
        if self.extra == 0:
            return "no extra sweeps"
        floor = f", floor {self.floor_ms:g} ms" if self.floor_ms else ""
        return f"up to {self.extra} extra, agree {self.agree_tol:g}{floor}"

    def agree(self, fastest: list[float]) -> bool:
        return len(fastest) == 2 and fastest[1] - fastest[0] <= self.agree_tol * max(fastest[0], self.floor_ms)

    def replay(self, sweeps: list[dict], planned: int = 2) -> tuple[dict, int]:
        """The timing kept for one op and the timings made, compared as `best_of_passes` compares them: calm by
        the calm level's anchor at each comparison (an earlier calm sweep stops counting as calm when the anchor
        falls below it), then the fastest as measured. An op left with no calm sweep gets one more, as a build's
        catch-up once the host is calm would (the next sweep logged); failing that, its best as measured on the
        calm scale, as `SpeedNormalised.as_calm` puts it."""
        best, fastest, made = sweeps[0], [], len(sweeps)
        for index, sweep in enumerate(sweeps):
            anchor = sweep["anchor"]
            best = min(best, sweep, key=lambda t: calm_first(t, anchor))
            if sweep["settled"]:
                fastest = sorted([*fastest, sweep["measured_ms"]])[:2]
            if index >= planned - 1 and (index == planned - 1 + self.extra or self.agree(fastest)):
                made = index + 1
                break
        if not within_calm_band(best["slowdown"], anchor) and made < len(sweeps):
            anchor = sweeps[made]["anchor"]
            best = min(best, sweeps[made], key=lambda t: calm_first(t, anchor))
            made += 1
        if not within_calm_band(best["slowdown"], anchor):
            best = {**best, "latency_ms": best["measured_ms"] / anchor}
        return best, made


def calm_first(timing: dict, anchor: float) -> tuple[bool, float]:
    """The key by which `best_of_passes` keeps the better of two sweeps (`measure.calm_first`), for a logged sweep
    judged by the calm level's anchor of the moment."""
    return not within_calm_band(timing["slowdown"], anchor), timing["measured_ms"]


def op_sweeps(log: Path) -> dict[str, dict[str, list[dict]]]:
    """Per sweeps' `desc` (the build's, its re-check, ...), each op's timings in the order made."""
    sweeps: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    with gzip.open(log, "rt") as lines:
        for line in lines:
            row = json.loads(line)
            if "-in:" in row["item"]:
                sweeps[row["desc"]][row["item"]].append(row)
    return sweeps


def replay_rule(rule: Rule, build: dict[str, list[dict]], recheck: dict[str, list[dict]],
                ) -> tuple[dict[str, float], int, dict[str, float], int]:
    """Latency per op and timings made by `rule`, without and then with the run's re-check replayed by the same
    rule: a re-checked entry keeps the better of its two timings, calm first by the anchor at the re-check's end,
    as `build.measure_missing` does. The re-check is replayed on the entries the run re-checked, those above
    their family's trend in the run's own table; a rule with fewer sweeps could have flagged others."""
    kept, made = {}, 0
    for key, timings in build.items():
        kept[key], count = rule.replay(timings)
        made += count
    anchor = max((t for timings in recheck.values() for t in timings), key=lambda t: t["at"],
                 default={"anchor": 1.0})["anchor"]
    rechecked, again_made = dict(kept), made
    for key, timings in recheck.items():
        again, count = rule.replay(timings)
        again_made += count
        if calm_first(again, anchor) < calm_first(kept[key], anchor):
            rechecked[key] = again
    return ({k: t["latency_ms"] for k, t in kept.items()}, made,
            {k: t["latency_ms"] for k, t in rechecked.items()}, again_made)


def score(run_table: LatencyTable, latencies: dict[str, float], specs: list[ArchSpec],
          measured: np.ndarray) -> tuple[dict, pd.Series]:
    """The held-out figures of a copy of the run's table with these op latencies, refitted on the run's
    calibration points, and its latencies by key."""
    table = LatencyTable(copy.deepcopy(run_table.meta), run_table.rows.copy())
    points = table.meta.calibration["points"]
    table.rows["latency_ms"] = table.rows["key"].map(latencies).fillna(table.rows["latency_ms"])
    refit(table, points)
    stats = figures(Predictor(table).predict_many(specs), measured)
    latencies_now = table.rows.set_index("key")["latency_ms"]
    return {k: stats[k] for k in ("within_10", "within_5", "mape", "spearman")}, latencies_now


def replay_run(results: Path, rules: list[Rule]) -> list[dict]:
    """One row per configuration of the run and rule: timings made and the held-out figures, without and with the
    re-check."""
    run = json.loads(results.read_text())
    rows = []
    for config in run["results"]:
        lut = Path(config["lut"])
        if not lut.exists():
            lut = results.with_suffix("") / lut.name
        log = lut.with_name(f"{lut.stem}_sweeps.jsonl.gz")
        sweeps = op_sweeps(log)
        build, recheck = sweeps[BUILD_SWEEPS], sweeps[RECHECK_SWEEPS]
        per_spec = config["per_spec"]
        specs = resolve_space(run["args"]["space"]).sample(config["n"], run["args"]["seed"])
        if [s.arch_id for s in specs] != per_spec["arch_id"]:
            raise SystemExit(f"{results}: the held-out specs do not match the run's (space or seed changed)")
        measured = np.array(per_spec["measured_ms"])
        run_table = LatencyTable.load(lut)

        name = f"{config['backend']} {config['img_size']} px"
        rows.append({"run": name, "rule": "as run", "op_timings": sum(map(len, build.values())),
                     "recheck_timings": sum(map(len, recheck.values())),
                     **{k: config[k] for k in ("within_10", "within_5", "mape", "spearman")}})
        reference = None
        for rule in rules:
            kept, made, rechecked, again_made = replay_rule(rule, build, recheck)
            stats, latencies = score(run_table, kept, specs, measured)
            reference = latencies if reference is None else reference
            off = np.abs(np.log(latencies / reference.reindex(latencies.index)))
            with_recheck, _ = score(run_table, rechecked, specs, measured)
            rows.append({"run": name, "rule": str(rule), "op_timings": made, "recheck_timings": again_made - made,
                         "ops_off_5": float(100 * np.mean(off > np.log(1.05))), **stats,
                         "with_recheck": with_recheck})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="lut_fidelity.py results JSON run with --sweep-log")
    parser.add_argument("--rules", nargs="+", default=list(DEFAULT_RULES),
                        help="extra:agree_tol[:floor_ms]; the first is the one others' op timings are compared to")
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep_rules_replay.json")
    args = parser.parse_args()
    rules = [Rule.parse(text) for text in args.rules]
    rows = [row for run in args.runs for row in replay_run(run, rules)]
    print(f"{'run':20s} {'rule':40s} {'timings':>7s} {'±10%':>5s} {'±5%':>5s} {'MAPE':>6s} {'Spearman':>8s} "
          f"{'ops >5% off':>11s} | re-check: {'timings':>7s} {'±10%':>5s} {'±5%':>5s} {'MAPE':>6s}")
    for r in rows:
        off = f"{r['ops_off_5']:10.1f}%" if "ops_off_5" in r else ""
        again = r.get("with_recheck")
        tail = (f"{r['recheck_timings']:7d} {again['within_10']:4.0f}% {again['within_5']:4.0f}% {again['mape']:5.2f}%"
                if again else f"{r['recheck_timings']:7d} (the run's own figures include it)")
        print(f"{r['run']:20s} {r['rule']:40s} {r['op_timings']:7d} {r['within_10']:4.0f}% {r['within_5']:4.0f}% "
              f"{r['mape']:5.2f}% {r['spearman']:8.4f} {off:>11s} |           {tail}")
    args.out.write_text(json.dumps({"runs": [str(r) for r in args.runs], "rules": args.rules, "rows": rows},
                                   indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
