"""How would a LUT's build have judged its host's calm under each rule? Replays the speed reference's stored trace.

A LUT keeps the readings of its speed reference (`meta.speed_reference["trace"]`: time, reading, level applied).
Replayed in order, two rules for the session's calm level: the lowest level applied (the rule before `CALM_HOLD_S`)
and `speed.CalmLevel` (the lowest level held for `CALM_HOLD_S`). Per LUT, each rule's final calm level and the
share of readings within `CALM_BAND` of the calm level in force when taken: what a build would have timed as calm
rather than waited for or re-timed. The trace mixes a build's and its validation's sessions, each of which starts
its calm level afresh; the replay runs them as one, so its figures are those of the longest session's rule.
Writes benchmarks/results/calm_level_replay.json.

    .venv/bin/python benchmarks/calm_level_replay.py benchmarks/results/lut_fidelity_*/*.parquet
"""

from __future__ import annotations

import argparse
import calendar
import json
import time
from pathlib import Path

import numpy as np

from fastvit_nas.latency_lut import LatencyTable
from fastvit_nas.latency_lut.speed import CALM_BAND, CALM_HOLD_S, CalmLevel, within_calm_band

RESULTS = Path(__file__).parent / "results"


def replay(trace: list[list]) -> dict:
    """Both rules over one trace: final calm levels and shares of readings taken calm."""
    seconds = [calendar.timegm(time.strptime(at, "%Y-%m-%dT%H:%M:%SZ")) for at, _, _ in trace]
    held = CalmLevel()
    calm_applied, calm_held = [], []
    for now, (_, reading, applied) in zip(seconds, trace, strict=True):
        held.observe(now, reading)
        held.applied(applied)
        calm_applied.append(within_calm_band(reading, held.anchor))  # the anchor is the lowest level applied
        calm_held.append(within_calm_band(reading, held.value))
    return {"readings": len(trace), "minutes": round((seconds[-1] - seconds[0]) / 60, 1),
            "median_reading": round(float(np.median([r for _, r, _ in trace])), 3),
            "lowest_applied": round(held.anchor, 3),
            "calm_share_lowest_applied": round(100 * np.mean(calm_applied), 1),
            "held": round(held.value, 3), "calm_share_held": round(100 * np.mean(calm_held), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("luts", nargs="+", help="LUT parquet files whose metadata keeps a speed reference trace")
    parser.add_argument("--out", default=str(RESULTS / "calm_level_replay.json"))
    args = parser.parse_args()
    rows = []
    for lut in args.luts:
        trace = (LatencyTable.load(Path(lut)).meta.speed_reference or {}).get("trace", [])
        if trace:
            rows.append({"lut": lut, **replay(trace)})
    if not rows:
        raise SystemExit("error: none of the LUTs keeps a speed reference trace")
    print(f"calm level held for {CALM_HOLD_S:.0f} s against the lowest level applied; calm share: readings within "
          f"{100 * CALM_BAND:.0f} % of the calm level in force")
    print(f"{'LUT':<50} {'readings':>8} {'minutes':>7} {'median':>6} "
          f"{'lowest':>6} {'share':>6} {'held':>6} {'share':>6}")
    for r in rows:
        print(f"{Path(r['lut']).parent.name[-50:]:<50} {r['readings']:>8} {r['minutes']:>7} {r['median_reading']:>6} "
              f"{r['lowest_applied']:>6} {r['calm_share_lowest_applied']:>6} {r['held']:>6} {r['calm_share_held']:>6}")
    Path(args.out).write_text(json.dumps({"args": vars(args), "calm_hold_s": CALM_HOLD_S, "calm_band": CALM_BAND,
                                          "rows": rows, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                         indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
