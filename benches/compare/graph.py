"""An ONNX model (as `cnnc build --emit onnx` writes it) run by another framework's own ops, so
that every peer computes the same network with the same weights as cnnc.

`Graph(path)` reads the model; `graph.run(ops, values, params, training)` evaluates it with the
functions of an `ops` object (one per framework, in `peer.py`), returning the output and, in
training mode, the batchnorm running statistics updated from the batch.

Layout: cnnc's exports take and give channels-last tensors and turn to channels-first with a
Transpose after the input. A framework whose convolutions want channels-last (TensorFlow on the
CPU, and XLA) sets `ops.channels_last`: then that Transpose is skipped and every 4D tensor stays
NHWC; the axes of channel-wise ops follow. Only the operators cnnc exports are understood (2D
convolutions and pools); anything else is an error naming it."""

import numpy as np
import onnx
from onnx import numpy_helper

# Initializers that are statistics, not trained.
BUFFERS = ("running_mean", "running_var")


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class Graph:
    def __init__(self, path):
        model = onnx.load(path)
        g = model.graph
        self.nodes = [(n.op_type, list(n.input), list(n.output), attrs(n)) for n in g.node]
        self.initializers = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.input = g.input[0].name
        self.input_shape = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim][1:]
        self.output = g.output[0].name
        for op, *_ in self.nodes:
            if op not in OPS:
                raise SystemExit(f"{path}: operator {op} is not one the comparison understands")

    def trainable(self, name):
        value = self.initializers[name]
        return value.dtype == np.float32 and not name.endswith(BUFFERS)

    def params(self, ops):
        """The initializers in the framework's layout (convolution filters HWIO when
        channels-last), as its tensors: `(trainable, buffers, constants)` dicts by name."""
        layout = {}
        for op, inputs, _, a in self.nodes:
            if op == "Conv" and ops.channels_last:
                layout[inputs[1]] = (2, 3, 1, 0)  # OIHW -> HWIO
            if op == "PRelu" and ops.channels_last:
                layout[inputs[1]] = "flat"
        trainable, buffers, constants = {}, {}, {}
        for name, value in self.initializers.items():
            if name in layout:
                value = value.reshape(-1) if layout[name] == "flat" else value.transpose(layout[name])
            value = np.ascontiguousarray(value)
            if value.dtype != np.float32:
                constants[name] = value
            elif name.endswith(BUFFERS):
                buffers[name] = ops.tensor(value)
            else:
                trainable[name] = ops.tensor(value)
        return trainable, buffers, constants

    def run(self, ops, x, trainable, buffers, constants, training=False):
        """The output for input `x` (channels-last), and in training mode the updated running
        statistics by name."""
        env = {self.input: x}
        env.update(trainable)
        env.update(buffers)
        env.update(constants)
        # Tensors kept channels-last while ONNX sees them channels-first.
        swapped = set()
        updates = {}
        for op, inputs, outputs, a in self.nodes:
            args = [env[i] if i else None for i in inputs]
            cl = ops.channels_last and any(i in swapped for i in inputs)
            if op == "Transpose" and ops.channels_last and tuple(a["perm"]) in ((0, 3, 1, 2), (0, 2, 3, 1)):
                # To channels-first and back: already where it goes.
                if (tuple(a["perm"]) == (0, 3, 1, 2)) == (inputs[0] in swapped):
                    raise SystemExit(f"Transpose {a['perm']} of a tensor the comparison keeps otherwise")
                env[outputs[0]] = args[0]
                if tuple(a["perm"]) == (0, 3, 1, 2):
                    swapped.add(outputs[0])
                continue
            if cl and op in ("Flatten", "Reshape", "Gemm", "Transpose", "Softmax"):
                if op != "Flatten" or np.prod(ops.shape(args[0])[1:3]) != 1:
                    raise SystemExit(f"{op} of a channels-first image: not understood channels-last")
            elif cl:
                swapped.add(outputs[0])
            env[outputs[0]] = OPS[op](ops, args, a, cl, training, inputs, updates)
        return env[self.output], updates


def conv(ops, args, a, cl, training, inputs, updates):
    x, w, b = (args + [None])[:3]
    return ops.conv(x, w, b, a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0]),
                    a.get("dilations", [1, 1]), a.get("group", 1), cl)


def batchnorm(ops, args, a, cl, training, inputs, updates):
    x, gamma, beta, mean, var = args
    y, new_mean, new_var = ops.batchnorm(x, gamma, beta, mean, var, a.get("epsilon", 1e-5), training, cl)
    if training:
        updates[inputs[3]] = new_mean
        updates[inputs[4]] = new_var
    return y


def ceil_pads(size, k, s, pads):
    """Pads `[top, left, bottom, right]` grown at the end so that flooring gives what ONNX's
    ceil_mode gives (as PyTorch: a last window starting in the end padding is dropped)."""
    out = list(pads)
    for axis in range(2):
        n, before, after = size[axis], pads[axis], pads[axis + 2]
        count = -(-(n + before + after - k[axis]) // s[axis]) + 1
        if (count - 1) * s[axis] >= n + before:
            count -= 1
        out[axis + 2] = max(after, (count - 1) * s[axis] + k[axis] - n - before)
    return out


def pool(kind):
    def f(ops, args, a, cl, training, inputs, updates):
        k, s, pads = a["kernel_shape"], a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0])
        if a.get("ceil_mode", 0):
            shape = ops.shape(args[0])
            pads = ceil_pads(shape[1:3] if ops.channels_last else shape[2:4], k, s, pads)
        return ops.pool(kind, args[0], k, s, pads, a.get("count_include_pad", 0), cl)
    return f


def gemm(ops, args, a, cl, training, inputs, updates):
    x, w, b = (args + [None])[:3]
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise SystemExit("a Gemm with transA, alpha or beta is not understood")
    return ops.dense(x, w, b, a.get("transB", 0))


OPS = {
    "Conv": conv,
    "BatchNormalization": batchnorm,
    "MaxPool": pool("max"),
    "AveragePool": pool("avg"),
    "GlobalAveragePool": lambda ops, args, a, cl, *_: ops.global_avgpool(args[0], cl),
    "Relu": lambda ops, args, *_: ops.relu(args[0]),
    "Tanh": lambda ops, args, *_: ops.tanh(args[0]),
    "Sigmoid": lambda ops, args, *_: ops.sigmoid(args[0]),
    "LeakyRelu": lambda ops, args, a, *_: ops.leaky_relu(args[0], a.get("alpha", 0.01)),
    "PRelu": lambda ops, args, a, cl, *_: ops.prelu(args[0], args[1], cl),
    "Add": lambda ops, args, *_: args[0] + args[1],
    "Concat": lambda ops, args, a, cl, *_: ops.concat(args, 3 if cl and a["axis"] == 1 else a["axis"]),
    "Transpose": lambda ops, args, a, *_: ops.transpose(args[0], a["perm"]),
    "Flatten": lambda ops, args, a, *_: ops.reshape(args[0], (-1, int(np.prod(ops.shape(args[0])[1:])))),
    "Reshape": lambda ops, args, *_: ops.reshape(
        args[0], tuple(ops.shape(args[0])[i] if d == 0 else int(d) for i, d in enumerate(np.asarray(args[1])))),
    "Gemm": gemm,
    "Softmax": lambda ops, args, a, *_: ops.softmax(args[0], a.get("axis", -1)),
    "Identity": lambda ops, args, *_: args[0],
}
