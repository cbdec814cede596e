"""Strategies that order the options of one decision; the walker tries them in that order.

Every operation of `SearchSpace` is one depth-first walk over the same decisions with a different chooser:
random for `sample`, the optuna trial for `suggest`, the parents' values first for `crossover`, and so on.
Orders are lazy generators, so the options after the first are only drawn when a param/FLOP range forces
the walk to back up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import numpy as np


class Decision(NamedTuple):
    """One real choice. `name` is the optuna parameter; its `options` are the same wherever the name appears.

    `key` says what is decided (`("stage", i, field)`, `("tie", field)`, `("branches", field)`) so that
    values can be carried between networks; `stage` is the stage being built (None for branches).
    """

    name: str
    key: tuple
    options: tuple
    stage: int | None


class Chooser(Protocol):
    def order(self, decision: Decision) -> Iterator[Any]: ...


class InOrder:
    """File order: enumerates everything, or finds the first network."""

    def order(self, decision: Decision) -> Iterator[Any]:
        yield from decision.options


class AtRandom:
    """A uniform draw first; the rest in random order only if the walk backs up."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def order(self, decision: Decision) -> Iterator[Any]:
        options = decision.options
        first = int(self.rng.random() * len(options))  # scalar draws: ~10x cheaper than rng.integers
        yield options[first]
        rest = options[:first] + options[first + 1:]
        for j in self.rng.permutation(len(rest)):
            yield rest[j]


class FromTrial:
    """Asks an optuna trial; records what it answered per decision key."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.answers: dict[tuple, Any] = {}

    def order(self, decision: Decision) -> Iterator[Any]:
        value = self.trial.suggest_categorical(decision.name, list(decision.options))
        self.answers[(decision.key, decision.stage)] = value
        yield value


class Preferring:
    """Preferred values first (those that are options), then the rest.

    `rest="near"` orders the rest by distance in the option list from the first preferred value, which keeps
    a repaired network close to the one asked for; `rest="random"` needs `rng`. `avoid` returns values to
    skip entirely (a mutation must change its target decision).
    """

    def __init__(
        self,
        prefer: Callable[[Decision], list[Any]],
        rest: str = "near",
        rng: np.random.Generator | None = None,
        avoid: Callable[[Decision], list[Any]] = lambda _d: [],
    ) -> None:
        self.prefer, self.rest, self.rng, self.avoid = prefer, rest, rng, avoid

    def order(self, decision: Decision) -> Iterator[Any]:
        options = list(decision.options)
        skip = self.avoid(decision)
        wanted = [v for v in dict.fromkeys(self.prefer(decision)) if v in options and v not in skip]
        yield from wanted
        rest = [v for v in options if v not in wanted and v not in skip]
        if self.rest == "random":
            assert self.rng is not None, "random order needs an rng"
            yield from (rest[j] for j in self.rng.permutation(len(rest)))
        else:
            anchor = options.index(wanted[0]) if wanted else 0
            yield from sorted(rest, key=lambda v: (abs(options.index(v) - anchor), options.index(v)))
