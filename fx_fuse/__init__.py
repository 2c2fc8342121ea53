"""fx_fuse: fuse conv2d -> relu -> add into one CUDA kernel, in any traced PyTorch model.

    torch.compile(model, backend="fx_fuse")   # registered by entry point, no import needed
    gm = fx_fuse.fuse(model)                  # the pass alone, on a module or an FX graph
    print(fx_fuse.explain(model, x))          # what was fused, what was refused, and why
"""

from .explain import explain
from .ops import conv2d_relu_add
from .rewrite import fuse

__version__ = "0.1.0"
__all__ = ["conv2d_relu_add", "explain", "fuse", "__version__"]
