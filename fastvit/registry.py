"""timm registration: `timm.create_model('fastvit_nas', spec=...)` and one `fastvit_nas_<preset>` each.

Registered on `import fastvit_nas`, so exported non-stock variants (architecture `fastvit_nas`, spec in
`model_args`) load through timm's own `local-dir:` / hub path.
"""

from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .model import FastVitNas
from .presets import PRESETS
from .spec import ArchSpec


def pretrained_cfg(img_size: int = 256, num_classes: int = 1000, in_chans: int = 3,
                   mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN, std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
                   crop_pct: float = 0.9) -> dict:
    """timm's pretrained-config fields for a FastViT variant (FastViT's input is reduced 32x)."""
    return {
        "num_classes": num_classes,
        "input_size": (in_chans, img_size, img_size),
        "pool_size": (img_size // 32, img_size // 32),
        "crop_pct": crop_pct,
        "interpolation": "bicubic",
        "mean": tuple(mean),
        "std": tuple(std),
        "first_conv": "stem.0.conv_kxk.0.conv",
        "classifier": "head.fc",
    }


default_cfgs = generate_default_cfgs(
    {"fastvit_nas": pretrained_cfg(), **{f"fastvit_nas_{name}": pretrained_cfg() for name in PRESETS}}
)


def _create(variant: str, pretrained: bool, spec: ArchSpec | dict, **kwargs) -> FastVitNas:
    spec = ArchSpec.coerce(spec)
    # timm fills num_classes/in_chans from the default cfg unless given; the spec is the truth here.
    kwargs.setdefault("num_classes", spec.num_classes)
    kwargs.setdefault("in_chans", spec.in_chans)
    return build_model_with_cfg(
        FastVitNas,
        variant,
        pretrained,
        spec=spec,
        feature_cfg=dict(flatten_sequential=True, out_indices=kwargs.pop("out_indices", (0, 1, 2, 3))),
        **kwargs,
    )


@register_model
def fastvit_nas(pretrained: bool = False, spec: ArchSpec | dict | None = None, **kwargs) -> FastVitNas:
    """Any FastViT variant: pass `spec` as an `ArchSpec` or its dict (as stored in an export's config)."""
    if spec is None:
        raise TypeError("fastvit_nas needs spec=ArchSpec(...) or its dict form")
    return _create("fastvit_nas", pretrained, spec, **kwargs)


def _register_preset(name: str) -> None:
    def entry(pretrained: bool = False, **kwargs) -> FastVitNas:
        return _create(f"fastvit_nas_{name}", pretrained, PRESETS[name], **kwargs)

    entry.__name__ = f"fastvit_nas_{name}"
    entry.__doc__ = f"FastViT-{name.upper()} built through fastvit-nas (same keys as timm's fastvit_{name})."
    entry.__module__ = __name__
    register_model(entry)


for _name in PRESETS:
    _register_preset(_name)
