"""fx_fuse: fuse conv2d -> relu -> add into one CUDA kernel, in any traced PyTorch model."""

from .ops import conv2d_relu_add

__version__ = "0.1.0"
__all__ = ["conv2d_relu_add", "__version__"]
