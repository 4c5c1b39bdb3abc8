"""Times ONNX Runtime on a model cnnc exported (`cnnc build FILE --emit onnx -o model.onnx`), with
the same definition of a step as `cnnc bench --infer`: one forward pass on a preloaded batch,
warm-up runs first, the median of the timed runs. Threads pinned like cnnc's (2 by default).

    python3 benches/ort.py model.onnx BATCH [STEPS] [THREADS]"""

import sys
import time

import numpy as np
import onnxruntime as ort


def main(path, batch, steps=5, threads=2):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    started = time.perf_counter()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - started
    feed = session.get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in feed.shape]
    x = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
    for _ in range(2):
        session.run(None, {feed.name: x})
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        session.run(None, {feed.name: x})
        times.append(time.perf_counter() - t)
    times.sort()
    print(f"onnxruntime {ort.__version__} {path} b{batch} ({threads} threads): median {1e3 * times[len(times) // 2]:.3f} ms"
          f"  min {1e3 * times[0]:.3f}  max {1e3 * times[-1]:.3f}  (load {1e3 * load:.1f} ms)")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], int(args[1]), *(int(a) for a in args[2:]))
