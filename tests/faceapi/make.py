"""Reference outputs for cnnc's port of face-api's FaceRecognitionNet (tests/faceapi.rs).

A float64 numpy implementation of FaceRecognitionNet (face-api's dlib ResNet-34-like net,
150x150 RGB -> 128-d descriptor), written from section 1 of
examples/data/faceapi/README.md, with the weights of
face_recognition_model.safetensors (TF.js names and TF layouts; read here with plain numpy).
It needs only numpy and the standard library (PNGs are decoded with zlib below). Run once, from
the repository root:

    python3 tests/faceapi/make.py [path/to/face_recognition_model.safetensors]

It writes, next to this script, the committed fixtures of tests/faceapi.rs:
  input.npy        float32 [3, 150, 150, 3], NHWC, already normalised as the net wants:
                   (pixel_0_255 - [122.782, 117.001, 104.298]) / 256
  descriptors.npy  float32 [3, 128], the net's outputs, computed in float64 then cast.

The three examples:
  0. examples/data/astronaut.png, rows 81..189, cols 171..279 (a 108x108 square). That is the
     box face-api itself would crop (FaceLandmarks.alignMinBbox: the 68 landmarks' bounding
     box, eyebrows-to-chin rows 93..177 and jaw-to-jaw cols 180..270 read off the image by
     eye, padded by 20% of its size, then squared about its centre).
  1. examples/data/lfw_faces/face000/0.png, the whole 25x25 grey crop, R=G=B.
  2. examples/data/lfw_faces/face001/0.png, the same.
Each crop is resized to 150x150 by bilinear sampling with half-pixel centres (PyTorch
interpolate(mode="bilinear", align_corners=False), no antialias), kept in float (not rounded).
face-api itself resizes with TF1's legacy sampling (halfPixelCenters=false); that only changes
which input the fixture holds, not what the net computes from it.

The divisor is 256, not 255: FaceRecognitionNet.forwardInput (face-api src/faceRecognitionNet/
FaceRecognitionNet.ts) does `normalize(batchTensor, meanRgb).div(tf.scalar(256))`; the other
face-api nets divide by 255.
"""

import json
import os
import struct
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(ROOT, "examples", "data")
WEIGHTS = sys.argv[1] if len(sys.argv) > 1 else os.path.join(DATA, "faceapi", "face_recognition_model.safetensors")

MEAN_RGB = np.array([122.782, 117.001, 104.298])
DIVISOR = 256.0  # FaceRecognitionNet.ts: .div(tf.scalar(256))
SIZE = 150
ASTRONAUT_CROP = (81, 189, 171, 279)  # rows [81, 189), cols [171, 279)


# ---------------------------------------------------------------------------------------------
# Files


def read_safetensors(path):
    """{name: float64 array} from a safetensors file: u64 LE header size, JSON header, raw data."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        start, end = info["data_offsets"]
        raw = np.frombuffer(data[base + start:base + end], dtype="<f4")
        tensors[name] = raw.reshape(info["shape"]).astype(np.float64)
    return tensors


def read_png(path):
    """[h, w, channels] uint8 from an 8-bit, non-interlaced grey (1 channel) or RGB (3) PNG."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length  # length, type, body, CRC
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    w, h, depth, color, _, _, interlace = ihdr
    assert depth == 8 and color in (0, 2) and interlace == 0, (path, ihdr)
    bpp = 1 if color == 0 else 3  # bytes a pixel
    stride = w * bpp
    raw = zlib.decompress(b"".join(idat))
    # Undo each scanline's filter (PNG spec 9.2); a: left, b: up, c: up-left, reconstructed bytes.
    prev, rows = bytearray(stride), []
    for r in range(h):
        kind = raw[r * (stride + 1)]
        line = bytearray(raw[r * (stride + 1) + 1:(r + 1) * (stride + 1)])
        if kind == 2:  # Up: no dependency along the row, so one vector add
            up = np.frombuffer(line, np.uint8) + np.frombuffer(prev, np.uint8)  # wraps mod 256
            line = bytearray(up.tobytes())
        elif kind != 0:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                if kind == 1:  # Sub
                    pred = a
                elif kind == 3:  # Average
                    pred = (a + b) >> 1
                else:  # Paeth
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return np.frombuffer(b"".join(rows), np.uint8).reshape(h, w, bpp)


# ---------------------------------------------------------------------------------------------
# Input pipeline


def resize_bilinear(img, size):
    """[h, w, c] -> [size, size, c] float64, half-pixel centres, edges clamped (PyTorch's
    interpolate(mode="bilinear", align_corners=False) without antialias)."""

    def taps(n_in):
        src = (np.arange(size) + 0.5) * (n_in / size) - 0.5
        src = np.maximum(src, 0.0)  # PyTorch clamps negative source coordinates to 0
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    img = img.astype(np.float64)
    y0, y1, fy = taps(img.shape[0])
    x0, x1, fx = taps(img.shape[1])
    fy, fx = fy[:, None, None], fx[None, :, None]
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def face_input(img):
    """A square uint8 crop, grey or RGB -> [150, 150, 3] float64, normalised for the net."""
    assert img.shape[0] == img.shape[1], img.shape  # square, so toBatchTensor pads nothing
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)  # grey given as R=G=B
    return (resize_bilinear(img, SIZE) - MEAN_RGB) / DIVISOR


# ---------------------------------------------------------------------------------------------
# FaceRecognitionNet, NHWC float64


def tf_same_pads(n, k, s):
    """TF 'same': (before, after) padding of one axis; an odd extra pixel goes after."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv2d(x, w, stride, padding):
    """x [n, h, w, in], w [kh, kw, in, out]; padding 'same' or 'valid' as in TF. One matmul a
    filter tap, summed over the kh*kw taps."""
    kh, kw = w.shape[:2]
    if padding == "same":
        (t, b), (l, r) = tf_same_pads(x.shape[1], kh, stride), tf_same_pads(x.shape[2], kw, stride)
        x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            y += patch @ w[i, j]
    return y


def pool(x, k, s, reduce):
    """Valid k x k pooling with stride s; reduce is np.maximum or np.add over the taps."""
    ho = (x.shape[1] - k) // s + 1
    wo = (x.shape[2] - k) // s + 1
    taps = [x[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :] for i in range(k) for j in range(k)]
    out = taps[0]
    for t in taps[1:]:
        out = reduce(out, t)
    return out


def max_pool(x, k, s):
    return pool(x, k, s, np.maximum)


def avg_pool(x, k, s):
    return pool(x, k, s, np.add) / (k * k)


def relu(x):
    return np.maximum(x, 0.0)


class Net:
    def __init__(self, weights):
        self.w = weights
        self.used = set()

    def param(self, name):
        self.used.add(name)
        return self.w[name]

    def conv_layer(self, x, prefix, stride, with_relu, padding="same"):
        """convLayer.ts: conv2d + conv bias, then the folded-BN scale layer, then maybe ReLU."""
        y = conv2d(x, self.param(f"{prefix}/conv/filters"), stride, padding) + self.param(f"{prefix}/conv/bias")
        y = y * self.param(f"{prefix}/scale/weights") + self.param(f"{prefix}/scale/biases")
        return relu(y) if with_relu else y

    def conv(self, x, prefix):
        return self.conv_layer(x, prefix, 1, True)

    def conv_no_relu(self, x, prefix):
        return self.conv_layer(x, prefix, 1, False)

    def conv_down(self, x, prefix):
        return self.conv_layer(x, prefix, 2, True, "valid")

    def residual(self, x, prefix):
        out = self.conv_no_relu(self.conv(x, f"{prefix}/conv1"), f"{prefix}/conv2")
        return relu(out + x)

    def residual_down(self, x, prefix):
        out = self.conv_no_relu(self.conv_down(x, f"{prefix}/conv1"), f"{prefix}/conv2")
        pooled = avg_pool(x, 2, 2)
        if out.shape[1:3] != pooled.shape[1:3]:
            # The conv path is one smaller: one zero row at the bottom, then one zero column
            # at the right (residualLayer.ts concatenates on axis 1, then on axis 2).
            assert out.shape[1] + 1 == pooled.shape[1] and out.shape[2] + 1 == pooled.shape[2]
            out = np.pad(out, ((0, 0), (0, 1), (0, 1), (0, 0)))
        if out.shape[3] != pooled.shape[3]:
            # Zero channels after the shortcut's own: concat([pooled, zeros_like(pooled)], 3).
            assert out.shape[3] == 2 * pooled.shape[3]
            pooled = np.concatenate([pooled, np.zeros_like(pooled)], axis=3)
        return relu(pooled + out)

    def forward(self, x, log=print):
        """x [n, 150, 150, 3] normalised -> [n, 128] descriptors (FaceRecognitionNet.forwardInput)."""

        def stage(name, y):
            log(f"  {name:<18} {'x'.join(map(str, y.shape[1:]))}")
            return y

        out = stage("conv32_down", self.conv_down(x, "conv32_down"))  # 7x7 s2 valid
        out = stage("maxpool 3x3 s2", max_pool(out, 3, 2))
        for p in ["conv32_1", "conv32_2", "conv32_3"]:
            out = self.residual(out, p)
        out = stage("conv32_3", out)
        out = stage("conv64_down", self.residual_down(out, "conv64_down"))
        for p in ["conv64_1", "conv64_2", "conv64_3"]:
            out = self.residual(out, p)
        out = self.residual_down(out, "conv128_down")
        out = stage("conv128_down", out)
        for p in ["conv128_1", "conv128_2"]:
            out = self.residual(out, p)
        out = stage("conv256_down", self.residual_down(out, "conv256_down"))
        for p in ["conv256_1", "conv256_2"]:
            out = self.residual(out, p)
        out = stage("conv256_down_out", self.residual_down(out, "conv256_down_out"))
        out = stage("mean over h, w", out.mean(axis=(1, 2)))
        return stage("fc (no bias)", out @ self.param("fc"))


# ---------------------------------------------------------------------------------------------


def main():
    t, b, l, r = ASTRONAUT_CROP
    crops = [
        read_png(os.path.join(DATA, "astronaut.png"))[t:b, l:r],
        read_png(os.path.join(DATA, "lfw_faces", "face000", "0.png")),
        read_png(os.path.join(DATA, "lfw_faces", "face001", "0.png")),
    ]
    # The fixture is the float32 input; the reference runs in float64 on exactly those values.
    x = np.stack([face_input(c) for c in crops]).astype(np.float32)

    net = Net(read_safetensors(WEIGHTS))
    print("stage outputs (h x w x c):")
    d = net.forward(x.astype(np.float64))
    unused = set(net.w) - net.used
    assert not unused, f"weights not used: {sorted(unused)}"

    np.save(os.path.join(HERE, "input.npy"), x)
    np.save(os.path.join(HERE, "descriptors.npy"), d.astype(np.float32))

    names = ["astronaut", "lfw face000", "lfw face001"]
    print("descriptor norms:")
    for name, v in zip(names, d):
        print(f"  {name:<12} {np.linalg.norm(v):.6f}")
    print("pairwise euclidean distances (face-api calls < 0.6 the same person):")
    for i in range(len(d)):
        for j in range(i + 1, len(d)):
            print(f"  {names[i]} - {names[j]}: {np.linalg.norm(d[i] - d[j]):.6f}")


if __name__ == "__main__":
    main()
