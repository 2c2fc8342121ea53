"""Small conv architectures that carry ``conv2d -> relu -> add`` the way real networks do.

Shared by tests/test_models.py (CPU), the other hardening tests and GPU scripts. Each model
states how many sites the pass must fuse and refuse, worked out by hand from ``forward``:
a *candidate* is an add with an operand that is ``relu(conv2d(...))`` directly (no op in
between, e.g. no BatchNorm); it is *fused* when the conv and relu outputs are read by
nothing else, and *refused* otherwise. A graph break between the relu and the add
leaves no candidate at all: the add's graph sees a plain input.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class VGGLike(nn.Module):
    """VGG stages of conv3x3 -> relu -> + learned per-channel shift, max-pooled.

    Sites: conv1, conv2, conv3, conv4 each add a (C, 1, 1) shift -> 4 fused. conv5 has a
    relu and no add -> not a candidate. Refused: 0.
    """

    expected_fused = 4
    expected_refused = 0

    def __init__(self, in_channels=3, width=8, classes=10):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, padding=1)
        self.conv2 = nn.Conv2d(w, w, 3, padding=1)
        self.conv3 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.conv4 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False)
        self.conv5 = nn.Conv2d(2 * w, 2 * w, 3, padding=1)
        self.shifts = nn.ParameterList(
            [nn.Parameter(0.1 * torch.randn(c, 1, 1)) for c in (w, w, 2 * w, 2 * w)]
        )
        self.classifier = nn.Linear(2 * w, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x)) + self.shifts[0]
        x = F.relu(self.conv2(x)) + self.shifts[1]
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv3(x)) + self.shifts[2]
        x = F.relu(self.conv4(x)) + self.shifts[3]
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv5(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _Block(nn.Module):
    """Pre-activation-free residual block: ``relu(conv2(relu(conv1(x)))) + shortcut(x)``.

    One site (conv2 -> relu -> add), fused. With ``stride == 2`` the shortcut is a strided
    1x1 conv (its output has the same shape as conv2's for every input size).
    """

    def __init__(self, channels_in, channels_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, padding=1)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.shortcut = (
            nn.Conv2d(channels_in, channels_out, 1, stride)
            if stride != 1 or channels_in != channels_out
            else nn.Identity()
        )

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        return torch.relu(self.conv2(y)) + self.shortcut(x)


class _BNBlock(nn.Module):
    """The torchvision BasicBlock order, ``relu(bn(conv(x)))``: BatchNorm sits between the
    conv and the relu, so the add has no relu(conv) operand -> not a candidate."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))) + x


class ResNetLike(nn.Module):
    """Stem, four residual blocks (two downsampling), one BatchNorm block, a tapped block.

    Fused: stem (relu(conv) + 0.5, a Python-number `other`) + 4 _Block sites = 5.
    Refused: the tap (its relu output is also read by the final add) = 1.
    The _BNBlock is no candidate.
    """

    expected_fused = 5
    expected_refused = 1

    def __init__(self, in_channels=3, width=8, classes=10):
        super().__init__()
        w = width
        self.stem = nn.Conv2d(in_channels, w, 3, padding=1)
        self.blocks = nn.Sequential(
            _Block(w, w), _Block(w, 2 * w, stride=2), _Block(2 * w, 2 * w),
            _Block(2 * w, 4 * w, stride=2), _BNBlock(4 * w),
        )
        self.tap = nn.Conv2d(4 * w, 4 * w, 1)
        self.fc = nn.Linear(4 * w, classes)

    def forward(self, x):
        x = torch.relu(self.stem(x)) + 0.5
        x = self.blocks(x)
        t = torch.relu(self.tap(x))
        x = (t + x) * t.mean()  # t is read twice: refused
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class UNetLike(nn.Module):
    """Two-level UNet with residual encoder/decoder stages and skip adds.

    Fused: enc1 (+ s), enc2 (+ p1), dec2 (+ skip e2), dec1 (+ skip e1) = 4.
    Refused: gate (its relu output also scales the result) = 1. mid has no add.
    Input height and width must be multiples of 4.
    """

    expected_fused = 4
    expected_refused = 1

    def __init__(self, in_channels=3, width=8, out_channels=2):
        super().__init__()
        w = width
        self.conv_in = nn.Conv2d(in_channels, w, 3, padding=1)
        self.enc1 = nn.Conv2d(w, w, 3, padding=1)
        self.enc2 = nn.Conv2d(w, w, 3, padding=1)
        self.mid = nn.Conv2d(w, w, 3, padding=1)
        self.dec2 = nn.Conv2d(w, w, 3, padding=1)
        self.dec1 = nn.Conv2d(2 * w, w, 3, padding=1)
        self.gate = nn.Conv2d(w, w, 1)
        self.conv_out = nn.Conv2d(w, out_channels, 1)

    def forward(self, x):
        s = self.conv_in(x)
        e1 = torch.relu(self.enc1(s)) + s
        p1 = F.max_pool2d(e1, 2)
        e2 = torch.relu(self.enc2(p1)) + p1
        b = torch.relu(self.mid(F.max_pool2d(e2, 2)))
        d2 = torch.relu(self.dec2(F.interpolate(b, scale_factor=2.0))) + e2
        u1 = F.interpolate(d2, scale_factor=2.0)
        d1 = torch.relu(self.dec1(torch.cat([u1, e1], dim=1))) + e1
        g = torch.relu(self.gate(d1))
        y = (g + d1) * torch.sigmoid(g.mean(dim=(2, 3), keepdim=True))
        return self.conv_out(y)


class GraphBreakNet(nn.Module):
    """Sites around graph breaks (a ``print`` and ``torch._dynamo.graph_break()``).

    Graph 1: site a, fused. Break (print). Graph 2: site b, fused; conv c and its relu,
    then a break before c's add. Graph 3: c's add reads a graph input -> no candidate;
    site d, fused. Fused 3, refused 0, three graphs (the same as with backend="eager").
    """

    expected_fused = 3
    expected_refused = 0
    expected_graphs = 3

    def __init__(self, in_channels=3, width=8):
        super().__init__()
        w = width
        self.a = nn.Conv2d(in_channels, w, 3, padding=1)
        self.b = nn.Conv2d(w, w, 3, padding=1)
        self.c = nn.Conv2d(w, w, 3, padding=1)
        self.d = nn.Conv2d(w, w, 3, padding=1)
        self.bias = nn.Parameter(0.1 * torch.randn(w, 1, 1))
        self.verbose = True

    def forward(self, x):
        x = torch.relu(self.a(x)) + self.bias
        if self.verbose:
            print("GraphBreakNet: after a")
        x = torch.relu(self.b(x)) + x
        r = torch.relu(self.c(x))
        torch._dynamo.graph_break()
        x = r + x
        return torch.relu(self.d(x)) + x


class SmallConvNet(nn.Module):
    """A small trainable classifier with two sites (both fused) for training tests."""

    expected_fused = 2
    expected_refused = 0

    def __init__(self, in_channels=3, width=8, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.shift = nn.Parameter(torch.zeros(width, 1, 1))
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = torch.relu(self.conv1(x)) + self.shift
        x = torch.relu(self.conv2(x)) + x
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# name -> (constructor, input shape); input shapes are small so the CPU suite stays fast.
MODELS = {
    "vgg_like": (VGGLike, (2, 3, 16, 16)),
    "resnet_like": (ResNetLike, (2, 3, 16, 16)),
    "unet_like": (UNetLike, (2, 3, 16, 16)),
    "graph_break": (GraphBreakNet, (2, 3, 12, 12)),
}
