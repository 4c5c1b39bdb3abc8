"""Makes the PyTorch fixture of tests/arith.rs: tests/arith/head.cnn built in PyTorch, its output
and the gradients of an L2 loss with respect to its input and weights.

Run with a Python that has torch (PyTorch is several GB, so CI never installs it; the output is
committed):

    python tests/arith/make.py

Writes head.json beside this script: the weights (cnnc's names and layout: dense weights
[in, out]), the input x [4, 6], the output y, the loss ½‖y − t‖² averaged over the batch, and its gradients, all computed in
float64.
"""
import json
import os

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    gen = torch.Generator().manual_seed(7)
    w1 = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 0.5
    b1 = torch.randn(5, generator=gen, dtype=torch.float64) * 0.1
    w2 = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 0.5
    b2 = torch.randn(5, generator=gen, dtype=torch.float64) * 0.1
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    t = torch.randn(4, 5, generator=gen, dtype=torch.float64) * 0.3
    params = [w1, b1, w2, b2]
    for p in params + [x]:
        p.requires_grad_(True)

    a = x @ w1 + b1
    b = torch.tanh(x @ w2 + b2)
    y = F.normalize(torch.abs(a - b) * b + torch.square(a), p=2.0, dim=-1, eps=1e-12)
    loss = 0.5 * ((y - t) ** 2).sum(dim=1).mean()
    loss.backward()

    def flat(v):
        return [float(e) for e in v.detach().reshape(-1)]

    out = {
        "x": flat(x),
        "t": flat(t),
        "y": flat(y),
        "loss": float(loss.detach()),
        "weights": {"dense1/weight": flat(w1), "dense1/bias": flat(b1), "dense2/weight": flat(w2), "dense2/bias": flat(b2)},
        "grads": {
            "x": flat(x.grad),
            "dense1/weight": flat(w1.grad),
            "dense1/bias": flat(b1.grad),
            "dense2/weight": flat(w2.grad),
            "dense2/bias": flat(b2.grad),
        },
        "torch": torch.__version__,
    }
    with open(os.path.join(HERE, "head.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
