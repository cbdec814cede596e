"""Where the LUT gets its specs: a seeded stream from the project's search space (`fastvit_nas.space`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..fastvit.spec import ArchSpec
from ..space import SearchSpace, load_space


@dataclass(frozen=True)
class SpaceSource:
    """A loaded space and the name it was loaded by (recorded in the LUT metadata)."""

    ref: str
    space: SearchSpace

    def samples(self, seed: int) -> Iterator[ArchSpec]:
        """An endless, seeded stream of specs from the space."""
        rng = np.random.default_rng(seed)
        while True:
            yield self.space.sample(rng)

    def sample(self, n: int, seed: int, exclude: frozenset[str] | set[str] = frozenset()) -> list[ArchSpec]:
        """`n` distinct specs (by arch id) not in `exclude`: held-out sets never overlap calibration sets."""
        out: dict[str, ArchSpec] = {}
        for tries, spec in enumerate(self.samples(seed)):
            if spec.arch_id not in exclude:
                out.setdefault(spec.arch_id, spec)
            if len(out) >= n or tries > 100 * n + 1000:
                break
        return list(out.values())


def resolve_space(ref: str | None = "default") -> SpaceSource:
    """`default`, `tiny` or a space YAML path, loaded by `fastvit_nas.space.load_space`."""
    ref = ref or "default"
    return SpaceSource(ref, load_space(ref))
