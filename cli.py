"""`fastvit-nas` command line: parses arguments and calls the library, nothing more.

Bad input raises `FastVitNasError` somewhere below; `main` turns it into one `error:` line and exit code 2.
Each command group lives in its own `_add_*` function and is listed in `COMMAND_GROUPS`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import FastVitNasError

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)


def _load_spec(ref: str):
    """A preset name (t8 … ma36) or a path to a spec JSON file."""
    from .fastvit.io import load_spec

    return load_spec(ref)


# ---- model ---------------------------------------------------------------------------------------------
def _model_show(args: argparse.Namespace) -> None:
    from .fastvit.summary import describe

    print(describe(_load_spec(args.spec), img_size=args.img_size))


def _model_export(args: argparse.Namespace) -> None:
    from .fastvit.export import export_spec

    out = export_spec(_load_spec(args.spec), Path(args.out), img_size=args.img_size, onnx=args.onnx,
                      checkpoint=Path(args.checkpoint) if args.checkpoint else None)
    print(json.dumps(out.summary(), indent=2))


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="inspect and export single variants").add_subparsers(
        dest="action", required=True)
    show = model.add_parser("show", help="structure, params, FLOPs and id of a preset or spec JSON")
    show.add_argument("spec", help="preset name (t8, t12, s12, sa12, sa24, sa36, ma36) or spec.json")
    show.add_argument("--img-size", type=int, default=256)
    show.set_defaults(func=_model_show)
    export = model.add_parser("export", help="re-parameterize and write a timm-loadable folder")
    export.add_argument("spec", help="preset name or spec.json")
    export.add_argument("out", help="output folder")
    export.add_argument("--img-size", type=int, default=256)
    export.add_argument("--onnx", action="store_true", help="also write model.onnx")
    export.add_argument("--checkpoint", help="train-time weights (.safetensors) to fuse; default: fresh init")
    export.set_defaults(func=_model_export)


COMMAND_GROUPS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_model_commands,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvit-nas", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMAND_GROUPS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FastVitNasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: results written so far are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
