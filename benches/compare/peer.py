"""One peer framework as a worker process of `compare.py`: it loads a model cnnc exported to ONNX,
builds it with its own ops (`graph.py`), and answers commands, one JSON object a line on stdin:

    {"cmd": "load", "onnx": PATH, "mode": "infer" | "train", "batch": B, "lr": 0.1, "momentum": 0.9}
    {"cmd": "time", "steps": S, "warmup": W}        -> {"times_ms": [...]}
    {"cmd": "output", "input": X.npy, "output": Y.npy}  (inference: the output on a given input)
    {"cmd": "quit"}

A step is what `cnnc bench` times: inference, one forward pass on a preloaded batch; training,
forward, loss (softmax cross-entropy), backward, SGD-with-momentum update and batchnorm running
statistics. `load` answers `compile_ms`: building the model and its first call (tracing and
compiling where the framework does), less one step's time measured after it.

    python peer.py SYSTEM THREADS     SYSTEM: onnxruntime, torch, torch-compile, jax, tensorflow, tensorflow-xla
"""

import json
import os
import sys
import time

import numpy as np

SYSTEM, THREADS = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={THREADS}"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["TF_NUM_INTRAOP_THREADS"] = str(THREADS)
os.environ["TF_NUM_INTEROP_THREADS"] = "1"

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from graph import Graph  # noqa: E402


def pool_counts(shape_hw, k, s, pads):
    """For each output position of a pool, how many of its window's taps fall inside the image."""
    (h, w), (kh, kw), (sh, sw) = shape_hw, k, s
    t, l, b, r = pads
    oh, ow = (h + t + b - kh) // sh + 1, (w + l + r - kw) // sw + 1
    rows = np.array([min(i * sh - t + kh, h) - max(i * sh - t, 0) for i in range(oh)], np.float32)
    cols = np.array([min(j * sw - l + kw, w) - max(j * sw - l, 0) for j in range(ow)], np.float32)
    return np.outer(rows, cols)


# ---------------------------------------------------------------------------------------------
# PyTorch: NCHW, its functional ops.


class TorchOps:
    channels_last = False

    def __init__(self):
        import torch
        import torch.nn.functional as F
        self.torch, self.F = torch, F

    def tensor(self, v):
        return self.torch.from_numpy(v.copy())

    def shape(self, x):
        return tuple(x.shape)

    def conv(self, x, w, b, strides, pads, dilations, group, cl):
        t, l, bo, r = pads
        if (t, l) != (bo, r):
            x, (t, l) = self.F.pad(x, (l, r, t, bo)), (0, 0)
        return self.F.conv2d(x, w, b, tuple(strides), (t, l), tuple(dilations), group)

    def batchnorm(self, x, gamma, beta, mean, var, eps, training, cl):
        y = self.F.batch_norm(x, mean, var, gamma, beta, training=training, momentum=0.1, eps=eps)
        return y, mean, var

    def pool(self, kind, x, k, s, pads, count_include_pad, cl):
        t, l, b, r = pads
        if (t, l) != (b, r):
            # Grown at the end for ceil mode (`graph.ceil_pads`): PyTorch's pools pad both sides
            # alike, so pad the input explicitly (-inf for max; an average then counts only the
            # elements inside, as ONNX's count_include_pad = 0 does, through a count map).
            if kind == "max":
                return self.F.max_pool2d(self.F.pad(x, (l, r, t, b), value=-float("inf")), tuple(k), tuple(s))
            h, w = x.shape[2], x.shape[3]
            y = self.F.avg_pool2d(self.F.pad(x, (l, r, t, b)), tuple(k), tuple(s))
            if count_include_pad:
                return y
            scale = (k[0] * k[1]) / pool_counts((h, w), k, s, pads)
            return y * self.torch.from_numpy(scale.astype(np.float32))
        if kind == "max":
            return self.F.max_pool2d(x, tuple(k), tuple(s), (t, l))
        return self.F.avg_pool2d(x, tuple(k), tuple(s), (t, l), count_include_pad=bool(count_include_pad))

    def global_avgpool(self, x, cl):
        return x.mean((2, 3), keepdim=True)

    def dense(self, x, w, b, trans_b):
        y = x @ (w.t() if trans_b else w)
        return y + b if b is not None else y

    def relu(self, x):
        return self.torch.relu(x)

    def tanh(self, x):
        return self.torch.tanh(x)

    def sigmoid(self, x):
        return self.torch.sigmoid(x)

    def leaky_relu(self, x, alpha):
        return self.F.leaky_relu(x, alpha)

    def prelu(self, x, slope, cl):
        return self.F.prelu(x, slope.reshape(-1))

    def concat(self, xs, axis):
        return self.torch.cat(xs, axis)

    def transpose(self, x, perm):
        return x.permute(*perm)

    def reshape(self, x, shape):
        return x.reshape(shape)

    def softmax(self, x, axis):
        return self.torch.softmax(x, axis)


def torch_model(graph, batch, mode, lr, momentum, compiled):
    import torch
    torch.set_num_threads(THREADS)
    ops = TorchOps()
    trainable, buffers, constants = graph.params(ops)

    def forward(x):
        return graph.run(ops, x, trainable, buffers, constants, training=mode == "train")[0]

    torch._dynamo.config.recompile_limit = 64
    fn = torch.compile(forward, fullgraph=True) if compiled else forward
    x = torch.from_numpy(example(graph, batch))
    if mode == "infer":
        def step(xs=None):
            with torch.inference_mode():
                return fn(x if xs is None else torch.from_numpy(xs)).numpy()
        return step
    for p in trainable.values():
        p.requires_grad_(True)
    labels = torch.from_numpy(label_batch(graph, batch))
    opt = torch.optim.SGD(list(trainable.values()), lr=lr, momentum=momentum)

    def train_step(xs=None):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(fn(x), labels)
        loss.backward()
        opt.step()
        return loss.item()
    return train_step


# ---------------------------------------------------------------------------------------------
# JAX and TensorFlow: NHWC (their CPU convolutions' layout), the same ops on jnp or tf.


class ArrayOps:
    """The NHWC ops, written once over a namespace `np_` (jax.numpy or a TF shim)."""
    channels_last = True

    def shape(self, x):
        return tuple(int(d) for d in x.shape)

    def global_avgpool(self, x, cl):
        return self.np_.mean(x, axis=(1, 2), keepdims=True)

    def dense(self, x, w, b, trans_b):
        y = self.np_.matmul(x, self.np_.transpose(w) if trans_b else w)
        return y + b if b is not None else y

    def reshape(self, x, shape):
        return self.np_.reshape(x, shape)

    def transpose(self, x, perm):
        return self.np_.transpose(x, perm)

    def prelu(self, x, slope, cl):
        return self.np_.where(x >= 0, x, x * slope)

    def leaky_relu(self, x, alpha):
        return self.np_.where(x >= 0, x, x * alpha)

    def batchnorm(self, x, gamma, beta, mean, var, eps, training, cl):
        n = self.np_
        if not training:
            return (x - mean) * (gamma / n.sqrt(var + eps)) + beta, mean, var
        m = n.mean(x, axis=(0, 1, 2))
        v = n.mean(n.square(x - m), axis=(0, 1, 2))
        y = (x - m) * (gamma / n.sqrt(v + eps)) + beta
        return y, 0.9 * mean + 0.1 * m, 0.9 * var + 0.1 * v


class JaxOps(ArrayOps):
    def __init__(self):
        import jax
        import jax.numpy as jnp
        self.jax, self.np_ = jax, jnp

    def tensor(self, v):
        return self.np_.asarray(v)

    def conv(self, x, w, b, strides, pads, dilations, group, cl):
        t, l, bo, r = pads
        y = self.jax.lax.conv_general_dilated(
            x, w, tuple(strides), [(t, bo), (l, r)], rhs_dilation=tuple(dilations),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=group)
        return y + b if b is not None else y

    def pool(self, kind, x, k, s, pads, count_include_pad, cl):
        lax = self.jax.lax
        t, l, b, r = pads
        window, strides = (1, k[0], k[1], 1), (1, s[0], s[1], 1)
        padding = ((0, 0), (t, b), (l, r), (0, 0))
        if kind == "max":
            return lax.reduce_window(x, -np.inf, lax.max, window, strides, padding)
        summed = lax.reduce_window(x, 0.0, lax.add, window, strides, padding)
        counts = np.full_like(pool_counts(x.shape[1:3], k, s, pads), k[0] * k[1]) if count_include_pad \
            else pool_counts(x.shape[1:3], k, s, pads)
        return summed / counts[None, :, :, None]

    def relu(self, x):
        return self.jax.nn.relu(x)

    def tanh(self, x):
        return self.np_.tanh(x)

    def sigmoid(self, x):
        return self.jax.nn.sigmoid(x)

    def concat(self, xs, axis):
        return self.np_.concatenate(xs, axis)

    def softmax(self, x, axis):
        return self.jax.nn.softmax(x, axis)


def jax_model(graph, batch, mode, lr, momentum):
    import jax
    import jax.numpy as jnp
    ops = JaxOps()
    trainable, buffers, constants = graph.params(ops)
    x = jnp.asarray(example(graph, batch))
    if mode == "infer":
        forward = jax.jit(lambda p, b, xs: graph.run(ops, xs, p, b, constants)[0])

        def step(xs=None):
            return np.asarray(forward(trainable, buffers, x if xs is None else jnp.asarray(xs)))
        return step
    labels = jnp.asarray(label_batch(graph, batch))

    def loss_fn(p, b, xs, ys):
        logits, updates = graph.run(ops, xs, p, b, constants, training=True)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, ys[:, None], axis=1)), updates

    @jax.jit
    def train(p, v, b, xs, ys):
        (loss, updates), g = jax.value_and_grad(loss_fn, has_aux=True)(p, b, xs, ys)
        v = jax.tree.map(lambda vi, gi: momentum * vi + gi, v, g)
        p = jax.tree.map(lambda pi, vi: pi - lr * vi, p, v)
        return p, v, {**b, **updates}, loss

    state = {"p": trainable, "v": jax.tree.map(jnp.zeros_like, trainable), "b": buffers}

    def train_step(xs=None):
        state["p"], state["v"], state["b"], loss = train(state["p"], state["v"], state["b"], x, labels)
        return float(loss)
    return train_step


class TfNumpy:
    """The few numpy-like calls ArrayOps makes, on TensorFlow."""

    def __init__(self, tf):
        self.tf = tf

    def mean(self, x, axis, keepdims=False):
        return self.tf.reduce_mean(x, axis=axis, keepdims=keepdims)

    def matmul(self, a, b):
        return self.tf.matmul(a, b)

    def transpose(self, x, perm=None):
        return self.tf.transpose(x, perm)

    def reshape(self, x, shape):
        return self.tf.reshape(x, shape)

    def where(self, c, a, b):
        return self.tf.where(c, a, b)

    def sqrt(self, x):
        return self.tf.sqrt(x)

    def square(self, x):
        return self.tf.square(x)


class TfOps(ArrayOps):
    def __init__(self):
        import tensorflow as tf
        self.tf, self.np_ = tf, TfNumpy(tf)

    def tensor(self, v):
        return self.tf.Variable(v)

    def conv(self, x, w, b, strides, pads, dilations, group, cl):
        t, l, bo, r = pads
        if group != 1:
            raise SystemExit("grouped convolutions are not understood on TensorFlow's CPU")
        y = self.tf.nn.conv2d(x, w, [1, *strides, 1], [[0, 0], [t, bo], [l, r], [0, 0]], dilations=list(dilations))
        return self.tf.nn.bias_add(y, b) if b is not None else y

    def pool(self, kind, x, k, s, pads, count_include_pad, cl):
        tf = self.tf
        t, l, b, r = pads
        if kind == "max":
            if any(pads):
                x = tf.pad(x, [[0, 0], [t, b], [l, r], [0, 0]], constant_values=-np.inf)
            return tf.nn.max_pool2d(x, k, s, "VALID")
        if not any(pads):
            return tf.nn.avg_pool2d(x, k, s, "VALID")
        h, w = int(x.shape[1]), int(x.shape[2])
        y = tf.nn.avg_pool2d(tf.pad(x, [[0, 0], [t, b], [l, r], [0, 0]]), k, s, "VALID")
        if count_include_pad:
            return y
        scale = (k[0] * k[1]) / pool_counts((h, w), k, s, pads)
        return y * scale[None, :, :, None].astype(np.float32)

    def relu(self, x):
        return self.tf.nn.relu(x)

    def tanh(self, x):
        return self.tf.tanh(x)

    def sigmoid(self, x):
        return self.tf.sigmoid(x)

    def concat(self, xs, axis):
        return self.tf.concat(xs, axis)

    def softmax(self, x, axis):
        return self.tf.nn.softmax(x, axis)


def tf_model(graph, batch, mode, lr, momentum, xla):
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    ops = TfOps()
    trainable, buffers, constants = graph.params(ops)
    x = tf.constant(example(graph, batch))
    if mode == "infer":
        forward = tf.function(lambda xs: graph.run(ops, xs, trainable, buffers, constants)[0], jit_compile=xla)

        def step(xs=None):
            return forward(x if xs is None else tf.constant(xs)).numpy()
        return step
    labels = tf.constant(label_batch(graph, batch))
    velocity = {k: tf.Variable(tf.zeros_like(v)) for k, v in trainable.items()}
    names = list(trainable)

    @tf.function(jit_compile=xla)
    def train(xs, ys):
        with tf.GradientTape() as tape:
            logits, updates = graph.run(ops, xs, trainable, buffers, constants, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ys, logits=logits))
        grads = tape.gradient(loss, [trainable[k] for k in names])
        for k, g in zip(names, grads):
            velocity[k].assign(momentum * velocity[k] + g)
            trainable[k].assign_sub(lr * velocity[k])
        for k, v in updates.items():
            buffers[k].assign(v)
        return loss

    def train_step(xs=None):
        return float(train(x, labels))
    return train_step


# ---------------------------------------------------------------------------------------------
# ONNX Runtime: the exported file itself, inference only.


def ort_model(path, graph, batch, mode):
    import onnxruntime as ort
    if mode != "infer":
        raise SystemExit("ONNX Runtime is timed on inference only")
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = example(graph, batch)

    def step(xs=None):
        return session.run(None, {graph.input: x if xs is None else xs})[0]
    return step


# ---------------------------------------------------------------------------------------------


def example(graph, batch):
    return np.random.default_rng(1).uniform(-1, 1, [batch, *graph.input_shape]).astype(np.float32)


def label_batch(graph, batch):
    classes = int(graph.initializers[[n for op, i, o, a in graph.nodes if op == "Gemm" for n in i[1:2]][-1]].shape[-1])
    return np.random.default_rng(2).integers(0, classes, batch).astype(np.int64)


def version():
    if SYSTEM == "onnxruntime":
        import onnxruntime
        return onnxruntime.__version__
    if SYSTEM.startswith("torch"):
        import torch
        return torch.__version__
    if SYSTEM == "jax":
        import jax
        return jax.__version__
    import tensorflow as tf
    return tf.__version__


def build(cmd):
    graph = Graph(cmd["onnx"])
    batch, mode = cmd["batch"], cmd["mode"]
    lr, momentum = cmd.get("lr", 0.1), cmd.get("momentum", 0.9)
    if SYSTEM == "onnxruntime":
        return ort_model(cmd["onnx"], graph, batch, mode)
    if SYSTEM in ("torch", "torch-compile"):
        return torch_model(graph, batch, mode, lr, momentum, SYSTEM == "torch-compile")
    if SYSTEM == "jax":
        return jax_model(graph, batch, mode, lr, momentum)
    if SYSTEM in ("tensorflow", "tensorflow-xla"):
        return tf_model(graph, batch, mode, lr, momentum, SYSTEM == "tensorflow-xla")
    raise SystemExit(f"unknown system {SYSTEM}")


def main():
    print(json.dumps({"ready": True, "version": version()}), flush=True)
    step = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "load":
                started = time.perf_counter()
                step = build(cmd)
                step()
                first = time.perf_counter() - started
                t = time.perf_counter()
                step()
                one = time.perf_counter() - t
                reply = {"compile_ms": 1e3 * max(first - one, 0.0)}
            elif cmd["cmd"] == "time":
                for _ in range(cmd.get("warmup", 1)):
                    step()
                times = []
                for _ in range(cmd["steps"]):
                    t = time.perf_counter()
                    step()
                    times.append(1e3 * (time.perf_counter() - t))
                reply = {"times_ms": times}
            elif cmd["cmd"] == "output":
                np.save(cmd["output"], np.asarray(step(np.load(cmd["input"]).astype(np.float32))))
                reply = {"ok": True}
            else:
                reply = {"error": f"unknown command {cmd['cmd']}"}
        except SystemExit as e:
            reply = {"error": str(e)}
        except Exception as e:  # a peer's failure is reported, not fatal to the comparison
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
