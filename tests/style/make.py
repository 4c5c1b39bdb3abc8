"""Makes the fixtures of the style-transfer gradient test (tests/style.rs) with PyTorch.

Run once, from the repository root, with torch, numpy and Pillow installed:

    python tests/style/make.py

It writes, next to this script: weights.safetensors (tiny.cnn's parameters, in cnnc's layout),
content.png, style.png, generated.png (6x8 RGB) and expected.safetensors: the cost of the
generated image as tiny.cnn's train section defines it, its parts, and its gradient with
respect to the generated image's pixels (in [0, 1]), computed by PyTorch's autograd.
"""

import json
import os
import struct

import numpy as np
import torch
from PIL import Image


def save_file(tensors, path):
    """Float32 tensors as safetensors, as safetensors.torch.save_file writes them (names sorted)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        data = tensors[name].numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))

here = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(7)
rng = np.random.default_rng(7)
H, W = 6, 8


def image(name):
    pixels = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(here, name))
    return torch.tensor(pixels, dtype=torch.float64) / 255.0  # [h, w, c]


content, style, generated = image("content.png"), image("style.png"), image("generated.png")
w1 = torch.randn(4, 3, 3, 3, dtype=torch.float64) * 0.5  # [out, in, kh, kw]
b1 = torch.randn(4, dtype=torch.float64) * 0.1
w2 = torch.randn(5, 4, 3, 3, dtype=torch.float64) * 0.5
b2 = torch.randn(5, dtype=torch.float64) * 0.1
mean = torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64)
std = torch.tensor([0.2, 0.25, 0.3], dtype=torch.float64)


def features(pixels):
    x = ((pixels - mean) / std).permute(2, 0, 1)[None]  # [1, c, h, w]
    f1 = torch.relu(torch.nn.functional.conv2d(x, w1, b1, padding=1))
    f2 = torch.tanh(torch.nn.functional.conv2d(torch.nn.functional.avg_pool2d(f1, 2), w2, b2, padding=1))
    return f1, f2


def gram(f):
    c = f.shape[1]
    a = f[0].reshape(c, -1)  # [c, positions]
    return a @ a.t()


def size(f):
    return f.shape[1] * f.shape[2] * f.shape[3]


with torch.no_grad():
    c1, c2 = features(content)
    s1, s2 = features(style)
g = generated.clone().requires_grad_(True)
f1, f2 = features(g)
j_content = 2 * ((f2 - c2) ** 2).sum() / (4 * size(f2))
j_style = 10 * ((gram(f1) - gram(s1)) ** 2).sum() / (2 * size(f1)) ** 2
j_style = j_style + 30 * ((gram(f2) - gram(s2)) ** 2).sum() / (2 * size(f2)) ** 2
tv = ((g[1:, :, :] - g[:-1, :, :]) ** 2).sum() + ((g[:, 1:, :] - g[:, :-1, :]) ** 2).sum()
j_tv = 0.1 * tv
total = j_content + j_style + j_tv
total.backward()

f32 = lambda t: t.detach().to(torch.float32).contiguous()
save_file(
    {
        "conv1/weight": f32(w1.permute(2, 3, 1, 0)),  # [kh, kw, in, out]
        "conv1/bias": f32(b1),
        "conv2/weight": f32(w2.permute(2, 3, 1, 0)),
        "conv2/bias": f32(b2),
    },
    os.path.join(here, "weights.safetensors"),
)
save_file(
    {
        "cost": f32(torch.stack([total, j_content, j_style, j_tv])),
        "grad": f32(g.grad),
    },
    os.path.join(here, "expected.safetensors"),
)
print("cost", float(total), "content", float(j_content), "style", float(j_style), "tv", float(j_tv))
