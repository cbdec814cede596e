"""`fastvit-nas` command line: parses arguments and calls the library, nothing more.

Bad input raises `FastVitNasError` somewhere below; `main` turns it into one `error:` line and exit code 2.
Each command group lives in its own `_add_*` function and is listed in `COMMAND_GROUPS`.
"""

from __future__ import annotations

import argparse
import dataclasses
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


# ---- proxy ---------------------------------------------------------------------------------------------
def _proxy_inputs(args: argparse.Namespace):
    """(data, budget) from the shared options; unset options keep the library's defaults."""
    from .search import ProxyBudget, load_data

    sizes = {k: v for k, v in (("img_size", args.img_size), ("train_per_class", args.train_per_class),
                               ("val_per_class", args.val_per_class)) if v is not None}
    data = load_data(args.data, seed=args.seed, **sizes)
    return data, ProxyBudget.parse(args.budget, seed=args.seed)


def _proxy_cache(args: argparse.Namespace):
    from .search import ProxyCache

    return ProxyCache(args.cache) if args.cache else None


def _proxy_eval(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .search import proxy_score

    spec = _load_spec(args.spec)
    data, budget = _proxy_inputs(args)
    cache = _proxy_cache(args)
    with tqdm(total=budget.plan(len(data.train_y))[0], unit="epoch", desc=spec.arch_id, file=sys.stderr) as bar:
        def progress(report) -> None:
            bar.set_postfix(loss=f"{report.train_loss:.3f}", top1=f"{report.val_top1:.3f}")
            bar.update()

        result = (cache.score if cache else proxy_score)(spec, data, budget, progress)
    print(json.dumps({"data": data.summary(), "budget": budget.model_dump(), "result": result.to_dict()}, indent=2))


def _proxy_validate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .search import measure_fidelity, sample_specs

    data, budget = _proxy_inputs(args)
    specs = sample_specs(args.n, args.space, seed=args.seed, max_flops=args.max_flops, spread=args.spread)
    with tqdm(total=len(specs), unit="spec", file=sys.stderr) as bar:
        report = measure_fidelity(specs, data, budget, factor=args.factor, cache=_proxy_cache(args),
                                  on_row=lambda _row: bar.update(), repeat_long=args.repeat_long,
                                  workers=args.workers)
    print(report.table())
    json_path, png_path = report.write(args.out)
    print(f"wrote {json_path} and {png_path}")


def _add_proxy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="Fashion-MNIST idx, CIFAR-10/100 python or ImageFolder folder "
                                       "(default: Fashion-MNIST from dataset-fashion-mnist)")
    parser.add_argument("--img-size", type=int, help="proxy resolution in pixels (default 32)")
    parser.add_argument("--train-per-class", type=int, help="training images per class (default 100)")
    parser.add_argument("--val-per-class", type=int, help="validation images per class, from train (default 30)")
    parser.add_argument("--budget", help="key=value,... over the default ProxyBudget, e.g. epochs=2,threads=2,lr=1e-3")
    parser.add_argument("--seed", type=int, default=0, help="data subset and training seed")
    parser.add_argument("--cache", help="proxy result cache folder (each candidate trained once)")


def _add_proxy_commands(sub: argparse._SubParsersAction) -> None:
    proxy = sub.add_parser("proxy", help="accuracy proxies: train one candidate, measure proxy fidelity")
    actions = proxy.add_subparsers(dest="action", required=True)
    evaluate = actions.add_parser("eval", help="proxy-train one preset or spec JSON and print its result")
    evaluate.add_argument("spec", help="preset name or spec.json")
    _add_proxy_args(evaluate)
    evaluate.set_defaults(func=_proxy_eval)
    validate = actions.add_parser("validate", help="rank correlation of proxy and zero-cost scores with k× training")
    validate.add_argument("-n", type=int, default=16, help="number of sampled specs")
    validate.add_argument("--space", default="default", help="space name (default, tiny) or YAML path")
    validate.add_argument("--max-flops", type=int, help="keep sampled specs under this many FLOPs (space img_size)")
    validate.add_argument("--spread", action="store_true",
                          help="specs at evenly spaced FLOPs quantiles, spanning the space's cost range")
    validate.add_argument("--factor", type=int, default=8, help="long budget = factor × proxy budget")
    validate.add_argument("--repeat-long", action="store_true",
                          help="train the long budget again with another seed to show the reference's own noise")
    validate.add_argument("--workers", type=int, default=1, help="candidates trained in parallel processes")
    validate.add_argument("--out", default="proxy_fidelity", help="folder for the JSON and PNG")
    _add_proxy_args(validate)
    validate.set_defaults(func=_proxy_validate)


# ---- lut -----------------------------------------------------------------------------------------------
def _lut_specs(args: argparse.Namespace) -> list:
    return [_load_spec(ref) for ref in args.spec or []]


def _lut_space(args: argparse.Namespace):
    from .latency_lut import resolve_space

    return resolve_space(args.space) if args.space or not args.spec else None


def _calibration_n(args: argparse.Namespace) -> int:
    from .latency_lut.design import CALIBRATION_NETWORKS

    return CALIBRATION_NETWORKS if args.calib is None else args.calib


def _lut_build(args: argparse.Namespace) -> None:
    from .latency_lut import Protocol, build_lut, get_backend

    overrides = {k: v for k in ("estimator", "reference_s", "calm_wait_s", "cold_weights_mb", "op_replicas",
                                "network_passes", "network_calls", "network_warmup_calls", "extra_passes",
                                "context_max_side", "recheck_tol")
                 if (v := getattr(args, k)) is not None}
    protocol = dataclasses.replace(Protocol.quick() if args.quick else Protocol(), **overrides)
    backend = get_backend(args.backend, device=args.device, dtype=args.dtype, threads=args.threads,
                          protocol=protocol)
    report = build_lut(Path(args.out), backend, specs=_lut_specs(args), space=_lut_space(args),
                       img_size=args.img_size, batch=args.batch, calibration_n=_calibration_n(args), seed=args.seed,
                       progress=True)
    print(json.dumps(dataclasses.asdict(report), indent=2))
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _lut_validate(args: argparse.Namespace) -> None:
    from .latency_lut import LatencyTable, held_out_specs, resolve_space, validate

    lut = Path(args.lut)
    space = resolve_space(args.space or LatencyTable.load(lut).meta.space)
    plot = Path(args.plot) if args.plot else lut.with_suffix(".validation.png")
    report = validate(lut, held_out_specs(lut, space, args.n, args.seed), plot=plot, progress=True,
                      remeasure=args.remeasure, recalibrate_first=args.recalibrate)
    print(json.dumps(report.summary(), indent=2))
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _lut_calibrate(args: argparse.Namespace) -> None:
    from .latency_lut import LatencyTable, recalibrate_lut

    drift = recalibrate_lut(Path(args.lut), progress=True)
    print(f"calibration networks now take {drift:.3f}x their previous time")
    print(LatencyTable.load(Path(args.lut)).describe())


def _lut_show(args: argparse.Namespace) -> None:
    from .latency_lut import LatencyTable
    from .latency_lut.validate import stored_warnings

    table = LatencyTable.load(Path(args.lut))
    print(table.describe())
    for warning in stored_warnings(table.meta):
        print(f"warning: {warning}", file=sys.stderr)


def _lut_predict(args: argparse.Namespace) -> None:
    from .latency_lut import LatencyTable, Predictor

    predictor = Predictor(LatencyTable.load(Path(args.lut)), args.lut)
    specs = [_load_spec(ref) for ref in args.spec]
    for ref, spec, ms in zip(args.spec, specs, predictor.predict_many(specs), strict=True):
        print(json.dumps({"spec": ref, "arch_id": spec.arch_id, "latency_ms": round(float(ms), 4),
                          **predictor.trust()}))


def _lut_export_ops(args: argparse.Namespace) -> None:
    from .latency_lut import export_ops
    from .latency_lut.build import space_specs
    from .latency_lut.design import calibration_specs

    space = _lut_space(args)
    specs = _lut_specs(args) + (space_specs(space, args.img_size, args.batch, args.seed) if space else [])
    calib = calibration_specs(space, _calibration_n(args), args.img_size) if space else []
    print(export_ops(Path(args.out), specs, args.img_size, args.batch, calib, args.op_replicas, args.format,
                     args.coreml_precision, progress=True, context_max_side=args.context_max_side))


def _lut_import(args: argparse.Namespace) -> None:
    from .latency_lut import import_results

    table = import_results(Path(args.results), Path(args.manifest), args.device_name, Path(args.out), args.runtime,
                           args.format)
    print(table.describe())


def _lut_merge(args: argparse.Namespace) -> None:
    from .latency_lut import LatencyTable

    table = LatencyTable.load(Path(args.luts[0]))
    for other in args.luts[1:]:
        table.merge(LatencyTable.load(Path(other)), what=other)
    table.save(Path(args.out))
    print(table.describe())


def _add_lut_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", help="space name (default, tiny) or YAML path; default: default unless --spec")
    parser.add_argument("--spec", action="append", help="preset name or spec.json (repeatable)")
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calib", type=int,
                        help="networks measured end-to-end for calibration (of a space: picked by FLOPs spread; "
                             "default: latency_lut.design.CALIBRATION_NETWORKS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the space walk that enumerates ops")


def _add_lut_commands(sub: argparse._SubParsersAction) -> None:
    lut = sub.add_parser("lut", help="per-op latency lookup tables: build, validate, predict, export/import")
    actions = lut.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="measure the ops of a space or specs (only missing ones) and calibrate")
    _add_lut_source_args(build)
    build.add_argument("--backend", default="torch", help="torch or onnxruntime")
    build.add_argument("--device", default="cpu", help="cpu or cuda")
    build.add_argument("--dtype", default="fp32", help="fp32, fp16 or bf16")
    build.add_argument("--threads", type=int, default=2, help="intra-op threads (fixed and recorded)")
    build.add_argument("--estimator", choices=("median", "min"),
                       help="latency statistic (default min: it suits a machine shared with other jobs)")
    build.add_argument("--reference-s", type=float,
                       help="seconds between readings of the host-speed reference that every timing is divided "
                            "by (default 5; 0: none, e.g. on a device with fixed clocks)")
    build.add_argument("--calm-wait-s", type=float,
                       help="seconds to wait for a slow spell of the host (found by the reference) to end, after "
                            "the sweeps, to re-time the items no sweep timed calm (default 60; 0: never wait)")
    build.add_argument("--cold-weights-mb", type=float,
                       help="MB of weight copies an op is timed through, so it reads its weights from beyond the "
                            "cache as inside a network (default 64 for torch; onnxruntime: warm only, 0)")
    build.add_argument("--op-replicas", type=int,
                       help="copies of an op per timed call, each its share of the call's time, so a runtime's fixed "
                            "cost per call is paid once per network and not once per op (default: 8 for "
                            "onnxruntime, 1 for torch)")
    build.add_argument("--context-max-side", type=int,
                       help="blocks whose input is at most this on a side are timed inside a light network, where "
                            "they cost up to 1.6x their time alone (default 0: every block alone; 8 is the setting "
                            "measured, and made a 128 px build of the default space take 21-26 minutes here "
                            "instead of 7)")
    build.add_argument("--recheck-tol", type=float,
                       help="entries more than this (log) above the trend of their op type and resolution are timed "
                            "again after the sweeps, keeping the faster timing (default 0.10; 0: never)")
    build.add_argument("--network-passes", type=int,
                       help="sweeps over the end-to-end networks, calibration now and held-out at validation; the "
                            "fastest kept (default 16, of --network-calls each)")
    build.add_argument("--network-calls", type=int,
                       help="timed calls per sweep of a network (default 4; 0: as an op, until the median "
                            "settles). 16 sweeps of 4 put 98 %% of a stored table's held-out networks within ±10 %% "
                            "where four long sweeps put 88 %%, on a noisy host")
    build.add_argument("--network-warmup-calls", type=int,
                       help="warm-up calls before each sweep of a network (default 1; the network is warm from its "
                            "first sweep on). One found the same floors as three, in 28 %% less time with torch")
    build.add_argument("--extra-passes", type=int,
                       help="more sweeps, at most, for an op or network whose two fastest sweeps differ by over 5 %% "
                            "(default 2; 0: none)")
    build.add_argument("--quick", action="store_true", help="few repetitions: smoke tests only")
    build.add_argument("--out", required=True, help="LUT parquet file (created or extended)")
    build.set_defaults(func=_lut_build)
    validate = actions.add_parser("validate", help="held-out end-to-end measurements vs predictions")
    validate.add_argument("--lut", required=True)
    validate.add_argument("-n", type=int, default=50, help="number of held-out specs")
    validate.add_argument("--seed", type=int, default=1)
    validate.add_argument("--space", help="default: the space the LUT was built from")
    validate.add_argument("--plot", help="scatter PNG (default: next to the LUT)")
    validate.add_argument("--remeasure", action="store_true",
                          help="measure the networks twice: the machine's repeatability, the ceiling of any LUT")
    validate.add_argument("--recalibrate", action="store_true",
                          help="re-time the calibration networks in the same sweeps: drift since the build not counted")
    validate.set_defaults(func=_lut_validate)
    calibrate = actions.add_parser("calibrate", help="re-time the calibration networks now and refit (device drift)")
    calibrate.add_argument("lut")
    calibrate.set_defaults(func=_lut_calibrate)
    show = actions.add_parser("show", help="settings, device, coverage, calibration and validation figures")
    show.add_argument("lut")
    show.set_defaults(func=_lut_show)
    predict = actions.add_parser("predict", help="calibrated latency of presets or spec JSON files")
    predict.add_argument("lut")
    predict.add_argument("spec", nargs="+", help="preset name or spec.json")
    predict.set_defaults(func=_lut_predict)
    export = actions.add_parser("export-ops", help="write each op as ONNX and/or Core ML + manifest, to time on "
                                                   "another device")
    _add_lut_source_args(export)
    export.add_argument("--op-replicas", type=int, default=1,
                        help="copies of each op side by side in its file, so the device's fixed cost per run is "
                             "shared among them (8 matches --backend onnxruntime here); the import divides")
    export.add_argument("--context-max-side", type=int, default=0,
                        help="blocks whose input is at most this on a side are written inside a light network, "
                             "12 copies chained, and each network also alone; the import takes a block's share "
                             "of the difference, as lut build --context-max-side does here (default 0: alone)")
    export.add_argument("--format", nargs="+", default=["onnx"], help="onnx and/or coreml (Core ML needs "
                        "coremltools: pip install 'fastvit-nas[coreml]')")
    export.add_argument("--coreml-precision", default="fp16", help="fp16 (Core ML's default, the Neural Engine's) "
                        "or fp32")
    export.add_argument("--out", required=True, help="output folder")
    export.set_defaults(func=_lut_export_ops)
    imp = actions.add_parser("import", help="build a LUT from latencies measured on another device")
    imp.add_argument("results", help="CSV with columns key,latency_ms")
    imp.add_argument("--manifest", required=True, help="manifest.json written by export-ops")
    imp.add_argument("--device-name", required=True, help="the device's name (its fingerprint)")
    imp.add_argument("--runtime", default="unknown", help="runtime and version used on the device")
    imp.add_argument("--format", help="which of the manifest's formats the results timed (default: its only one)")
    imp.add_argument("--out", required=True)
    imp.set_defaults(func=_lut_import)
    merge = actions.add_parser("merge", help="merge LUTs of the same device and settings")
    merge.add_argument("luts", nargs="+")
    merge.add_argument("--out", required=True)
    merge.set_defaults(func=_lut_merge)


# ---- space ---------------------------------------------------------------------------------------------
def _space_show(args: argparse.Namespace) -> None:
    from .space import load_space
    from .space.describe import describe

    print(describe(load_space(args.space)))


def _space_sample(args: argparse.Namespace) -> None:
    import numpy as np

    from .space import load_space

    space, rng = load_space(args.space), np.random.default_rng(args.seed)
    for _ in range(args.n):
        spec = space.sample(rng)
        size = space.size(spec)
        print(json.dumps({"id": spec.arch_id, "params": size.params, "flops": size.flops,
                          "img_size": space.img_size, "spec": spec.to_dict()}))


def _space_check(args: argparse.Namespace) -> int:
    from .space import load_space

    reasons = load_space(args.space).check(_load_spec(args.spec))
    print("inside the space" if not reasons else "outside the space:\n  " + "\n  ".join(reasons))
    return 1 if reasons else 0


def _add_space_commands(sub: argparse._SubParsersAction) -> None:
    space = sub.add_parser("space", help="inspect, sample and check search spaces").add_subparsers(
        dest="action", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--space", default="default", help="space YAML path, or a built-in name: default, tiny")
    space.add_parser("show", parents=[where], help="dimensions, choices, constraints, cardinality").set_defaults(
        func=_space_show)
    sample = space.add_parser("sample", parents=[where], help="JSON lines: id, params, FLOPs, spec")
    sample.add_argument("-n", type=int, default=10, help="how many networks")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=_space_sample)
    check = space.add_parser("check", parents=[where], help="is a spec inside the space, and if not why (exit 1)")
    check.add_argument("spec", help="preset name or spec JSON file")
    check.set_defaults(func=_space_check)


COMMAND_GROUPS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_model_commands,
                                                                            _add_proxy_commands,
                                                                            _add_lut_commands,
                                                                            _add_space_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvit-nas", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMAND_GROUPS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except FastVitNasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: results written so far are kept", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
