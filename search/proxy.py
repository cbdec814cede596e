"""Proxy training: a short, real training run whose held-out top-1 ranks candidates.

`proxy_score` never raises for a bad candidate: a diverging run (NaN/inf loss) comes back as a failed
`ProxyResult` with its reason, because one broken architecture must not end a campaign. Early stopping is the
caller's decision, made per epoch through `callback` (optuna pruners, Ray schedulers); a callback that
returns False stops the run and marks it pruned, one that raises (e.g. `optuna.TrialPruned`) propagates.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn
from torch.nn import functional as F

from ..errors import FastVitNasError
from ..fastvit.model import build_model
from ..fastvit.spec import ArchSpec
from .data import ProxyData

PROXY_VERSION = 1
"""Bumped whenever the training recipe changes meaning, so old cached scores are not reused."""


class ProxyBudget(BaseModel):
    """How much training one candidate gets, and where. Everything but `threads` is part of the cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(1, ge=1, description="passes over the training subset (ignored when steps is set)")
    steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs when given")
    batch_size: int = Field(32, ge=2)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    warmup_frac: float = Field(0.1, ge=0, lt=1, description="share of steps with a linear warm-up")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    threads: int | None = Field(None, ge=1, description="CPU threads; None keeps torch's setting")
    device: str = "cpu"
    amp: bool = Field(True, description="mixed precision and channels_last on CUDA (no effect on CPU)")
    seed: int = 0

    @model_validator(mode="after")
    def _known_device(self) -> ProxyBudget:
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        return self

    @classmethod
    def parse(cls, text: str | None = None, **defaults: Any) -> ProxyBudget:
        """`key=value,key=value` (as typed on the command line, over `defaults`) into a budget, or one error line."""
        fields: dict[str, Any] = {}
        for item in filter(None, (text or "").split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise FastVitNasError(f"--budget: expected key=value, got {item!r}")
            fields[key.strip().replace("-", "_")] = None if value.strip().lower() == "none" else value.strip()
        try:
            return cls(**{**defaults, **fields})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(map(str, err["loc"])) or "budget"
            raise FastVitNasError(f"--budget {where}: {err['msg']}") from None

    def scaled(self, factor: int) -> ProxyBudget:
        """The same recipe trained `factor` times longer (the long budget of a fidelity check)."""
        if self.steps is not None:
            return self.model_copy(update={"steps": self.steps * factor})
        return self.model_copy(update={"epochs": self.epochs * factor})

    def cache_settings(self) -> dict[str, Any]:
        """Settings that change the result; thread count only changes speed."""
        return {"proxy_version": PROXY_VERSION, **self.model_dump(exclude={"threads"})}

    def plan(self, n_train: int) -> tuple[int, int]:
        """(epochs, steps per epoch) for a training subset of `n_train` images."""
        per_epoch = max(1, n_train // self.batch_size)
        epochs = self.epochs if self.steps is None else math.ceil(self.steps / per_epoch)
        return epochs, per_epoch


@dataclass(frozen=True)
class EpochReport:
    """What a callback sees after each epoch: enough for a pruner to compare candidates."""

    epoch: int
    train_loss: float
    val_top1: float


@dataclass(frozen=True)
class ProxyResult:
    """One candidate's proxy training. `top1` is None unless `status == 'ok'`."""

    arch_id: str
    status: Literal["ok", "failed", "pruned"]
    top1: float | None
    val_loss: float | None
    epochs: int
    steps: int
    loss_curve: tuple[float, ...] = field(default_factory=tuple)
    val_curve: tuple[float, ...] = field(default_factory=tuple)
    wall_time_s: float = 0.0
    images_per_s: float = 0.0
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProxyResult:
        return cls(**{**data, "loss_curve": tuple(data["loss_curve"]), "val_curve": tuple(data["val_curve"])})


Callback = Callable[[EpochReport], bool | None]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's CPU thread count for one run and restore it, so a library call leaves no global trace."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up to the base rate, then cosine to zero: the short-schedule recipe EcoNAS-style proxies use."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _optimizer(model: nn.Module, budget: ProxyBudget) -> torch.optim.Optimizer:
    """No weight decay on norms, biases and layer scales (1-d tensors), as timm's training recipes do."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": budget.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if budget.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=budget.lr, momentum=budget.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=budget.lr)


@torch.no_grad()
def _evaluate(model: nn.Module, data: ProxyData, device: torch.device, autocast, batch: int = 256):
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(data.val_y), batch):
        x = data.normalize(data.val_x[start:start + batch].to(device))
        y = data.val_y[start:start + batch].to(device)
        with autocast():
            logits = model(x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train()
    return correct / len(data.val_y), loss_sum / len(data.val_y)


def proxy_score(spec: ArchSpec, data: ProxyData, budget: ProxyBudget | None = None,
                callback: Callback | None = None) -> ProxyResult:
    """Train `spec` (resized to the data's channels and classes) under `budget`; score it on held-out images."""
    budget = budget or ProxyBudget()
    spec = spec.replace(in_chans=data.in_chans, num_classes=data.num_classes)
    device = torch.device(budget.device)
    cuda_amp = device.type == "cuda" and budget.amp
    amp_dtype = torch.bfloat16 if cuda_amp and torch.cuda.is_bf16_supported() else torch.float16

    def autocast():
        return torch.autocast("cuda", dtype=amp_dtype) if cuda_amp else contextlib.nullcontext()

    start = time.perf_counter()
    with torch_threads(budget.threads):
        torch.manual_seed(budget.seed)
        gen = torch.Generator().manual_seed(budget.seed)
        model = build_model(spec, drop_path_rate=budget.drop_path_rate).to(device).train()
        if cuda_amp:
            model = model.to(memory_format=torch.channels_last)
        opt = _optimizer(model, budget)
        epochs, per_epoch = budget.plan(len(data.train_y))
        total = budget.steps or epochs * per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(budget.warmup_frac * total)))
        scaler = torch.amp.GradScaler("cuda", enabled=cuda_amp and amp_dtype == torch.float16)
        bs = min(budget.batch_size, len(data.train_y))
        losses, tops, step, seen, train_time = [], [], 0, 0, 0.0
        val_loss = math.nan

        def result(status: str, reason: str | None = None) -> ProxyResult:
            return ProxyResult(
                arch_id=spec.arch_id, status=status, top1=tops[-1] if status == "ok" else None,
                val_loss=val_loss if status == "ok" else None, epochs=len(losses), steps=step,
                loss_curve=tuple(losses), val_curve=tuple(tops), wall_time_s=time.perf_counter() - start,
                images_per_s=seen / train_time if train_time else 0.0, reason=reason)

        for epoch in range(epochs):
            order = torch.randperm(len(data.train_y), generator=gen)
            epoch_loss, batches, t0 = 0.0, 0, time.perf_counter()
            for b in range(per_epoch):
                if step >= total:
                    break
                idx = order[b * bs:(b + 1) * bs]
                x = data.normalize(data.train_x[idx].to(device, non_blocking=True))
                y = data.train_y[idx].to(device, non_blocking=True)
                if cuda_amp:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    loss = F.cross_entropy(model(x).float(), y, label_smoothing=budget.label_smoothing)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    train_time += time.perf_counter() - t0
                    return result("failed", f"non-finite loss ({loss_value}) at step {step} (epoch {epoch})")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                epoch_loss += loss_value
                batches += 1
                step += 1
                seen += len(y)
            train_time += time.perf_counter() - t0
            top1, val_loss = _evaluate(model, data, device, autocast)
            if not math.isfinite(val_loss):
                return result("failed", f"non-finite validation loss after epoch {epoch}")
            losses.append(epoch_loss / max(1, batches))
            tops.append(top1)
            if callback is not None and callback(EpochReport(epoch, losses[-1], top1)) is False:
                return result("pruned", f"stopped by callback after epoch {epoch}")
        return result("ok")
