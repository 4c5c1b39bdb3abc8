"""Makes the PyTorch fixture of tests/metric.rs: the triplet loss with online mining (batch-hard
and FaceNet's semi-hard, as cnnc defines them in runtime/src/metric.rs) and its gradient by
PyTorch's autograd, on one batch of embeddings.

Run with a Python that has torch (PyTorch is several GB, so CI never installs it; the output is
committed):

    python tests/metric/make.py

Writes triplet.json beside this script: the embeddings [12, 5] (on the unit sphere), the
identities, and for each mining the per-anchor losses and the gradient of their mean, in float64;
and for given triplets (`triplet(a, p, n)`), rows [a | p | n] of three 5-d embeddings, each
row's loss max(|a - p|^2 - |a - n|^2 + margin, 0) and the gradient of their mean.
Mining picks triplets by distance; the loss is differentiated with the triplets held fixed, as
autograd does through an index.
"""
import json
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def losses(emb, labels, margin, semi_hard):
    d = torch.cdist(emb, emb) ** 2
    n = len(labels)
    out = []
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(n) if labels[j] != labels[i]]
        if not pos or not neg:
            out.append(torch.zeros((), dtype=emb.dtype))
            continue
        row = d[i].detach()
        if not semi_hard:
            p = max(pos, key=lambda j: (row[j].item(), -j))
            q = min(neg, key=lambda j: (row[j].item(), j))
            out.append(torch.clamp(d[i, p] - d[i, q] + margin, min=0))
            continue
        terms = []
        for p in pos:
            farther = [j for j in neg if row[j] > row[p]]
            if farther:
                q = min(farther, key=lambda j: (row[j].item(), j))
            else:
                q = max(neg, key=lambda j: (row[j].item(), -j))
            terms.append(torch.clamp(d[i, p] - d[i, q] + margin, min=0))
        out.append(torch.stack(terms).mean())
    return torch.stack(out)


def main():
    gen = torch.Generator().manual_seed(3)
    emb = torch.nn.functional.normalize(torch.randn(12, 5, generator=gen, dtype=torch.float64), dim=1)
    labels = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 2]
    fixture = {"embeddings": emb.reshape(-1).tolist(), "labels": labels, "margin": 0.3, "torch": torch.__version__}
    for mining in ["hard", "semi_hard"]:
        e = emb.clone().requires_grad_(True)
        per_anchor = losses(e, labels, 0.3, mining == "semi_hard")
        per_anchor.mean().backward()
        fixture[mining] = {"losses": per_anchor.detach().tolist(), "grad": e.grad.reshape(-1).tolist()}
    gen = torch.Generator().manual_seed(5)
    rows = torch.randn(8, 15, generator=gen, dtype=torch.float64) * 0.5
    r = rows.clone().requires_grad_(True)
    a, p, n = r[:, :5], r[:, 5:10], r[:, 10:]
    given = torch.clamp(((a - p) ** 2).sum(1) - ((a - n) ** 2).sum(1) + 0.3, min=0)
    given.mean().backward()
    fixture["given"] = {
        "rows": rows.reshape(-1).tolist(),
        "losses": given.detach().tolist(),
        "grad": r.grad.reshape(-1).tolist(),
    }
    with open(os.path.join(HERE, "triplet.json"), "w") as f:
        json.dump(fixture, f, indent=1)


if __name__ == "__main__":
    main()
