"""PyTorch reference of LPIPS as stage-1 training uses it (architecture.md §6.1), written from
the reference text, independent of hwaga: VGG16's features (3x3 convs with ReLU, 2x2 max pools)
read at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 of both pictures after the input scaling
(x - shift) / scale; each normalised over channels (x / (||x|| + 1e-10)); the squared difference
weighted by a 1x1 head without bias, averaged over positions, summed over the five layers; the
batch mean. Random weights are written in torchvision's and taming's layouts for hwaga to read.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

PLAN = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TAPS = (3, 8, 15, 22, 29)  # features index of the ReLU each layer is read after
CHANNELS = (64, 128, 256, 512, 512)
SHIFT = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
SCALE = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)


def features():
    layers, cin = [], 3
    for p in PLAN:
        if p == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, p, 3, padding=1), nn.ReLU()]
            cin = p
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = features()
        self.heads = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in CHANNELS])

    def taps(self, x):
        out, h = [], (x - SHIFT) / SCALE
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                out.append(h)
        return out

    def forward(self, x, y):
        val = 0
        for f0, f1, w in zip(self.taps(x), self.taps(y), self.heads):
            n0 = f0 / (f0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            n1 = f1 / (f1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            val = val + F.conv2d((n0 - n1) ** 2, w).mean([2, 3])
        return val.mean()


def random_lpips(seed):
    """An LPIPS with random weights that keep the activations alive through 13 layers: convs
    N(0, 2/fan_in), biases N(0, 0.05), heads |N(0, 0.1)| (the released heads are non-negative)."""
    g = torch.Generator().manual_seed(seed)
    m = LPIPS()
    with torch.no_grad():
        for layer in m.features:
            if isinstance(layer, nn.Conv2d):
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.05)
        for h in m.heads:
            h.copy_(torch.randn(h.shape, generator=g).abs() * 0.1)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def save(m, vgg_path, heads_path):
    """torchvision's vgg16 layout ("features.<i>.weight|bias") and taming's vgg.pth layout
    ("lin<k>.model.1.weight"), as torch.save'd state dicts."""
    torch.save({"features.%s" % k: v.clone() for k, v in m.features.state_dict().items()}, vgg_path)
    torch.save({"lin%d.model.1.weight" % k: h.detach().clone() for k, h in enumerate(m.heads)}, heads_path)
