"""Plain-PyTorch executor for the small ONNX face-recognition graphs (SFace, faceplugin).

Clean-room: the ONNX graph is read with the ``onnx`` package only; every node is run with ordinary torch ops, so
the module is differentiable w.r.t. its input, takes any batch size and runs on CPU and CUDA. Float initializers
become frozen (non-trainable) buffers; integer initializers (Reshape shapes etc.) stay Python tuples so they never
need a device round trip.

``dequantize_int8_blocks`` folds ``DequantizeLinear`` (per-tensor, per-axis and opset-21 ``block_size``) and
weight-only ``Reshape`` nodes into fp32 initializers and drops unused / initializer-shadowed graph inputs, in memory.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:  # onnx is only needed to *build* a module, not to run one
    import onnx
    from onnx import numpy_helper
except ImportError:  # pragma: no cover - onnx is a hard dependency of the FR backends
    onnx = None


def _require_onnx():
    if onnx is None:  # pragma: no cover
        raise ImportError("the 'onnx' package is required to load ONNX face-recognition graphs (pip install onnx)")


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _load(model) -> "onnx.ModelProto":
    _require_onnx()
    if isinstance(model, (str, Path)):
        return onnx.load(str(model))
    return model


# --------------------------------------------------------------------------------------------------------------
# Load-time rewriting

def _dequantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int,
                block_size: int) -> np.ndarray:
    """ONNX DequantizeLinear: (x - zero_point) * scale, scale/zero_point broadcast per tensor, per axis or per block."""
    xi = x.astype(np.int32)
    zp = np.zeros_like(scale, dtype=np.int32) if zero_point is None else zero_point.astype(np.int32)
    scale = scale.astype(np.float32)
    axis = axis % max(x.ndim, 1)
    if scale.size == 1 and block_size == 0:             # per tensor
        return ((xi - zp.reshape(())).astype(np.float32) * scale.reshape(())).astype(np.float32)
    if block_size > 0:                                   # blocked: repeat block_size times along axis, trim the tail
        n = x.shape[axis]
        scale = np.repeat(scale, block_size, axis=axis).take(np.arange(n), axis=axis)
        zp = np.repeat(zp, block_size, axis=axis).take(np.arange(n), axis=axis)
        return ((xi - zp).astype(np.float32) * scale).astype(np.float32)
    shape = [1] * x.ndim                                 # per axis: 1-D scale along `axis`
    shape[axis] = -1
    return ((xi - zp.reshape(shape)).astype(np.float32) * scale.reshape(shape)).astype(np.float32)


def dequantize_int8_blocks(model) -> "onnx.ModelProto":
    """Return a copy of ``model`` (ModelProto or path) with constant DequantizeLinear and weight-only Reshape nodes
    folded into fp32 initializers, unused initializers removed, and only the real (non-initializer, used) graph
    inputs kept. Activation-side DequantizeLinear nodes (a truly quantised activation path) are left in place."""
    model = _load(model)
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    kept = []
    for node in g.node:
        ins = [i for i in node.input if i]
        if node.op_type == "DequantizeLinear" and ins and all(i in consts for i in ins):
            a = _attrs(node)
            x = consts[node.input[0]]
            scale = consts[node.input[1]]
            zp = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            consts[node.output[0]] = _dequantize(x, scale, zp, int(a.get("axis", 1)), int(a.get("block_size", 0)))
        elif node.op_type == "Reshape" and len(ins) == 2 and all(i in consts for i in ins):
            x, shape = consts[node.input[0]], [int(s) for s in consts[node.input[1]]]
            allowzero = int(_attrs(node).get("allowzero", 0))
            shape = [x.shape[k] if (s == 0 and not allowzero) else s for k, s in enumerate(shape)]
            consts[node.output[0]] = x.reshape(shape)
        else:
            kept.append(node)
    used = {i for n in kept for i in n.input if i} | {o.name for o in g.output}
    inits = [numpy_helper.from_array(np.ascontiguousarray(consts[n]), n) for n in consts if n in used]
    init_names = {t.name for t in inits}
    inputs = [i for i in g.input if i.name in used and i.name not in init_names]
    graph = onnx.helper.make_graph(kept, g.name, inputs, list(g.output), inits)
    out = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="faceanonymixer-dequant")
    out.ir_version = model.ir_version
    return out


# --------------------------------------------------------------------------------------------------------------
# Executor

def _conv(x, w, b, a):
    nd = w.dim() - 2
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise NotImplementedError(f"Conv auto_pad={a['auto_pad']!r} is not supported")
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    begin, end = pads[:nd], pads[nd:]
    if begin == end:
        padding = begin
    else:  # asymmetric: pad explicitly; F.pad lists the last dim first
        fp = []
        for k in reversed(range(nd)):
            fp += [begin[k], end[k]]
        x = F.pad(x, fp)
        padding = [0] * nd
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return conv(x, w, b, stride=strides, padding=padding, dilation=dil, groups=int(a.get("group", 1)))


def _reshape(x, shape, allowzero):
    shape = [x.shape[k] if (s == 0 and not allowzero) else s for k, s in enumerate(shape)]
    return x.reshape(shape)


def _gemm(A, B, C, a):
    if a.get("transA", 0):
        A = A.transpose(-1, -2)
    if a.get("transB", 0):
        B = B.transpose(-1, -2)
    y = A @ B
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if alpha != 1.0:
        y = y * alpha
    if C is not None:
        y = y + (C * beta if beta != 1.0 else C)
    return y


def _prelu(x, slope):
    """ONNX PRelu (slope broadcast numpy-style): the native kernel for per-channel/scalar slopes, else where()."""
    if slope.numel() == 1 or (x.dim() >= 2 and slope.numel() == x.shape[1]
                              and tuple(slope.shape[-(x.dim() - 1):]) == (x.shape[1],) + (1,) * (x.dim() - 2)):
        return F.prelu(x, slope.reshape(-1))
    return torch.where(x >= 0, x, x * slope)


def _flatten(x, axis):
    axis = axis + x.dim() if axis < 0 else axis   # ONNX: axis in [-r, r]
    lead = math.prod(x.shape[:axis]) if axis > 0 else 1
    return x.reshape(lead, -1)


_UNARY = {
    "Relu": torch.relu, "Abs": torch.abs, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Neg": torch.neg,
    "Exp": torch.exp, "Sqrt": torch.sqrt, "Identity": lambda x: x,
}
_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "MatMul": torch.matmul}
SUPPORTED_OPS = frozenset(_UNARY) | frozenset(_BINARY) | {
    "Conv", "BatchNormalization", "PRelu", "Reshape", "Flatten", "Gemm", "Dropout", "Transpose", "Constant",
    "GlobalAveragePool", "Concat",
    # pooling/padding and the shape arithmetic of exported flattens (SSR-Net age/gender: fr/attributes.py)
    "Pad", "AveragePool", "MaxPool", "Shape", "Gather", "Unsqueeze",
}
_SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Concat")   # run on integer numpy arrays when every input is one


def _pool(x, a, kind: str):
    """ONNX AveragePool / MaxPool (2-D, explicit pads, no auto_pad)."""
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise NotImplementedError(f"{kind} auto_pad={a['auto_pad']!r} is not supported")
    k = list(a["kernel_shape"])
    if len(k) != 2:
        raise NotImplementedError(f"{kind}: only 2-D pooling is supported, got kernel {k}")
    strides = list(a.get("strides", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    ceil = bool(a.get("ceil_mode", 0))
    if pads[:2] != pads[2:]:
        fill = float("-inf") if kind == "MaxPool" else 0.0
        x = F.pad(x, [pads[1], pads[3], pads[0], pads[2]], value=fill)
        pads = [0, 0]
    else:
        pads = pads[:2]
    if kind == "MaxPool":
        dil = list(a.get("dilations", [1, 1]))
        return F.max_pool2d(x, k, strides, pads, dilation=dil, ceil_mode=ceil)
    return F.avg_pool2d(x, k, strides, pads, ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))


def _pad(x, pads, mode, value):
    """ONNX Pad: pads = [x1_begin, x2_begin, ..., x1_end, x2_end, ...] over all dims."""
    n = x.dim()
    if len(pads) != 2 * n:
        raise NotImplementedError(f"Pad: {len(pads)} pad values for a {n}-D tensor")
    if not any(pads):
        return x
    fp = []
    for d in reversed(range(n)):
        fp += [pads[d], pads[d + n]]
    while len(fp) > 2 and fp[-1] == 0 and fp[-2] == 0:   # torch pads only the trailing dims it is given
        fp = fp[:-2]
    mode = mode.decode() if isinstance(mode, bytes) else mode
    return F.pad(x, fp, mode={"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode],
                 value=value if mode == "constant" else None)


class OnnxGraphModule(nn.Module):
    """An ONNX graph with one float input and one output, run node by node with torch ops.

    Built once from the graph (``from_onnx``); ``forward(x[N,...]) -> y[N,...]``. Inference semantics only
    (BatchNormalization uses running stats, Dropout is the identity). Reshapes whose constant shape starts with the
    graph's fixed batch size (e.g. faceplugin's ``[1,-1]``) are patched to take the runtime batch size."""

    def __init__(self, model,                  # onnx.ModelProto or path to an .onnx file
                 dequantize: bool = True,   # fold int8 DequantizeLinear weights to fp32 first
                 outputs: list[str] | None = None):  # graph outputs returned as a tuple; None = the one output
        super().__init__()
        model = _load(model)
        if dequantize:
            model = dequantize_int8_blocks(model)
        g = model.graph
        self._buf_of: dict[str, str] = {}      # ONNX tensor name -> buffer attribute name (float constants)
        self._static: dict[str, tuple] = {}    # ONNX tensor name -> python tuple (integer constants)
        for t in g.initializer:
            self._add_const(t.name, numpy_helper.to_array(t))
        real_inputs = [i for i in g.input if i.name not in self._buf_of and i.name not in self._static]
        if len(real_inputs) != 1:
            raise ValueError(f"expected exactly one non-constant graph input, got {[i.name for i in real_inputs]}")
        self.input_name = real_inputs[0].name
        dims = real_inputs[0].type.tensor_type.shape.dim
        # declared input shape (the batch may be fixed, e.g. 1)
        self.input_shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        fixed_batch = self.input_shape[0] if self.input_shape and self.input_shape[0] else None
        names = [o.name for o in g.output]
        if outputs is None and len(g.output) != 1:
            raise ValueError(f"expected exactly one graph output, got {names} (pass outputs=[...] to pick several)")
        missing = [o for o in (outputs or []) if o not in names]
        if missing:
            raise ValueError(f"outputs {missing} are not graph outputs; the graph has {names}")
        self.output_name = g.output[0].name
        self.output_names = list(outputs) if outputs is not None else None
        self._int_arr: dict[str, np.ndarray] = {}   # integer constants with their shape (Gather indices etc.)
        dynamic_ints: set[str] = set()              # outputs of shape arithmetic (Shape -> Gather -> Concat ...)

        self._nodes: list[tuple[str, list[str], list[str], dict]] = []
        for node in g.node:
            op, a = node.op_type, _attrs(node)
            if op not in SUPPORTED_OPS:
                raise NotImplementedError(f"ONNX op {op} (node {node.name or node.output[0]}) is not supported by the "
                                          f"plain-PyTorch executor; supported: {sorted(SUPPORTED_OPS)}")
            if op == "Constant":  # evaluate once, like an initializer
                if "value" not in a:
                    raise NotImplementedError("Constant nodes are supported only with a 'value' tensor")
                arr = numpy_helper.to_array(a["value"])
                self._add_const(node.output[0], arr)
                if node.output[0] in self._static:
                    self._int_arr[node.output[0]] = np.array(arr, dtype=np.int64)
                continue
            if op == "Shape" or (op in _SHAPE_OPS and all(
                    i in dynamic_ints or i in self._static for i in node.input if i)):
                dynamic_ints.add(node.output[0])
                a["ints"] = True
            if op == "Reshape" and node.input[1] in dynamic_ints:
                a["dynamic_shape"] = True
                self._nodes.append((op, list(node.input), list(node.output), a))
                continue
            if op == "Reshape":
                shape_name = node.input[1]
                if shape_name not in self._static:
                    raise NotImplementedError(f"Reshape {node.output[0]}: shape must be a constant")
                shape = list(self._static[shape_name])
                a["shape"] = shape
                # a fixed batch baked into the shape: take the runtime batch instead (the [-1, D] patch)
                a["batch_patch"] = bool(fixed_batch and len(shape) > 1 and shape[0] == fixed_batch
                                        and node.input[0] not in self._buf_of)
            self._nodes.append((op, list(node.input), list(node.output), a))

    def _add_const(self, name: str, arr: np.ndarray):
        if np.issubdtype(arr.dtype, np.floating):
            attr = f"c{len(self._buf_of)}"
            self.register_buffer(attr, torch.from_numpy(np.array(arr, dtype=np.float32)))
            self._buf_of[name] = attr
        elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
            self._static[name] = tuple(int(v) for v in arr.reshape(-1))
        else:
            raise NotImplementedError(f"constant {name} has unsupported dtype {arr.dtype}")

    @classmethod
    def from_onnx(cls, model, dequantize: bool = True, outputs: list[str] | None = None) -> "OnnxGraphModule":
        m = cls(model, dequantize=dequantize, outputs=outputs)
        m.eval()
        m.requires_grad_(False)
        return m

    def _get(self, env: dict, name: str):
        if not name:
            return None
        if name in env:
            return env[name]
        if name in self._buf_of:
            return getattr(self, self._buf_of[name])
        if name in self._int_arr:
            return self._int_arr[name]
        if name in self._static:
            return np.asarray(self._static[name], dtype=np.int64)
        raise KeyError(f"ONNX tensor {name} is neither computed nor a float constant")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input_name: x}
        for op, ins, outs, a in self._nodes:
            if a.get("ints"):   # integer shape arithmetic on numpy (never on the device)
                env[outs[0]] = self._shape_op(op, env, ins, a)
                continue
            if a.get("dynamic_shape"):
                t = self._get(env, ins[0])
                y = _reshape(t, [int(v) for v in np.asarray(env[ins[1]]).reshape(-1)], int(a.get("allowzero", 0)))
            elif op == "Reshape":
                t = self._get(env, ins[0])
                shape = list(a["shape"])
                if a["batch_patch"]:
                    shape[0] = t.shape[0]
                y = _reshape(t, shape, int(a.get("allowzero", 0)))
            elif op == "Conv":
                y = _conv(self._get(env, ins[0]), self._get(env, ins[1]),
                          self._get(env, ins[2]) if len(ins) > 2 else None, a)
            elif op == "BatchNormalization":
                t, sc, b, m, v = (self._get(env, n) for n in ins[:5])
                y = F.batch_norm(t, m, v, sc, b, training=False, eps=float(a.get("epsilon", 1e-5)))
            elif op == "PRelu":
                y = _prelu(self._get(env, ins[0]), self._get(env, ins[1]))
            elif op in _UNARY:
                y = _UNARY[op](self._get(env, ins[0]))
            elif op in _BINARY:
                y = _BINARY[op](self._get(env, ins[0]), self._get(env, ins[1]))
            elif op == "Flatten":
                y = _flatten(self._get(env, ins[0]), int(a.get("axis", 1)))
            elif op == "Gemm":
                y = _gemm(self._get(env, ins[0]), self._get(env, ins[1]),
                          self._get(env, ins[2]) if len(ins) > 2 else None, a)
            elif op == "Dropout":  # inference: identity (a requested mask output is all ones)
                t = self._get(env, ins[0])
                env[outs[0]] = t
                if len(outs) > 1 and outs[1]:
                    env[outs[1]] = torch.ones_like(t, dtype=torch.bool)
                continue
            elif op == "Transpose":
                t = self._get(env, ins[0])
                y = t.permute(*(a.get("perm") or reversed(range(t.dim()))))
            elif op == "GlobalAveragePool":
                t = self._get(env, ins[0])
                y = t.mean(dim=tuple(range(2, t.dim())), keepdim=True)
            elif op == "Concat":
                y = torch.cat([self._get(env, n) for n in ins], dim=int(a["axis"]))
            elif op in ("AveragePool", "MaxPool"):
                y = _pool(self._get(env, ins[0]), a, op)
            elif op == "Pad":
                t = self._get(env, ins[0])
                if len(ins) > 1 and ins[1]:      # opset >= 11: pads (and value) are inputs
                    pads = [int(v) for v in np.asarray(self._get(env, ins[1])).reshape(-1)]
                    value = float(self._get(env, ins[2]).reshape(-1)[0]) if len(ins) > 2 and ins[2] else 0.0
                else:
                    pads, value = list(a.get("pads", [])), float(a.get("value", 0.0))
                y = _pad(t, pads, a.get("mode", b"constant"), value)
            elif op in ("Gather", "Unsqueeze", "Shape"):   # on float tensors (integer ones are handled above)
                y = self._tensor_index_op(op, env, ins, a)
            else:  # pragma: no cover - rejected in __init__
                raise NotImplementedError(op)
            env[outs[0]] = y
        if self.output_names is not None:
            return tuple(env[n] for n in self.output_names)
        return env[self.output_name]

    def _shape_op(self, op: str, env: dict, ins: list[str], a: dict) -> np.ndarray:
        """Shape / Gather / Unsqueeze / Concat on integer arrays (the batch-size-aware flatten of exporters)."""
        def val(n):
            return np.asarray(env[n]) if n in env else self._get(env, n)
        if op == "Shape":
            t = env[ins[0]] if ins[0] in env else self._get(env, ins[0])
            return np.asarray(tuple(t.shape), dtype=np.int64)
        if op == "Gather":
            return np.take(val(ins[0]), val(ins[1]), axis=int(a.get("axis", 0)))
        if op == "Unsqueeze":
            axes = a.get("axes")
            if axes is None:
                axes = [int(v) for v in val(ins[1]).reshape(-1)]
            out = val(ins[0])
            for ax in sorted(int(x) for x in axes):
                out = np.expand_dims(out, ax if ax >= 0 else ax + out.ndim + 1)
            return out
        return np.concatenate([val(n).reshape(-1) if val(n).ndim == 0 else val(n) for n in ins],
                              axis=int(a["axis"]))

    def _tensor_index_op(self, op: str, env: dict, ins: list[str], a: dict):
        t = self._get(env, ins[0])
        if op == "Shape":
            return np.asarray(tuple(t.shape), dtype=np.int64)
        if op == "Gather":
            ax = int(a.get("axis", 0)) % t.dim()
            idx = torch.as_tensor(np.asarray(self._get(env, ins[1])), device=t.device)
            out = torch.index_select(t, ax, idx.reshape(-1) % t.shape[ax])
            return out.reshape(t.shape[:ax] + tuple(idx.shape) + t.shape[ax + 1:])
        axes = a.get("axes") or [int(v) for v in np.asarray(self._get(env, ins[1])).reshape(-1)]
        for ax in sorted(int(x) for x in axes):
            t = t.unsqueeze(ax if ax >= 0 else ax + t.dim() + 1)
        return t


def load_onnx_module(path, dequantize: bool = True) -> OnnxGraphModule:
    """Build a frozen, eval-mode executor from an ONNX file (int8 blocks dequantised in memory)."""
    return OnnxGraphModule.from_onnx(path, dequantize=dequantize)
