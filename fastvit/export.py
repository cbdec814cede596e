"""Writing a fused variant as a folder that `timm.create_model('local-dir:OUT', pretrained=True)` loads.

Two layouts, chosen by the spec:
- stock: the spec is expressible with timm's own `FastVit` (four stages, one RepMixer kernel, one patch kernel,
  ConvFFN kernel 7, RepCPE 7x7 only on the last stage or nowhere). The config names a stock architecture
  (`fastvit_t8` or `fastvit_sa12`, whose CPE layout it inherits) and plain timm loads it without fastvit_nas.
- fastvit_nas: anything else; the config names `fastvit_nas` with the spec in `model_args`, loadable after
  `import fastvit_nas`.

Stock timm routes every FastViT checkpoint through `checkpoint_filter_fn`, which treats a state_dict without
`stem.0.conv_kxk.0.conv.weight` (true of every fused one) as an Apple checkpoint and renames `head.*` to
`head.fc.*` and `layer_scale_N` to `layer_scale_N.gamma`. The stock layout therefore stores exactly those keys
in their pre-rename spelling, and `_check_stock_keys` replays timm's filter at export time to prove the round
trip instead of trusting it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.fastvit import checkpoint_filter_fn
from torch import nn

from ..errors import FastVitNasError
from .io import save_spec
from .model import FastVitNas, build_model
from .registry import pretrained_cfg
from .reparameterize import reparameterize
from .spec import ArchSpec

_FFN_FUSED = re.compile(r"^(.*\.mlp\.conv)\.(weight|bias)$")
_LAYER_SCALE = re.compile(r"(layer_scale_\d)\.gamma$")


@dataclass
class ExportResult:
    out_dir: Path
    architecture: str
    stock: bool
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"out_dir": str(self.out_dir), "architecture": self.architecture, "stock_timm": self.stock,
                "files": self.files}


def stock_model_args(spec: ArchSpec) -> tuple[str, dict] | None:
    """The stock timm architecture and `model_args` that rebuild `spec`'s inference network, if any."""
    st = spec.stages
    repmixer_kernels = {s.repmixer_kernel for s in st if s.repmixer_kernel is not None}
    cpe = tuple(s.cpe_kernel for s in st)
    base = {(None,) * 4: "fastvit_t8", (None, None, None, 7): "fastvit_sa12"}.get(cpe)
    if (
        len(st) != 4
        or base is None
        or len(repmixer_kernels) > 1
        or len({s.patch_kernel for s in st[1:]}) != 1
        or any(s.ffn_kernel != 7 for s in st)
    ):
        return None
    return base, {
        "layers": [s.depth for s in st],
        "embed_dims": [s.width for s in st],
        "mlp_ratios": [s.mlp_ratio for s in st],
        "token_mixers": [s.mixer for s in st],
        "repmixer_kernel_size": repmixer_kernels.pop() if repmixer_kernels else 3,
        "down_patch_size": st[1].patch_kernel,
        "in_chans": spec.in_chans,
        "num_classes": spec.num_classes,
        "inference_mode": True,
    }


def _stock_state_dict(fused: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our fused keys → stock timm's inference keys, in the spelling timm's checkpoint filter expects.

    Stock timm keeps the ConvFFN conv+BN even in inference mode, so each fused conv is stored with a BN
    that computes `x * 1 + bias` exactly (running_var 1, weight sqrt(1 + eps)).
    """
    out: dict[str, torch.Tensor] = {}
    eps = nn.BatchNorm2d(1).eps
    for key, value in fused.items():
        match = _FFN_FUSED.match(key)
        if match is None:
            key = _LAYER_SCALE.sub(r"\1", key)
            out["head." + key[len("head.fc."):] if key.startswith("head.fc.") else key] = value
            continue
        prefix, kind = match.groups()
        if kind == "weight":
            out[f"{prefix}.conv.weight"] = value
            continue
        out[f"{prefix}.bn.weight"] = torch.full_like(value, math.sqrt(1.0 + eps))
        out[f"{prefix}.bn.bias"] = value
        out[f"{prefix}.bn.running_mean"] = torch.zeros_like(value)
        out[f"{prefix}.bn.running_var"] = torch.ones_like(value)
        out[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def _check_stock_keys(stored: dict[str, torch.Tensor], architecture: str, model_args: dict) -> None:
    """Replay stock timm's checkpoint filter on the stored dict; it must yield the stock model's keys."""
    from timm import create_model

    target = create_model(architecture, **model_args)
    remapped = checkpoint_filter_fn(dict(stored), target)
    expected = target.state_dict()
    if set(remapped) != set(expected) or any(remapped[k].shape != v.shape for k, v in expected.items()):
        missing = sorted(set(expected) - set(remapped))[:3]
        extra = sorted(set(remapped) - set(expected))[:3]
        raise FastVitNasError(f"stock export: timm's checkpoint filter would not load it (missing {missing}, "
                              f"unexpected {extra}); installed timm is incompatible with this layout")


def export(
    spec: ArchSpec,
    model: nn.Module,
    out_dir: Path,
    img_size: int = 256,
    onnx: bool = False,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
) -> ExportResult:
    """Fuse `model` (a train-time or already fused build of `spec`) and write the loadable folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fused = reparameterize(model)
    state = {k: v.detach().contiguous() for k, v in fused.state_dict().items()}
    stock = stock_model_args(spec)
    if stock is not None:
        architecture, model_args = stock
        state = _stock_state_dict(state)
        _check_stock_keys(state, architecture, model_args)
    else:
        architecture, model_args = "fastvit_nas", {"spec": spec.to_dict(), "inference_mode": True}
    cfg = pretrained_cfg(img_size, spec.num_classes, spec.in_chans, mean, std)
    config = {
        "architecture": architecture,
        "num_classes": spec.num_classes,
        "num_features": int(spec.stages[-1].width * 2),
        "pretrained_cfg": {**cfg, "input_size": list(cfg["input_size"]), "pool_size": list(cfg["pool_size"]),
                           "mean": list(mean), "std": list(std)},
        "model_args": model_args,
        "fastvit_nas": {"arch_id": spec.arch_id, "readable": spec.readable},
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(state, str(out_dir / "model.safetensors"), metadata={"arch_id": spec.arch_id})
    save_spec(spec, out_dir / "spec.json")
    files = ["config.json", "model.safetensors", "spec.json"]
    if onnx:
        export_onnx(fused, out_dir / "model.onnx", spec.in_chans, img_size)
        files.append("model.onnx")
    return ExportResult(out_dir, architecture, stock is not None, files)


def export_onnx(fused: nn.Module, path: Path, in_chans: int, img_size: int) -> None:
    """ONNX graph of the fused network with a dynamic batch axis (TorchScript exporter: fast, no dynamo)."""
    x = torch.zeros(1, in_chans, img_size, img_size)
    torch.onnx.export(fused, (x,), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)


def export_spec(spec: ArchSpec, out_dir: Path, img_size: int = 256, onnx: bool = False,
                checkpoint: Path | None = None) -> ExportResult:
    """Export from a spec and optional train-time checkpoint (safetensors of `build_model(spec)`)."""
    model: FastVitNas = build_model(spec)
    if checkpoint is not None:
        try:
            model.load_state_dict(load_file(str(checkpoint)), strict=True)
        except (OSError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise FastVitNasError(f"{checkpoint}: not train-time weights of this spec ({first})") from None
    return export(spec, model.eval(), out_dir, img_size=img_size, onnx=onnx)
