"""MTCNN's PNet, RNet and ONet as the original (facenet-pytorch) code runs them, in numpy alone,
on the 200 patches of examples/data/lfw_subset, read as cnnc's `preprocess` reads them: grey
repeated to RGB, resized bilinearly (half-pixel centres, no antialiasing: PyTorch's
`interpolate(mode="bilinear")`), then (x - 127.5) / 128 on 0-255 pixels.

    python3 examples/mtcnn/reference.py

writes examples/mtcnn/reference_{pnet,rnet,onet}.npy: each net's two face scores per patch
(before softmax), which tests/run.rs compares with `cnnc run --eval --output`, and prints the
mean face probability over the faces and the non-faces.
"""
import gzip
import json
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "lfw_subset")


def load(name):
    raw = open(os.path.join(HERE, f"{name}.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    return {
        k: np.frombuffer(body[v["data_offsets"][0] : v["data_offsets"][1]], "<f4").reshape(v["shape"]).astype(np.float64)
        for k, v in header.items()
        if k != "__metadata__"
    }


def resize(img, h, w):
    """Bilinear, half-pixel centres, edges clamped: img [H, W, C] -> [h, w, C]."""
    def taps(out, inp):
        src = np.maximum((np.arange(out) + 0.5) * inp / out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), inp - 1)
        hi = np.minimum(lo + 1, inp - 1)
        return lo, hi, src - lo
    y0, y1, fy = taps(h, img.shape[0])
    x0, x1, fx = taps(w, img.shape[1])
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bottom = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def conv(x, w, b):
    """x [C, H, W], w [O, C, kh, kw] (PyTorch), valid, stride 1."""
    o, c, kh, kw = w.shape
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("oc,chw->ohw", w[:, :, i, j], x[:, i : i + oh, j : j + ow])
    return out + b[:, None, None]


def prelu(x, a):
    shape = (-1,) + (1,) * (x.ndim - 1)
    return np.where(x > 0, x, x * a.reshape(shape))


def maxpool(x, k, s):
    """Ceil rounding, as MTCNN's pools (a last partial window is kept)."""
    c, h, w = x.shape
    oh, ow = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
    out = np.full((c, oh, ow), -np.inf)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = x[:, i * s : i * s + k, j * s : j * s + k].max(axis=(1, 2))
    return out


def pnet(p, x):
    x = prelu(conv(x, p["conv1.weight"], p["conv1.bias"]), p["prelu1.weight"])
    x = maxpool(x, 2, 2)
    x = prelu(conv(x, p["conv2.weight"], p["conv2.bias"]), p["prelu2.weight"])
    x = prelu(conv(x, p["conv3.weight"], p["conv3.bias"]), p["prelu3.weight"])
    return conv(x, p["conv4_1.weight"], p["conv4_1.bias"]).reshape(-1)


def flat(x):
    """facenet-pytorch's x.permute(0, 3, 2, 1) before flattening: [C, H, W] -> [W, H, C]."""
    return x.transpose(2, 1, 0).reshape(-1)


def rnet(p, x):
    x = maxpool(prelu(conv(x, p["conv1.weight"], p["conv1.bias"]), p["prelu1.weight"]), 3, 2)
    x = maxpool(prelu(conv(x, p["conv2.weight"], p["conv2.bias"]), p["prelu2.weight"]), 3, 2)
    x = prelu(conv(x, p["conv3.weight"], p["conv3.bias"]), p["prelu3.weight"])
    x = prelu(p["dense4.weight"] @ flat(x) + p["dense4.bias"], p["prelu4.weight"])
    return p["dense5_1.weight"] @ x + p["dense5_1.bias"]


def onet(p, x):
    x = maxpool(prelu(conv(x, p["conv1.weight"], p["conv1.bias"]), p["prelu1.weight"]), 3, 2)
    x = maxpool(prelu(conv(x, p["conv2.weight"], p["conv2.bias"]), p["prelu2.weight"]), 3, 2)
    x = maxpool(prelu(conv(x, p["conv3.weight"], p["conv3.bias"]), p["prelu3.weight"]), 2, 2)
    x = prelu(conv(x, p["conv4.weight"], p["conv4.bias"]), p["prelu4.weight"])
    x = prelu(p["dense5.weight"] @ flat(x) + p["dense5.bias"], p["prelu5.weight"])
    return p["dense6_1.weight"] @ x + p["dense6_1.bias"]


def main():
    raw = gzip.open(os.path.join(DATA, "images-idx3-ubyte.gz")).read()
    n, h, w = struct.unpack(">III", raw[4:16])
    images = np.frombuffer(raw[16:], np.uint8).reshape(n, h, w, 1).astype(np.float64) / 255.0
    labels = np.frombuffer(gzip.open(os.path.join(DATA, "labels-idx1-ubyte.gz")).read()[8:], np.uint8)
    for name, net, side in [("pnet", pnet, 12), ("rnet", rnet, 24), ("onet", onet, 48)]:
        p = load(name)
        scores = []
        for img in images:
            x = resize(np.repeat(img, 3, axis=2), side, side)
            x = (x * 255.0 - 127.5) / 128.0
            scores.append(net(p, x.transpose(2, 0, 1)))
        scores = np.array(scores, dtype=np.float32)
        np.save(os.path.join(HERE, f"reference_{name}.npy"), scores)
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        face = e[:, 1] / e.sum(axis=1)
        print(f"{name}: mean face probability {face[labels == 1].mean():.4f} on faces, "
              f"{face[labels == 0].mean():.4f} on non-faces")


if __name__ == "__main__":
    main()
