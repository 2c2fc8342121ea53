"""Train a small conv net under ``torch.compile(backend="fx_fuse")`` beside an identical
eager copy, and check that the losses match step by step.

    python examples/train.py [--steps 5] [--inner inductor|aot_eager|eager] [--device cpu]

The net has two conv -> relu -> add sites (a per-channel shift and a residual); both are
fused, in the forward graph and (through the op's autograd formula) in training.
"""

import argparse
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._dynamo.utils import counters


class Net(nn.Module):
    def __init__(self, width=16, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.shift = nn.Parameter(torch.zeros(width, 1, 1))
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = torch.relu(self.conv1(x)) + self.shift  # site 1: per-channel `other`
        x = torch.relu(self.conv2(x)) + x  # site 2: residual `other`
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--inner", default="inductor", choices=["inductor", "aot_eager", "eager"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    eager_model = Net().to(args.device)
    fused_model = copy.deepcopy(eager_model)
    compiled = torch.compile(fused_model, backend="fx_fuse", options={"inner": args.inner})
    eager_opt = torch.optim.SGD(eager_model.parameters(), lr=0.1, momentum=0.9)
    fused_opt = torch.optim.SGD(fused_model.parameters(), lr=0.1, momentum=0.9)

    # Random data, made here: a fixed batch of images and labels.
    x = torch.randn(8, 3, 16, 16, device=args.device)
    y = torch.randint(0, 10, (8,), device=args.device)

    # fp32 convs on CUDA use TF32 by default (in both runs, but with different kernels).
    tol = dict(rtol=1e-3, atol=1e-3) if args.device == "cuda" else dict(rtol=1e-4, atol=1e-5)
    for step in range(args.steps):
        losses = []
        for model, opt in ((eager_model, eager_opt), (compiled, fused_opt)):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        print(f"step {step}: eager loss {losses[0].item():.6f}  fx_fuse loss {losses[1].item():.6f}")
        torch.testing.assert_close(losses[1], losses[0], **tol)

    for (name, p), q in zip(eager_model.named_parameters(), fused_model.parameters()):
        torch.testing.assert_close(q, p, **tol, msg=lambda m: f"parameter {name}: {m}")
    fused = counters["fx_fuse"]["fused"]
    print(f"fused sites: {fused}; losses and parameters match eager after {args.steps} steps")
    assert fused == 2, f"expected 2 fused sites, got {fused}"


if __name__ == "__main__":
    main()
