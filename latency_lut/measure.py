"""The measurement protocol, shared by every op and every end-to-end network so both are timed alike.

Warm-up (a minimum number of calls and a minimum time, so caches, allocators and lazy kernel selection settle), then
rounds of timed calls until the running median moves by less than `rel_tol` between rounds (or a repetition/time cap
is hit). We record the median (robust to the shared machine's hiccups), the inter-quartile range as the spread, the
minimum and the number of timed calls. `estimator` picks which of median and minimum is *the* latency: the minimum by
default, the usual choice on a machine shared with other jobs, whose interference only ever adds time, and the one
every figure of `benchmarks/lut_fidelity.py` was measured with (the median was the default before, so a plain
`lut build` made a table no fidelity run had scored). Taken from the same calls of a stored run's networks on a noisy
host, the median put 68 and 80 % of them within ±10 % in two rounds, the fastest call 82 and 88 %
(`benchmarks/lut_estimators.py`). Builders time every item in `passes` sweeps over all items and keep each item's
fastest sweep (`best_of_passes`): a burst of interference from another job then spoils one sweep of a few items, not
the table, and the later sweeps run in a shuffled order; an item whose two fastest sweeps disagree by more than
`agree_tol` gets up to `extra_passes` more. End-to-end networks get `network_passes` sweeps: measured twice over at
128 px with ONNX Runtime (50 networks, 2 threads, no speed reference), two sweeps each agreed within ±10 % for 42 %
and 70 % of them, four sweeps for 100 % and 100 % (MAPE 2.98 % and 1.84 %), for twice the time; a network is one long
item, so a burst of interference spoils a larger share of its sweeps than of an op's. Eight sweeps did not beat four:
two full 128 px torch builds and validations with eight on a noisy host scored 86 and 82 % within ±10 %, four with the
same seed right after the second 92 % and with another seed 74 %
(`benchmarks/results/lut_fidelity_np8{a,b}_torch_128.json`, `lut_fidelity_np4{b,c}_torch_128.json`). Those sweeps
were long: 10-60 calls, up to a second, inside which the host's load hardly changes, so four sweeps drew four states
of it. `network_calls` makes each sweep of a network that many calls (0: as an op), spread over more sweeps: the
default is 16 sweeps of 4 calls. Re-timing a stored 128 px torch table's calibration and held-out networks in
alternating rounds on a noisy host, 16 sweeps of 4 calls put 98 % of the held-out networks within ±10 % over four
rounds, four long sweeps 88 %, and the networks repeated within ±10 % for 88-94 % against 54-60 %
(`benchmarks/lut_network_sweeps.py`); a full 128 px torch build and validation with them scored 100 % (MAPE 3.4 %),
repeat 100 %, and took 494 s to validate 50 networks against about 600 s with four long sweeps
(`benchmarks/results/lut_fidelity_nc4b_torch_128.json`). Each such sweep starts with `network_warmup_calls` warm-up
calls (None: an op's `warmup_calls`, as LUTs written before the field were timed): a network is built once for all
its sweeps, so from its second sweep on it is warm already, and one warm-up call found the same floors as three
(1.003 and 0.993 times three's, medians, torch and ONNX Runtime at 128 px, two rounds each alternating) and tables as
good (±10 %: 98 and 96 % against 98 and 96 % on torch, 92 and 96 % against 94 and 96 % on ONNX Runtime) in 28 and 7 %
less time (`benchmarks/results/lut_network_sweeps_sweeplog27_*_128_warmup1.json`). `allocator` fixes the memory
regime (`allocator.py`: freed memory is reused, never faulted in afresh on every call). `reference_s` is
how often the host's speed is re-read from a fixed reference workload during a build or validation (`speed.py`; 0
turns it off): every timing is then divided by the host's slowdown, and `Timing.slowdown` keeps the factor; items
whose every sweep fell in a slow spell are timed again after the sweeps, once the host is calm, waiting up to
`calm_wait_s` for it (0: only if it is calm already). `cold_weights_mb` keeps an op's weights out of the cache, as a
whole network's are (`weight_copies`). `op_replicas` copies of an op run within one timed call, whose time is shared
among them: a runtime with a fixed cost per call (an ONNX Runtime session run) pays it once per network, not once per
op (`None`: the backend's own default). Blocks whose input is at most `context_max_side` on a side are timed inside a
light network, `context_copies` of them chained, in `context_passes` sweeps (`in_context.py`; 0: none, the default).
Entries more than `recheck_tol` (log) above their family's trend are timed again in `recheck_passes` sweeps, after all
others, and keep the faster timing (`trend.py`; 0: never). `distinct_copies` records that the copies' weights differ
in value, not just in name, as ONNX Runtime's do since this field (`backends/onnxruntime._Graph`): it stores equal
initializers once, and LUTs from before it timed attention blocks and heads with their copies' weights shared. A
backend supplies `run_once`, which performs one call and returns its duration in milliseconds (wall clock on CPU, CUDA
events on GPU).

Warm-up time: 10 ms. A build's ops are short, so the warm-up was most of their time: with 50 ms, timing an op
took 1.9-2.0 times as long as with 10 ms. Side by side on 20 default-space networks (2 threads, `min`,
best of 2 rounds, affine calibration scored by leave-one-out), 10 ms fitted the networks as well: ONNX Runtime
5.91 % against 6.46 % at 128 px and 1.88 % against 2.18 % at 256 px, torch 3.45 % against 3.37 % at 128 px; no
time-based warm-up at all (only the warm-up calls) was no worse at 128 px either, but left the op sums 1-5 %
higher (medians; up to 9 %), as if the first calls were still settling, where 10 ms stayed within 1 % (median)
of 50 ms.
"""

from __future__ import annotations

import itertools
import math
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TypeVar

import numpy as np
from torch import nn

from ..errors import FastVitNasError
from .allocator import ALLOCATORS

T = TypeVar("T")


@dataclass(frozen=True)
class Protocol:
    """How long to warm up and when to stop repeating; stored in the LUT metadata as the stated protocol."""

    warmup_calls: int = 3
    warmup_s: float = 0.01
    min_reps: int = 10
    max_reps: int = 60
    max_s: float = 1.0
    round_size: int = 5
    rel_tol: float = 0.02
    estimator: str = "min"
    passes: int = 2
    network_passes: int = 16
    network_calls: int = 4
    network_warmup_calls: int | None = 1
    extra_passes: int = 2
    agree_tol: float = 0.05
    allocator: str = "reuse"
    reference_s: float = 5.0
    calm_wait_s: float = 60.0
    cold_weights_mb: float | None = None
    op_replicas: int | None = None
    context_max_side: int = 0
    context_copies: int = 12
    context_passes: int = 3
    distinct_copies: bool = True
    recheck_tol: float = 0.10
    recheck_passes: int = 2

    def __post_init__(self) -> None:
        if self.estimator not in ("median", "min"):
            raise FastVitNasError(f"estimator must be median or min, got {self.estimator!r}")
        if self.allocator not in ALLOCATORS:
            raise FastVitNasError(f"allocator must be one of {', '.join(ALLOCATORS)}, got {self.allocator!r}")
        if self.reference_s < 0:
            raise FastVitNasError(f"reference_s must be >= 0 (0: no speed reference), got {self.reference_s!r}")
        if self.calm_wait_s < 0:
            raise FastVitNasError(f"calm_wait_s must be >= 0 (0: never wait), got {self.calm_wait_s!r}")
        if self.cold_weights_mb is not None and self.cold_weights_mb < 0:
            raise FastVitNasError(f"cold_weights_mb must be >= 0 (0: warm weights, None: the backend's default), "
                                  f"got {self.cold_weights_mb!r}")
        for name, least in (("passes", 1), ("network_passes", 1), ("network_calls", 0), ("context_passes", 1),
                            ("extra_passes", 0), ("agree_tol", 0), ("recheck_tol", 0), ("recheck_passes", 1)):
            if getattr(self, name) < least:
                raise FastVitNasError(f"{name} must be >= {least}, got {getattr(self, name)!r}")
        if self.context_max_side < 0:
            raise FastVitNasError(f"context_max_side must be >= 0 (0: every block timed alone), got "
                                  f"{self.context_max_side!r}")
        if self.context_copies < 1:
            raise FastVitNasError(f"context_copies must be >= 1, got {self.context_copies!r}")
        if self.op_replicas is not None and self.op_replicas < 1:
            raise FastVitNasError(f"op_replicas must be >= 1 (None: the backend's default), got {self.op_replicas!r}")
        if self.network_warmup_calls is not None and self.network_warmup_calls < 0:
            raise FastVitNasError(f"network_warmup_calls must be >= 0 (None: as an op's), got "
                                  f"{self.network_warmup_calls!r}")

    def for_networks(self) -> Protocol:
        """The protocol of one sweep of an end-to-end network: `network_calls` timed calls when set, else as an op's
        (rounds until the median settles), after `network_warmup_calls` warm-up calls when set, else an op's."""
        changes = {} if self.network_warmup_calls is None else {"warmup_calls": self.network_warmup_calls}
        if self.network_calls:
            changes.update(min_reps=self.network_calls, max_reps=self.network_calls, round_size=self.network_calls)
        return replace(self, **changes)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def quick(cls) -> Protocol:
        """Few repetitions and no speed reference: for tests and smoke runs, not for a LUT one should trust."""
        return cls(warmup_calls=1, warmup_s=0.0, min_reps=3, max_reps=10, max_s=0.5, round_size=3, rel_tol=0.05,
                   estimator="min", network_passes=2, extra_passes=0, reference_s=0.0, calm_wait_s=0.0,
                   cold_weights_mb=0.0)


MS_FIELDS = ("latency_ms", "median_ms", "min_ms", "iqr_ms")
"""The fields of a `Timing` (and columns of a LUT) in milliseconds: what a change of host speed rescales."""


def geomean_ratio(now: dict[str, float], then: dict[str, float]) -> float:
    """The geometric mean of `now[k] / then[k]` over the keys both have (1.0 when none): how much slower `now` is."""
    common = [k for k in now if k in then]
    return float(np.exp(np.mean([np.log(now[k] / then[k]) for k in common]))) if common else 1.0


@dataclass(frozen=True)
class Timing:
    """The latency by the protocol's estimator, plus median, minimum, spread (IQR) and timed calls.

    `slowdown` is the host's slowdown against the LUT's reference (`speed.py`) that the times were divided by:
    1.0 when no reference was used; the time as measured is `measured_ms`.
    """

    latency_ms: float
    median_ms: float
    min_ms: float
    iqr_ms: float
    count: int
    slowdown: float = 1.0

    @property
    def measured_ms(self) -> float:
        """The latency as the clock measured it, before the division by the host's slowdown."""
        return self.latency_ms * self.slowdown

    def divided_by(self, slowdown: float) -> Timing:
        """The times at the reference speed, for a host running `slowdown` times slower than it."""
        return replace(self, **{f: getattr(self, f) / slowdown for f in MS_FIELDS}, slowdown=self.slowdown * slowdown)


MAX_WEIGHT_COPIES = 64
"""At most this many copies of one op: ops with tiny weights would need thousands to fill `cold_weights_mb`, and
loading a few kilobytes of weights costs next to nothing in a network either."""


def weight_copies(module: nn.Module, protocol: Protocol) -> int:
    """How many copies of `module`, run in turn, keep its weights out of the cache as a whole network does.

    An op timed alone reads the same weights on every call, so they stay in the cache; in a network every other
    op's weights and activations pass through the cache between two calls of it. On the reference host (2 MiB L2
    per core, 32 MiB L3, torch, 2 threads) the ops of 24 default-space networks, timed warm, summed to 0.71-0.91
    of their network at 128 px; cycled through 64 MB of copies, to 0.87-0.95. After an affine calibration the
    networks' leave-one-out error fell from 4.28 % (max 11.3 %) to 1.84 % (max 7.9 %) at 128 px, and from 2.67 %
    to 1.93 % at 256 px. 8 MB of copies, beyond L2 but inside L3, did not help at 128 px (4.41 %). The copies hold
    `protocol.cold_weights_mb` of weights together, so each call finds its weights beyond the last-level cache.
    """
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    if not protocol.cold_weights_mb or weight_bytes == 0:
        return 1
    return int(min(MAX_WEIGHT_COPIES, math.ceil(protocol.cold_weights_mb * 1e6 / weight_bytes)))


def round_robin(calls: Sequence[Callable[[], object]]) -> Callable[[], object]:
    """One call that runs `calls` in turn; the protocol's warm-up then passes through them like the timed calls."""
    turns = itertools.cycle(calls)
    return lambda: next(turns)()


def measure(run_once: Callable[[], float], protocol: Protocol, replicas: int = 1) -> Timing:
    """Time `run_once` by the protocol: warm-up, then rounds until the median is stable or a cap is hit.

    When each call runs `replicas` copies of an op, a sample is one copy's share of the call, and the protocol's
    counts of calls are divided among the copies: as many runs of the op are timed, in fewer and longer calls,
    so replicas do not multiply a build's time.
    """
    if replicas > 1:
        shared = replace(protocol, **{name: math.ceil(getattr(protocol, name) / replicas)
                                      for name in ("warmup_calls", "min_reps", "max_reps", "round_size")})
        return measure(lambda: run_once() / replicas, shared)
    start = time.perf_counter()
    for _ in range(protocol.warmup_calls):
        run_once()
    while time.perf_counter() - start < protocol.warmup_s:
        run_once()
    samples: list[float] = []
    previous = None
    start = time.perf_counter()
    while True:
        samples.extend(run_once() for _ in range(protocol.round_size))
        median = float(np.median(samples))
        enough = len(samples) >= protocol.min_reps
        stable = previous is not None and abs(median - previous) <= protocol.rel_tol * previous
        if (enough and stable) or len(samples) >= protocol.max_reps or time.perf_counter() - start > protocol.max_s:
            break
        previous = median
    q25, q75 = np.percentile(samples, [25, 75])
    low = float(np.min(samples))
    return Timing(latency_ms=median if protocol.estimator == "median" else low, median_ms=median, min_ms=low,
                  iqr_ms=float(q75 - q25), count=len(samples))


def wall_clock(fn: Callable[[], object]) -> Callable[[], float]:
    """`run_once` for synchronous devices (CPU): the wall time of one call in milliseconds."""

    def run_once() -> float:
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) / 1e6

    return run_once


class CalmHost(typing.Protocol):
    """What `best_of_passes` asks of the backend: whether a timing was taken at the host's calm speed, to wait
    until the host is calm again, and a spell's timing put on the calm scale (`Backend.settled`,
    `Backend.await_calm`, `Backend.as_calm`)."""

    def settled(self, timing: Timing) -> bool: ...

    def await_calm(self) -> bool: ...

    def as_calm(self, timing: Timing) -> Timing: ...


def calm_first(host: CalmHost | None) -> Callable[[Timing], tuple[bool, float]]:
    """The key by which the better of two timings of one item is the smaller: one timed while `host` was calm
    before one from a slow spell, then the lower time as measured (`best_of_passes`)."""
    settled = host.settled if host is not None else lambda _: True
    return lambda timing: (not settled(timing), timing.measured_ms)


def best_of_passes(items: Sequence[T], time_one: Callable[[T], Timing], passes: int | Sequence[int],
                   on_done: Callable[[T, Timing], None] | None = None, seed: int = 0,
                   host: CalmHost | None = None, extra: int = 0, agree_tol: float = 0.05) -> list[Timing]:
    """Time every item in `passes` sweeps (or `passes[i]` for item i) and keep, per item, its best sweep: calm
    before fast.

    The first sweep keeps the given order, later ones visit the items in a seeded shuffle: an op timed right after
    the same predecessor in every sweep would inherit the same cache, allocator and kernel-selection state each
    time, and one unlucky state would survive the minimum. A sweep timed while `host` was calm (`speed.py`) needed
    no correction, so it beats one from a slow spell even when that one measured faster: on the reference host
    ONNX Runtime networks often did not slow in a spell that slowed the reference ops by 13-23 %, and four kept from
    such sweeps came out 12-23 % too fast once divided. Among equals the lowest time as measured wins, not the
    lowest as divided, which would favour the sweep whose reading overshot. Items whose every sweep fell in a spell
    are timed once more after the sweeps, each once `host` has waited for calm, until a spell outlasts its wait:
    there, networks timed calm were predicted within ±10 % in 30 of 30 cases, those divided in 12 of 20. What a
    spell that outlasts the wait leaves is put on the calm scale as measured (`host.as_calm`), not divided by the
    spell's level: in a 128 px build, 65 ops so left came out 20 % below two calm builds' entries divided (median;
    68 % of them over 16 % below) and 1 % above as measured (6 % over 16 % off); 12 networks re-measured in such a
    spell, 6-30 % below their first measurement divided and 1-7 % above it as measured.
    With counts per item, the later sweeps visit only the items that still have sweeps left (end-to-end networks
    need more than ops: `Protocol.network_passes`). An item of two sweeps or more whose two fastest calm sweeps
    differ by more than `agree_tol` gets up to `extra` more, until two agree: interference only adds time, so
    two sweeps that agree are both at the host's floor, and one that lies far above the other says the fastest
    may not be either. `on_done(item, timing)` is called as each item's timing is final (for progress and
    checkpoints).
    """
    rng = np.random.default_rng(seed)
    settled = host.settled if host is not None else lambda _: True
    done = on_done or (lambda *_: None)
    rank = calm_first(host)

    best: list[Timing | None] = [None] * len(items)
    fastest_calm: list[list[float]] = [[] for _ in items]
    last = [count - 1 for count in ([passes] * len(items) if isinstance(passes, int) else passes)]
    final = [False] * len(items)
    unsettled: list[int] = []

    def agreed(i: int) -> bool:
        pair = fastest_calm[i]
        return last[i] == 0 or (len(pair) == 2 and pair[1] <= pair[0] * (1 + agree_tol))

    for sweep in range(max(last, default=0) + extra + 1):
        for i in range(len(items)) if sweep == 0 else rng.permutation(len(items)):
            if final[i]:  # an item is final by its sweep `last + extra` at the latest
                continue
            timing = time_one(items[i])
            best[i] = timing if best[i] is None else min(best[i], timing, key=rank)
            if settled(timing):
                fastest_calm[i] = sorted([*fastest_calm[i], timing.measured_ms])[:2]
            if sweep >= last[i] and (sweep == last[i] + extra or agreed(i)):
                final[i] = True
                if settled(best[i]):
                    done(items[i], best[i])
                else:
                    unsettled.append(i)
    calm = True
    for i in sorted(unsettled):  # fixed after the sweeps: a later, faster calm level must not re-open what is done
        calm = calm and host.await_calm()
        if calm:
            best[i] = min(best[i], time_one(items[i]), key=rank)
        if not settled(best[i]):
            best[i] = host.as_calm(best[i])
        done(items[i], best[i])
    return best
