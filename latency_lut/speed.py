"""Host-speed normalisation: a fixed reference workload, re-timed through a build, puts every timing on one scale.

A shared virtual machine's speed moves in steps: on the reference host the same eleven ops ran 12-15 % faster
for a minute, then slower for three, then faster again, within one six-minute build (`benchmarks/lut_fidelity.py`
records the trace). An op timed in a fast spell and its neighbour in a slow one make a table that describes no
single state of the machine, and the calibration cannot undo it because the error differs per op. So every
`reference_s` seconds the ops of a fixed reference network (`REFERENCE`, which has every op type) are timed, the
host's slowdown is their geometric-mean ratio to the LUT's baseline (its first readings, stored in the LUT), and
each op or network timing is divided by the slowdown in force (its calm level while the host is calm:
`SpeedNormalised.divisor`). Measured on that host: a torch op re-timed 21 times over six minutes varied by 7.7 %
(median coefficient of variation) as measured and by 3.8 % normalised.
Latencies of a LUT with a reference are therefore at the host's speed when its baseline was read; incremental
builds and validations on other days are divided by their own slowdown against the same baseline.

A reading has noise of its own: on a calm host (readings 0.98-1.10) tables normalised by every reading scored up to
10 points lower within ±10 % than the same timings un-normalised, while during spells they scored up to 30 points
higher (`benchmarks/lut_fidelity.py` reports both). So a reading only moves the applied slowdown when it is more
than `STEP` away and a second reading confirms it (`read`). With confirmation, five of six tables on a stepping
host scored as well or up to 32 points better within ±10 % than without, one 8 points worse (runs I and J of the
project's notes); `Protocol.reference_s` 0 turns it off.

The reference ops are timed as the ops are: `Protocol.op_replicas` copies per timed call (eight for ONNX Runtime).
Read as one copy per session run, the ONNX Runtime reference saw a third of the host's slow spells: 1.08 while
ops, each timed in a fresh session as a build times them, ran 1.32 times slower and networks 1.24 times, inside
`CALM_BAND`, so the spells passed for calm; its readings correlated 0.58 with the networks' level. Read as eight
copies: 1.22 and 0.84, and divided by it the ops' and networks' timings varied by 13.7 % and 8.5 % (std of log
time over ten minutes) against 17.1 % and 12.0 % divided by the single copies and 19.7 % and 14.4 % as measured.
A repeat on a host whose spells the single copies did see (`benchmarks/speed_reference.py`) found a smaller gap:
correlation 0.85 against 0.80, networks' spread 8.9 % against 9.5 %.

A division is still an approximation. The slow spells took the host's second core (single-thread timings stayed
within 1-2 % through them), and each op suffers by how parallel it is. So an item whose every sweep fell in a slow
spell is timed again after the sweeps, once the host is calm (`SpeedNormalised.await_calm`, up to
`Protocol.calm_wait_s` of waiting). What a spell that outlasts the wait leaves keeps its time as measured, on the
calm scale (`SpeedNormalised.as_calm`): the reference's spells overstated how much those items slowed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from torch import nn

from ..fastvit.presets import PRESETS
from .backends.base import Backend
from .measure import Protocol, Timing, geomean_ratio
from .modules import op_module
from .ops import Op, unique_ops
from .table import LutMeta, reference_replicas

REFERENCE = "sa12"
"""The preset whose ops are the speed reference: RepMixer and attention blocks, and every other op type."""
STEP = 0.05
"""How far a reading must be from the applied slowdown, confirmed by a second one, to replace it. On a calm host
single readings scattered by 3-5 % (and up to 10 %) around a steady level; the host's steps were 10-25 %."""
CALM_BAND = 0.10
"""How far above the fastest level seen (`SpeedNormalised.calm`) the host still counts as calm: single readings
scattered by up to 5-6 % around a steady level, while the slow spells were 15-25 % slower."""
CALM_POLL_S = 2.0
"""Seconds slept between readings while waiting for a slow spell to end: long enough to leave the host's cores
alone (a reading takes about 0.7 s), short against the spells of one to seven minutes seen on the reference host."""
BASELINE_READINGS = 3
"""Readings whose per-op fastest times make a new LUT's baseline (`SpeedNormalised._baseline`)."""
BASELINE_GAP_S = 1.0
"""Seconds between them: a stall of the process or a burst of other work spoils one of them, not all three."""
TRACE_LIMIT = 6000
"""Readings kept in the LUT metadata (the newest), about eight hours of measuring at 5 s intervals."""


class SpeedNormalised(Backend):
    """Wraps a backend: same device, settings and protocol, but each timing divided by the host's slowdown.

    A reading costs 0.2-0.7 s (eleven ops by the protocol, each prepared once; 0.2-0.3 s for ONNX Runtime), so at
    an interval of 5 s it adds 5-12 % to a build and its validation. A longer interval is cheaper but blind to
    shorter spells: on the reference host, re-timed ONNX Runtime ops varied by 10.8 % as measured, by 5.4 %
    normalised every 5 s and by 9.0 % every 15 s. The baseline, the trace of readings and the seconds they took
    live in `meta.speed_reference`, which the caller saves with the LUT.
    """

    def __init__(self, inner: Backend, meta: LutMeta) -> None:
        self.inner = inner
        self.name = inner.name
        self.device, self.dtype, self.threads, self.protocol = inner.device, inner.dtype, inner.threads, inner.protocol
        self.record = meta.speed_reference = meta.speed_reference or {
            "network": REFERENCE, "replicas": inner.protocol.op_replicas, "baseline_ms": {}, "trace": []}
        self.timers = {op.key: inner.prepare(op_module(op), op.in_shape, reference_replicas(self.record))
                       for op in unique_ops([PRESETS[REFERENCE]], meta.img_size, meta.batch).values()}
        self.slowdown = 1.0
        self.calm = float("inf")
        """The fastest level applied in this session (set by its first reading): the host's speed when nothing else
        takes its cores. Per session, not the baseline's 1.0: on a day when the host runs steadily 15 % slower than
        when the baseline was read, that is its calm, and no wait for calm would ever end."""
        self._read_at = -float("inf")

    def version(self) -> str:
        return self.inner.version()

    def fingerprint(self) -> dict[str, str | int]:
        return self.inner.fingerprint()

    def read(self) -> float:
        """Read the reference now and return the slowdown to apply from here on.

        The first reading of a LUT sets its baseline (`_baseline`) and slowdown 1. Later, a reading moves the
        applied slowdown only when it differs from it by more than `STEP` and a second reading taken at once agrees:
        a step of the host is then followed within a second, while a single stray reading leaves the timings alone.
        """
        reading = self._reading()
        level = self._confirmed(reading)
        if level is not None:
            self._apply(level)
        self.calm = min(self.calm, self.slowdown)
        self._read_at = time.monotonic()
        self._log(reading)
        return self.slowdown

    def _confirmed(self, reading: float) -> float | None:
        """The new level when `reading` is over `STEP` away from the applied slowdown and a second one agrees."""
        def off(r: float) -> float:
            return float(np.log(r / self.slowdown))

        if abs(off(reading)) <= np.log1p(STEP):
            return None
        second = self._reading()
        if off(second) * off(reading) > 0 and abs(off(second)) > np.log1p(STEP):
            return float(np.sqrt(reading * second))
        return None

    def settled(self, timing: Timing) -> bool:
        return self._is_calm(timing.slowdown)

    def await_calm(self) -> bool:
        """Read the reference and, in a slow spell, sleep until it ends or `calm_wait_s` pass; whether it ended.

        On the reference host the slow spells came from the second core being taken (single-thread timings stayed
        within 1-2 % through them, two-thread ones stepped by 15-20 %), and how much an item suffers depends on how
        parallel it is, so no divisor fits every op and network. Timings taken while the host is calm need none.
        The host is calm again once two readings in a row are within `CALM_BAND` of its calm level. Most spells
        there lasted one to seven minutes, so a build does not wait at every spell; `best_of_passes` calls this
        after its sweeps, before each item whose every sweep fell in one. The host is read no more often than a
        timing would read it: reading before every item (0.6 s each) took 627 s of a 128 px build in which a
        quarter of the ops needed the catch-up.
        """
        self._read_if_due()
        if not self._is_calm(self.slowdown):
            start = time.monotonic()
            while time.monotonic() - start < self.protocol.calm_wait_s:
                time.sleep(CALM_POLL_S)
                reading = self._reading()
                self._log(reading)
                if self._is_calm(reading) and self._is_calm(second := self._reading()):
                    self._apply(float(np.sqrt(reading * second)))
                    break
            self._read_at = time.monotonic()
            self.record["waits"] = self.record.get("waits", 0) + 1
            self.record["waited_s"] = round(self.record.get("waited_s", 0.0) + time.monotonic() - start, 3)
        return self._is_calm(self.slowdown)

    def divisor(self) -> float:
        """What a timing taken now is divided by: the calm level while the host is calm, else the spell's level.

        Within `CALM_BAND` the applied level moves with the readings' own noise (3-6 %, confirmed steps included):
        in run AB of the project's notes, tables whose ops and networks were all timed calm or re-timed once calm
        scored 78 % and 98 % within ±10 % divided by the level in force, and 84 % and 100 % with the calm timings
        left as measured (ONNX Runtime at 128 and 256 px).
        """
        return self.calm if self._is_calm(self.slowdown) else self.slowdown

    def as_calm(self, timing: Timing) -> Timing:
        """`timing`, taken in a slow spell and divided by its level, divided by the calm level instead: what a
        spell that outlasts the wait for calm leaves (`measure.best_of_passes`). The spell's level overstated how
        much the ops and networks of a 128 px build slowed (20 % and 6-30 %), as measured they were 1-7 % off."""
        return timing.divided_by(self.calm / timing.slowdown)

    def _read_if_due(self) -> None:
        if time.monotonic() - self._read_at >= self.protocol.reference_s:
            self.read()

    def _is_calm(self, level: float) -> bool:
        return level <= self.calm * (1 + CALM_BAND)

    def _apply(self, level: float) -> None:
        self.slowdown = level
        self.calm = min(self.calm, level)

    def _log(self, reading: float) -> None:
        trace = self.record["trace"]
        trace.append([time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), round(reading, 5), round(self.slowdown, 5)])
        del trace[:-TRACE_LIMIT]

    def _reading(self) -> float:
        """Time the reference ops and return their geometric-mean ratio to the baseline (set by the first call)."""
        baseline = self.record["baseline_ms"]
        if not baseline:
            baseline.update(self._baseline())
        return geomean_ratio(self._time_reference(), baseline)

    def _baseline(self) -> dict[str, float]:
        """Each reference op's fastest time over `BASELINE_READINGS` readings `BASELINE_GAP_S` apart.

        Every timing of the LUT, on any day, is divided by its ratio to this, so one bad reading must not set it.
        Taken from a single reading, it once came out 43-300 times too slow for ten of the eleven ops (run `nc4`
        of the project's notes, a build started beside a file scan): every later reading was 0.011-0.019, ordinary
        readings passed for slow spells, and the table's timings were divided by levels a fourth apart.
        """
        readings = []
        for index in range(BASELINE_READINGS):
            if index:
                time.sleep(BASELINE_GAP_S)
            readings.append(self._time_reference())
        return {key: min(reading[key] for reading in readings) for key in readings[0]}

    def _time_reference(self) -> dict[str, float]:
        start = time.monotonic()
        now = {key: timer().latency_ms for key, timer in self.timers.items()}
        self.record["reading_s"] = round(self.record.get("reading_s", 0.0) + time.monotonic() - start, 3)
        return now

    def time_module(self, module: nn.Module, in_shape: tuple[int, ...], copies: int = 1, replicas: int = 1,
                    protocol: Protocol | None = None) -> Timing:
        return self._normalised(lambda: self.inner.time_module(module, in_shape, copies, replicas, protocol))

    def network_timer(self, module: nn.Module, in_shape: tuple[int, ...]) -> Callable[[], Timing]:
        inner = self.inner.network_timer(module, in_shape)
        return lambda: self._normalised(inner)

    def time_op(self, op: Op) -> Timing:
        return self._normalised(lambda: self.inner.time_op(op))

    def chain_timer(self, before: nn.Module, after: nn.Module, in_shape: tuple[int, ...],
                    mid_shape: tuple[int, ...]) -> Callable[[Op | None, int], Timing]:
        inner = self.inner.chain_timer(before, after, in_shape, mid_shape)
        return lambda block, copies: self._normalised(lambda: inner(block, copies))

    def _normalised(self, time_inner: Callable[[], Timing]) -> Timing:
        """The inner backend's timing, read at the host's speed of the moment and divided by its slowdown."""
        self._read_if_due()
        return time_inner().divided_by(self.divisor())


def speed_normalised(backend: Backend, meta: LutMeta) -> Backend:
    """`backend` with timings normalised by the LUT's speed reference, or unchanged when the protocol has none."""
    if backend.protocol.reference_s <= 0 or isinstance(backend, SpeedNormalised):
        return backend
    return SpeedNormalised(backend, meta)

