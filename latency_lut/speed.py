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
calm scale (`SpeedNormalised.as_calm`): the reference's spells overstated how much those items slowed. Calm is
within `CALM_BAND` of the lowest level the host held for a minute in the session (`CalmLevel`), so a brief dip
does not turn the rest of a build into one long spell; calm timings are all divided by one level, the lowest
applied in the session.
"""

from __future__ import annotations

import time
from collections import deque
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
"""How far above its calm level (`SpeedNormalised.calm`) the host still counts as calm: single readings
scattered by up to 5-6 % around a steady level, while the slow spells were 15-25 % slower."""
CALM_HOLD_S = 60.0
"""How long the host must stay at or below a level for it to become the session's calm level (`CalmLevel`): every
reading of the last minute (twelve at the 5 s reference interval). Set by any confirmed level instead, a dip of
three readings (about 15 s) set the calm level of a torch build on a host that ran 1.3-1.7 times slower before and
after: it waited six times (336 s) and re-timed 628 entries (`lut_fidelity_wc27_torch_128`). Replayed on the stored
traces (`benchmarks/calm_level_replay.py`), the share of readings taken calm went from 6 to 73 % there (calm level
1.02 to 1.47), 10 to 78 % and 22 to 57 % on two ONNX Runtime traces whose dips reached 0.64 and 0.73, and from 59-60
to 63-67 % on the two calmest tables' traces, whose calm level rose 4 %. Most slow spells there lasted one to seven
minutes, so a level the host keeps for less than a minute is one a wait for calm would seldom see again."""
CALM_POLL_S = 2.0
"""Seconds slept between readings while waiting for a slow spell to end: long enough to leave the host's cores
alone (a reading takes about 0.7 s), short against the spells of one to seven minutes seen on the reference host."""
BASELINE_READINGS = 3
"""Readings whose per-op fastest times make a new LUT's baseline (`SpeedNormalised._baseline`)."""
BASELINE_GAP_S = 1.0
"""Seconds between them: a stall of the process or a burst of other work spoils one of them, not all three."""
TRACE_LIMIT = 6000
"""Readings kept in the LUT metadata (the newest), about eight hours of measuring at 5 s intervals."""


def within_calm_band(level: float, calm: float) -> bool:
    """Whether a host at `level` counts as calm against a calm level of `calm` (`CALM_BAND`); also whether a
    timing divided by `level` is on the scale of calm timings divided by `calm` (`SpeedNormalised.settled`)."""
    return level <= calm * (1 + CALM_BAND)


class CalmLevel:
    """The host's speed in one session when nothing else takes its cores, in two figures with two jobs.

    `value` says whether the host is calm (within `CALM_BAND` of it): the lowest level it held for `CALM_HOLD_S`
    (every reading of such a stretch at or below it), and until a first stretch has been read, the lowest level
    applied. `anchor`, the lowest level applied, is what calm timings are divided by: it settles within the first
    minutes and then hardly moves, so a session's calm timings share one scale. Divided by `value` instead, which
    steps down through a session as quieter minutes turn up (from 1.09 to 0.83 in one build), a torch build's ops
    came out on eight scales, and its held-out networks scored 68 % within ±10 % against 86 % undivided
    (`lut_fidelity_held27_torch_128`). Both per session, not the baseline's 1.0: on a day when the host runs
    steadily 15 % slower than when the baseline was read, that is its calm, and no wait for calm would ever end.
    Plain arithmetic on (time, reading) pairs, so stored traces can be replayed through it
    (`benchmarks/calm_level_replay.py`)."""

    def __init__(self) -> None:
        self.value = self.anchor = float("inf")
        self._window: deque[tuple[float, float]] = deque()
        self._holding = False

    def applied(self, level: float) -> None:
        """A level the session applies: it may lower the anchor, and before a first stretch has been read, the
        calm level too (the session has to start from something, and its first reading, or its baseline's 1.0, is
        the best guess then)."""
        self.anchor = min(self.anchor, level)
        if not self._holding:
            self.value = self.anchor

    def observe(self, now: float, reading: float) -> None:
        """Once the readings span `CALM_HOLD_S`, the highest of the last `CALM_HOLD_S` is a level the host held.
        The first such level replaces the provisional one even when higher, since a dip may have set that."""
        window = self._window
        window.append((now, reading))
        while len(window) > 1 and window[1][0] <= now - CALM_HOLD_S:
            window.popleft()
        if now - window[0][0] >= CALM_HOLD_S:
            level = max(r for _, r in window)
            self.value = min(self.value, level) if self._holding else level
            self._holding = True


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
        self.calm = CalmLevel()
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
        reading = self._observe()
        level = self._confirmed(reading)
        if level is not None:
            self._apply(level)
        self.calm.applied(self.slowdown)
        self._read_at = time.monotonic()
        self._log(reading)
        return self.slowdown

    def _confirmed(self, reading: float) -> float | None:
        """The new level when `reading` is over `STEP` away from the applied slowdown and a second one agrees."""
        def off(r: float) -> float:
            return float(np.log(r / self.slowdown))

        if abs(off(reading)) <= np.log1p(STEP):
            return None
        second = self._observe()
        if off(second) * off(reading) > 0 and abs(off(second)) > np.log1p(STEP):
            return float(np.sqrt(reading * second))
        return None

    def settled(self, timing: Timing) -> bool:
        """Whether `timing` is on the calm timings' scale: divided by the anchor, not by a spell's level. Judged by
        the anchor, not by the calm level: a spell's timings, divided by its level, would pass for calm once a
        minute of that level made it the calm one, and stay divided by it beside calm timings divided by the
        anchor: the likely way an ONNX Runtime table built in the full test suite on a busy host came out 1.5
        times below the same ops timed undivided."""
        return within_calm_band(timing.slowdown, self.calm.anchor)

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
                reading = self._observe()
                self._log(reading)
                if self._is_calm(reading) and self._is_calm(second := self._observe()):
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
        left as measured (ONNX Runtime at 128 and 256 px). The calm level divides as its anchor
        (`CalmLevel.anchor`).
        """
        return self.calm.anchor if self._is_calm(self.slowdown) else self.slowdown

    def as_calm(self, timing: Timing) -> Timing:
        """`timing`, taken in a slow spell and divided by its level, divided as calm timings are instead: what a
        spell that outlasts the wait for calm leaves (`measure.best_of_passes`). The spell's level overstated how
        much the ops and networks of a 128 px build slowed (20 % and 6-30 %), as measured they were 1-7 % off."""
        return timing.divided_by(self.calm.anchor / timing.slowdown)

    def _read_if_due(self) -> None:
        if time.monotonic() - self._read_at >= self.protocol.reference_s:
            self.read()

    def _is_calm(self, level: float) -> bool:
        return within_calm_band(level, self.calm.value)

    def _apply(self, level: float) -> None:
        self.slowdown = level
        self.calm.applied(level)

    def _observe(self) -> float:
        """A reading, also handed to the calm level."""
        reading = self._reading()
        self.calm.observe(time.monotonic(), reading)
        return reading

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

