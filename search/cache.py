"""On-disk store of proxy results, so the same candidate is never trained twice in a campaign.

One JSON file per key in a directory: readable by people, written atomically (temp file + rename) so a reader
never sees half a result, and guarded by a per-key `flock` so that when two worker processes ask for the same
candidate at once, one trains and the other waits and reads its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from ..errors import FastVitNasError
from ..fastvit.spec import ArchSpec
from .data import ProxyData
from .proxy import Callback, EpochReport, ProxyBudget, ProxyResult, proxy_score


def cache_key(spec: ArchSpec, data: ProxyData, budget: ProxyBudget) -> str:
    """(arch id, proxy settings, data fingerprint) → one hex key."""
    spec = spec.replace(in_chans=data.in_chans, num_classes=data.num_classes)
    blob = json.dumps({"arch_id": spec.arch_id, "budget": budget.cache_settings(), "data": data.fingerprint},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class ProxyCache:
    """Proxy results under `directory`, keyed by `cache_key`. Pruned runs are not stored: they depend on the
    pruner's state, not on the candidate, and a later full run must still be able to train it."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FastVitNasError(f"{self.directory}: cannot create cache folder ({exc.strerror})") from None

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> ProxyResult | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return ProxyResult.from_dict(json.loads(path.read_text())["result"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FastVitNasError(f"{path}: corrupt cache entry ({exc}); delete it to retrain") from None

    def put(self, key: str, result: ProxyResult, context: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump({"key": key, **context, "result": result.to_dict()}, fh, indent=1)
        os.replace(tmp, self._path(key))

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        with (self.directory / f".{key}.lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def score(self, spec: ArchSpec, data: ProxyData, budget: ProxyBudget,
              callback: Callback | None = None) -> ProxyResult:
        """The cached result if there is one (its curve replayed through `callback`), else train and store."""
        key = cache_key(spec, data, budget)
        with self._locked(key):
            cached = self.get(key)
            if cached is None:
                result = proxy_score(spec, data, budget, callback)
                if result.status != "pruned":
                    self.put(key, result, {"spec": spec.to_dict(), "budget": budget.cache_settings(),
                                           "data": data.summary()})
                return result
        for epoch, (loss, top1) in enumerate(zip(cached.loss_curve, cached.val_curve, strict=True)):
            if callback is not None and callback(EpochReport(epoch, loss, top1)) is False:
                return replace(cached, status="pruned", top1=None, val_loss=None, epochs=epoch + 1,
                               loss_curve=cached.loss_curve[:epoch + 1], val_curve=cached.val_curve[:epoch + 1],
                               reason=f"stopped by callback after epoch {epoch} (cached run)")
        return cached
