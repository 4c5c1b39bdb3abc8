"""Checks an ONNX model that cnnc exported: the ONNX checker (full check, with shape
inference), then ONNX Runtime on the input cnnc ran, against cnnc's outputs, within
max|a - b| <= 1e-4 * max(max|b|, 1) per output.

    python3 tests/onnx_check.py DIR

DIR holds model.onnx, input.bin (float32, little-endian, the model's input at batch 1) and
output0.bin, output1.bin, ... (cnnc's outputs in the model's output order). Exit 0 when every
output agrees; 1 with the worst difference otherwise; 2 when onnx or onnxruntime is missing."""

import os
import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as e:
    print(f"onnx_check: {e} (pip install onnx onnxruntime)", file=sys.stderr)
    sys.exit(2)


def main(folder):
    path = os.path.join(folder, "model.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in feed.shape]
    x = np.fromfile(os.path.join(folder, "input.bin"), dtype="<f4").reshape(shape)
    got = session.run(None, {feed.name: x})
    bad = []
    for i, out in enumerate(got):
        want = np.fromfile(os.path.join(folder, f"output{i}.bin"), dtype="<f4")
        if want.size != out.size:
            bad.append(f"output {i}: {out.size} values, cnnc gave {want.size}")
            continue
        diff = float(np.max(np.abs(out.reshape(-1) - want))) if want.size else 0.0
        bound = 1e-4 * max(float(np.max(np.abs(want))) if want.size else 0.0, 1.0)
        if not diff <= bound:
            bad.append(f"output {i}: max difference {diff:.3e} > {bound:.3e}")
    if bad:
        print("; ".join(bad))
        return 1
    print(f"{len(got)} output(s) equal within the bound")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
