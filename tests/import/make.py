"""Makes the PyTorch fixtures of tests/import.rs: weights and outputs computed by PyTorch.

Run with a Python that has torch and torchvision (PyTorch is several GB, so CI never installs it;
the outputs are committed):

    python tests/import/make.py

Writes, beside this script:
- small.safetensors, small.onnx: a model with a convolution, batchnorm, PReLU, a grouped and a
  depthwise convolution, max pooling, a dense layer after a flatten (PyTorch's [c, h, w] order)
  and a PReLU with one shared slope (small.cnn is the same model in cnnc);
- tiny_resnet.safetensors: torchvision's ResNet (its BasicBlock and names) at widths 8-64 with one
  block a stage, for 32x32 inputs (tiny_resnet.cnn, from std.resnet's blocks);
- *_x.npy (inputs, channels-last as cnnc takes them) and *_y.npy (PyTorch's outputs);
- torchvision.json: the names and shapes of torchvision's ResNet-18/34/50, VGG-16, AlexNet and
  GoogLeNet (without its auxiliary classifiers, as its pretrained weights load) state dicts (no
  values), for the test that the stdlib's nets pair with them.
"""
import json
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock

HERE = os.path.dirname(os.path.abspath(__file__))


def save_safetensors(path, tensors):
    """A state dict as safetensors, as safetensors.torch.save_file writes it (names sorted)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        if t.dtype == torch.int64:
            data, dtype = t.numpy().astype("<i8").tobytes(), "I64"
        else:
            data, dtype = t.float().numpy().astype("<f4").tobytes(), "F32"
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def randomize_batchnorm(model, gen):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=gen)
            m.bias.data = 0.2 * torch.randn(c, generator=gen)
            m.running_mean.data = 0.2 * torch.randn(c, generator=gen)
            m.running_var.data = 0.5 + torch.rand(c, generator=gen)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.PReLU(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 3 * 3, 10)
        self.act2 = nn.PReLU()
        self.fc2 = nn.Linear(10, 4)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = torch.relu(self.grouped(x))
        x = torch.relu(self.bn2(self.depthwise(x)))
        x = nn.functional.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        return self.fc2(self.act2(self.fc1(x)))


class TinyResNet(torchvision.models.ResNet):
    """torchvision's ResNet with its names, at widths 8, 16, 32, 64 and one block a stage."""

    def __init__(self):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = 8, 1, 1, 64
        self.conv1 = nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, 8, 1)
        self.layer2 = self._make_layer(BasicBlock, 16, 1, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 32, 1, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 64, 1, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, 10)


def fixture(name, model, shape, gen):
    randomize_batchnorm(model, gen)
    model.eval()
    x = torch.rand((3,) + shape, generator=gen)
    with torch.no_grad():
        y = model(x)
    save_safetensors(os.path.join(HERE, f"{name}.safetensors"), model.state_dict())
    np.save(os.path.join(HERE, f"{name}_x.npy"), x.permute(0, 2, 3, 1).numpy().astype(np.float32))
    np.save(os.path.join(HERE, f"{name}_y.npy"), y.numpy().astype(np.float32))
    return model, x


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    small, x = fixture("small", Small(), (3, 12, 12), gen)
    torch.onnx.export(small, x, os.path.join(HERE, "small.onnx"), dynamo=False, do_constant_folding=False)
    fixture("tiny_resnet", TinyResNet(), (3, 32, 32), gen)
    shapes = {}
    for name in ["resnet18", "resnet34", "resnet50", "vgg16", "alexnet", "googlenet"]:
        extra = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
        model = getattr(torchvision.models, name)(weights=None, **extra)
        shapes[name] = [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()]
    with open(os.path.join(HERE, "torchvision.json"), "w") as f:
        json.dump(shapes, f, indent=0)


if __name__ == "__main__":
    main()
