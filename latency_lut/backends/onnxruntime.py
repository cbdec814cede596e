"""ONNX Runtime: each module is exported to ONNX in memory and run by an InferenceSession.

CPU uses the CPU execution provider with fixed intra-op threads and sequential execution; CUDA uses the
CUDA execution provider where the installed onnxruntime has it. Timing is the wall clock of `session.run`
with a host input, for ops and networks alike, so transfer costs cancel in the calibration.

A session run has a fixed cost (binding inputs and outputs, starting the thread pool) that a network pays once
and an op timed alone pays in full, and it weighs most on the smallest ops. So ops are timed as
`Protocol.op_replicas` (default 8) copies side by side in one graph, each reading the same input, and each
copy's share of the run is its latency. On the reference host (2 threads, 24 default-space networks, affine
calibration scored by leave-one-out, variants timed side by side) this took the networks' error from a MAPE of
7.6-9.2 % (62-71 % within ±10 %) with one op per run to 4.4-5.7 % (83-96 %) with eight at 128 px, in four
windows, and from 3.6 % to 2.6 % at 256 px. Sixteen or 32 copies did no better at 128 px, and 8 copies sharing
one set of weights lost most of the gain (6.8 %).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from ...errors import FastVitNasError
from ..measure import Protocol, Timing, measure, wall_clock
from ..modules import op_module
from ..ops import Op
from .base import Backend

OPSET = 17


def export_onnx(module: nn.Module, in_shape: tuple[int, ...], dtype: str = "float32") -> bytes:
    """Serialise an eval-mode module to ONNX bytes with a static input shape.

    Uses the TorchScript exporter: about 25x faster than the dynamo one on these small graphs, which
    matters when a space has hundreds of ops. Its deprecation warning is expected and silenced here only.
    """
    torch_dtype = getattr(torch, dtype)
    module = module.eval().to(dtype=torch_dtype)
    x = torch.randn(in_shape, dtype=torch_dtype)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["output"])
    return buffer.getvalue()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(message: type, name: str, *payload: bytes) -> list[bytes]:
    """The pieces of `payload` (joined) as the length-delimited field `name` of `message`, protobuf wire format;
    kept in pieces so that large weights are copied once, when the caller joins everything."""
    number = message.DESCRIPTOR.fields_by_name[name].number
    return [_varint(number << 3 | 2), _varint(sum(map(len, payload))), *payload]


FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


class _Graph:
    """A parsed model split for re-assembly: the model without its graph's body, the body (nodes and outputs), and
    each weight serialised once without its name, so that copies can repeat the bytes under their own names.

    Copies must not repeat the weights' values, only their bytes: ONNX Runtime stores initializers of equal
    contents once, whatever their names. Twelve copies of a 640-wide attention block at 4×4 chained in one
    network, with equal weights, cost 0.57 ms per copy; with the first value of each weight changed per copy, 0.70
    ms, as with separately exported copies (0.71 ms) and as in a network exported whole (0.70 ms). RepMixer blocks
    (convolutions) did not change (0.073 / 0.072 / 0.074 ms). So each copy's floating-point weights differ from
    the others' in the lowest bits of their first value.
    """

    def __init__(self, model: bytes) -> None:
        proto = onnx.load_from_string(model)
        graph = proto.graph
        self.input = graph.input[0].name
        self.weights: list[tuple[str, bytes, bytes]] = []
        for tensor in graph.initializer:
            bare = onnx.TensorProto()
            bare.CopyFrom(tensor)
            bare.ClearField("name")
            raw = bare.raw_data if bare.data_type in FLOAT_TYPES else b""
            if raw:
                bare.ClearField("raw_data")
            self.weights.append((tensor.name, bare.SerializeToString(), raw))
        self.body = onnx.GraphProto()
        self.body.node.extend(graph.node)
        self.body.output.extend(graph.output)
        for field in ("node", "initializer", "output", "value_info"):
            graph.ClearField(field)
        self.header = proto.SerializeToString()

    def output(self, rename: Callable[[str], str]) -> str:
        return rename(self.body.output[0].name)

    def copy(self, rename: Callable[[str], str], index: int, outputs: bool = True) -> list[bytes]:
        """Copy `index`: the body with every name passed through `rename`, and weights of its own values, as one
        more graph field of a serialised model: a protobuf parser merges a message field met several times;
        serialising the whole model instead took 25-30 ms per op."""
        part = onnx.GraphProto()
        part.CopyFrom(self.body)
        if not outputs:
            part.ClearField("output")
        for named in (*part.node, *part.output):
            named.name = rename(named.name)
        for node in part.node:
            for names in (node.input, node.output):
                renamed = [rename(name) for name in names]
                del names[:]
                names.extend(renamed)
        mark = index % 255 + 1
        weights = []
        for name, data, raw in self.weights:
            values = _field(onnx.TensorProto, "raw_data", bytes([raw[0] ^ mark]), memoryview(raw)[1:]) if raw else []
            weights += _field(onnx.GraphProto, "initializer", data, *values,
                              *_field(onnx.TensorProto, "name", rename(name).encode()))
        return _field(onnx.ModelProto, "graph", part.SerializeToString(), *weights)


def _suffixed(copy: int, keep: dict[str, str]) -> Callable[[str], str]:
    """Names of copy `copy`: those in `keep` mapped as given (shared tensors), every other one suffixed."""
    return lambda name: keep.get(name, f"{name}__{copy}")


def replicated(model: bytes, replicas: int) -> bytes:
    """The graph of `model` `replicas` times side by side: one input, each copy with its own weights and output.

    Every name but the input's gets a copy suffix and every copy weights of its own values (`_Graph`), so no two
    copies share a tensor and the optimiser cannot merge what carries weights. It does merge the weight-free ops on
    the shared input, such as the head's pooling or a layout reorder, which a network does not repeat per op
    either.
    """
    if replicas == 1:
        return model
    graph = _Graph(model)
    keep = {graph.input: graph.input, "": ""}
    return b"".join([graph.header, *(piece for copy in range(replicas)
                                      for piece in graph.copy(_suffixed(copy, keep), copy))])


def chained(models: Sequence[bytes]) -> bytes:
    """The graphs of `models` run in sequence as one network: each one's output is the next one's input.

    Each part gets its own names (a part suffix), so a model repeated in `models` runs as that many copies, each
    with its own weights, as the blocks of a stage do; each distinct model is parsed once. Only the last part's
    output is the network's.
    """
    parsed: dict[int, _Graph] = {}
    for model in models:
        if id(model) not in parsed:
            parsed[id(model)] = _Graph(model)
    first = parsed[id(models[0])]
    pieces, previous = [first.header], first.input
    for index, model in enumerate(models):
        graph = parsed[id(model)]
        rename = _suffixed(index, {graph.input: previous, "": ""})
        pieces += graph.copy(rename, index, outputs=index == len(models) - 1)
        previous = graph.output(rename)
    return b"".join(pieces)


def session(model: bytes | str, device: str = "cpu", threads: int = 2,
            stop_spinning: bool = False) -> ort.InferenceSession:
    """An InferenceSession with the LUT's threads and provider; the same settings for ops and networks.

    `stop_spinning` is for a session kept alive between other timings (`prepare`). After a run, a session's pool
    threads spin on, waiting for more work: here a 128 px op's session burned 0.03-0.06 CPU-seconds in the 50 ms
    after its run, a core taken from whatever is timed next. Ops and networks get a session each, destroyed
    (its threads joined) right after their timing, so they keep ONNX Runtime's default, as deployed.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if stop_spinning:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    provider = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[device]
    if provider not in ort.get_available_providers():
        raise FastVitNasError(f"--backend onnxruntime --device {device}: this onnxruntime has no {provider} "
                              f"(available: {', '.join(ort.get_available_providers())})")
    return ort.InferenceSession(model, options, providers=[provider])


def time_session(sess: ort.InferenceSession, protocol, dtype: str = "float32", replicas: int = 1) -> Timing:
    """Time one session on a random input of its declared (static) shape; per copy when it holds `replicas`."""
    meta = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal(meta.shape).astype(dtype)
    feed = {meta.name: x}
    return measure(wall_clock(lambda: sess.run(None, feed)), protocol, replicas)


KEPT_EXPORT_BYTES = 2_000_000
"""Exports of ops up to this size are kept for the op's later sweeps. Building and exporting an op's module took
40 % of the time it takes to time it (session set-up 30 %, the timing 25 %; `benchmarks/lut_build_cost.py`, 60
random ops of the default space at 128 px), most of it TorchScript tracing, a cost per op rather than per byte;
1,791 of the default space's 2,337 ops at 128 px export to at most 2 MB."""
KEPT_EXPORTS_BYTES = 1_000_000_000
"""At most this much of kept exports per backend: the default space's ops up to `KEPT_EXPORT_BYTES` hold 0.84 GB
at 128 px, all of its ops 4.35 GB. Kept, a timing took 0.69 of one exporting afresh (median per op)."""

WARM_ONLY = "--backend onnxruntime times ops with warm weights only (cold_weights_mb 0, one copy)"


class OnnxRuntime(Backend):
    """Ops and networks exported to ONNX and run by onnxruntime."""

    name = "onnxruntime"
    default_op_replicas = 8
    default_cold_weights_mb = 0.0

    def __init__(self, *args, **kwargs) -> None:
        """Refuses cold weights: torch runs an op's weight copies in turn, one per call, but as ONNX Runtime sessions
        copies slowed each other (each session's thread pool spins on after a run; 64 copies timed 2.25x the warm
        sum), and a session runs every copy in its graph whichever outputs are asked for. Run side by side in one
        graph instead, 64 MB of copies gave the default space's 128 px table a spread of predicted/measured of 13 %
        against 4 % between two measurements of the networks (64 % within ±10 %; attention blocks, whose copies'
        activations crowd the cache too, up to 52 % too slow), where warm tables kept 5.7-8 % (92 % within ±10 %
        on a calm host), and a build of 1129 s against 390-446 s (`benchmarks/results/lut_fidelity_cold64_*.json`,
        `lut_fidelity_warm_*.json`, `lut_fidelity_rc_*.json`)."""
        super().__init__(*args, **kwargs)
        if self.protocol.cold_weights_mb:
            raise FastVitNasError(f"--cold-weights-mb: {WARM_ONLY}, got {self.protocol.cold_weights_mb:g}")
        if self.dtype == "bfloat16" or (self.dtype == "float16" and self.device == "cpu"):
            raise FastVitNasError(f"--backend onnxruntime: dtype {self.dtype} is not supported on {self.device} "
                                  "(use fp32, or fp16 on cuda)")
        self._exports: dict[str, bytes] = {}
        self._kept_bytes = 0

    def version(self) -> str:
        return ort.__version__

    def time_module(self, module: nn.Module, in_shape: tuple[int, ...], copies: int = 1, replicas: int = 1,
                    protocol: Protocol | None = None) -> Timing:
        """Ops are timed with warm weights (`copies` 1, `__init__`)."""
        if copies != 1:
            raise FastVitNasError(f"copies: {WARM_ONLY}, got {copies}")
        return self._time_replicated(export_onnx(module, in_shape, self.dtype), replicas, protocol)

    def network_timer(self, module: nn.Module, in_shape: tuple[int, ...]) -> Callable[[], Timing]:
        """Exports the network once for all its sweeps; each sweep opens a session of its own, as each op's does."""
        model = export_onnx(module, in_shape, self.dtype)
        protocol = self.protocol.for_networks()
        return lambda: self._time_replicated(model, 1, protocol)

    def time_op(self, op: Op) -> Timing:
        return self._time_replicated(self._op_model(op), self.protocol.op_replicas)

    def _time_replicated(self, model: bytes, replicas: int, protocol: Protocol | None = None) -> Timing:
        """`model` timed `replicas` side by side in a session of its own, per copy."""
        sess = session(replicated(model, replicas), self.device, self.threads)
        return time_session(sess, protocol or self.protocol, self.dtype, replicas)

    def _op_model(self, op: Op) -> bytes:
        """The op's export, kept for its later sweeps when small (`KEPT_EXPORT_BYTES`, `KEPT_EXPORTS_BYTES`).
        Its weights are then the same random values in every sweep, which a timing does not depend on."""
        model = self._exports.get(op.key)
        if model is None:
            model = export_onnx(op_module(op), op.in_shape, self.dtype)
            if len(model) <= KEPT_EXPORT_BYTES and self._kept_bytes + len(model) <= KEPT_EXPORTS_BYTES:
                self._exports[op.key] = model
                self._kept_bytes += len(model)
        return model

    def chain_timer(self, before: nn.Module, after: nn.Module, in_shape: tuple[int, ...],
                    mid_shape: tuple[int, ...]) -> Callable[[Op | None, int], Timing]:
        """Exports `before` and `after` once, each block once (kept like an op's, `_op_model`), and chains the
        copies at the ONNX level (`chained`): exporting a whole light network with twelve blocks took 0.15-0.3 s,
        most of the time it took to time it."""
        ends = export_onnx(before, in_shape, self.dtype), export_onnx(after, mid_shape, self.dtype)
        bare = chained(ends)

        def time_chain(block: Op | None, copies: int) -> Timing:
            middle = [self._op_model(block)] * copies if copies else []
            model = chained([ends[0], *middle, ends[1]]) if middle else bare
            return time_session(session(model, self.device, self.threads), self.protocol, self.dtype)

        return time_chain

    def prepare(self, module: nn.Module, in_shape: tuple[int, ...], replicas: int = 1) -> Callable[[], Timing]:
        sess = session(replicated(export_onnx(module, in_shape, self.dtype), replicas), self.device, self.threads,
                       stop_spinning=True)
        return lambda: time_session(sess, self.protocol, self.dtype, replicas)
