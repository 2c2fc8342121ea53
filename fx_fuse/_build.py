"""JIT build of the fused CUDA kernel (``kernels/``) with ``torch.utils.cpp_extension`` and
ninja, on first CUDA use, cached in a directory keyed by a hash of every kernel source, every
flag, the architecture list and the toolchain.

``load()`` returns the compiled extension for the visible GPU (or ``TORCH_CUDA_ARCH_LIST``);
``build(arch_list)`` prebuilds without a GPU (images, CI). The cache lives under
``$FX_FUSE_CACHE_DIR``, else ``$TORCH_EXTENSIONS_DIR/fx_fuse``, else ``~/.cache/fx_fuse``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

OP_NAME = "fx_fuse::conv2d_relu_add"

_SOURCE_SUFFIXES = (".cu", ".cuh", ".cpp", ".h")
_CXX_FLAGS = ["-O3"]
_CUDA_FLAGS = ["-O3", "-lineinfo", "-Xptxas=-v"]
_MIN_ARCH = (8, 0)  # mma.sync bf16 / cp.async

_lock = threading.Lock()
_loaded: Dict[str, object] = {}


def kernels_dir() -> Path:
    """The kernel sources: ``fx_fuse/kernels`` in an installed wheel, else the repository's
    top-level ``kernels/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels", here.parent / "kernels"):
        if (candidate / "binding.cpp").is_file():
            return candidate
    raise RuntimeError(
        f"{OP_NAME}: the CUDA kernel sources are missing (looked in {here / 'kernels'} and "
        f"{here.parent / 'kernels'})"
    )


def _sources(root: Path) -> List[Path]:
    return sorted(p for p in root.iterdir() if p.suffix in _SOURCE_SUFFIXES and p.is_file())


def _parse_arch_list(arch_list: str) -> List[str]:
    """``"8.0;9.0"`` / ``"8.0 9.0+PTX"`` / ``"9.0a"`` -> nvcc ``-gencode`` flags. 9.0 builds
    the sm_90a target (the Hopper-only instructions need it; the cubin runs on every cc 9.0
    GPU). Architectures below 8.0 are skipped: the kernel needs sm_80's mma.sync."""
    flags: List[str] = []
    for item in re.split(r"[;,\s]+", arch_list.strip()):
        if not item:
            continue
        ptx = item.endswith("+PTX")
        item = item[: -len("+PTX")] if ptx else item
        m = re.fullmatch(r"(\d+)\.(\d+)([af]?)", item)
        if m is None:
            raise ValueError(f"{OP_NAME}: cannot read architecture {item!r} in {arch_list!r}")
        major, minor, suffix = int(m.group(1)), int(m.group(2)), m.group(3)
        if (major, minor) < _MIN_ARCH:
            print(
                f"fx_fuse: skipping architecture {item} (the kernel needs sm_80 or newer)",
                file=sys.stderr,
            )
            continue
        if (major, minor) == (9, 0):
            suffix = "a"
        num = f"{major}{minor}{suffix}"
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    if not flags:
        raise ValueError(f"{OP_NAME}: no architecture >= 8.0 in {arch_list!r}")
    return sorted(set(flags))


def default_arch_list() -> str:
    """``TORCH_CUDA_ARCH_LIST`` if set, else the visible GPUs' architectures, else 8.0;9.0."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return env
    import torch

    if torch.cuda.is_available():
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return ";".join(f"{a}.{b}" for a, b in sorted(caps))
    return "8.0;9.0"


def _cuda_home() -> Optional[str]:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


def nvcc_path() -> Optional[Path]:
    home = _cuda_home()
    if home and (Path(home) / "bin" / "nvcc").exists():
        return Path(home) / "bin" / "nvcc"
    return None


def cache_root() -> Path:
    if os.environ.get("FX_FUSE_CACHE_DIR"):
        return Path(os.environ["FX_FUSE_CACHE_DIR"])
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "fx_fuse"
    return Path.home() / ".cache" / "fx_fuse"


def _build_key(sources: List[Path], arch_flags: List[str]) -> str:
    import torch

    h = hashlib.sha256()
    for src in sources:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    for part in (_CXX_FLAGS, _CUDA_FLAGS, arch_flags):
        h.update("\0".join(part).encode())
    h.update(f"{torch.__version__}|{torch.version.cuda}|{sys.version_info[:2]}".encode())
    h.update(str(nvcc_path()).encode())
    return h.hexdigest()[:16]


def build_dir_for(arch_list: str) -> Path:
    """The cache directory of the build for ``arch_list``."""
    sources = _sources(kernels_dir())
    return cache_root() / _build_key(sources, _parse_arch_list(arch_list))


@contextlib.contextmanager
def _output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2, so the compiler's
    output too) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _import(name: str, so: Path):
    spec = importlib.util.spec_from_file_location(name, so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(arch_list: Optional[str] = None, *, verbose: bool = False):
    """Build (or load from the cache) the extension for ``arch_list`` and return it.

    Needs nvcc and a CUDA build of torch, not a GPU. Prints one line when it compiles."""
    import torch
    import torch.utils.cpp_extension as cpp

    arch_list = arch_list or default_arch_list()
    arch_flags = _parse_arch_list(arch_list)
    sources = _sources(kernels_dir())
    key = _build_key(sources, arch_flags)
    name = f"fx_fuse_cuda_{key}"
    with _lock:
        if key in _loaded:
            return _loaded[key]
        build_dir = cache_root() / key
        so = build_dir / f"{name}.so"
        if so.exists() and (build_dir / "ok").exists():
            _loaded[key] = _import(name, so)
            return _loaded[key]
        if torch.version.cuda is None:
            raise RuntimeError(f"{OP_NAME}: building the CUDA kernel needs a CUDA build of torch")
        home = _cuda_home()
        if home is None or nvcc_path() is None:
            raise RuntimeError(
                f"{OP_NAME}: building the CUDA kernel needs nvcc (set CUDA_HOME to the CUDA "
                "toolkit)"
            )
        os.environ["CUDA_HOME"] = home
        cpp.CUDA_HOME = home
        build_dir.mkdir(parents=True, exist_ok=True)
        log = build_dir / "build.log"
        print(
            f"fx_fuse: building the CUDA kernel for {arch_list} in {build_dir} (first use) ...",
            end="",
            file=sys.stderr,
            flush=True,
        )
        start = time.perf_counter()
        try:
            with _output_to(log):
                module = cpp.load(
                    name=name,
                    sources=[str(s) for s in sources if s.suffix in (".cu", ".cpp")],
                    extra_cflags=_CXX_FLAGS,
                    extra_cuda_cflags=_CUDA_FLAGS + arch_flags,
                    extra_include_paths=[str(kernels_dir())],
                    build_directory=str(build_dir),
                    verbose=True,
                )
        except Exception as exc:
            print(" failed", file=sys.stderr, flush=True)
            raise RuntimeError(
                f"{OP_NAME}: building the CUDA kernel failed ({type(exc).__name__}); "
                f"the build log is {log}"
            ) from exc
        print(f" built in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        (build_dir / "ok").write_text(arch_list + "\n")
        _loaded[key] = module
        return module


_default_module = None


def load():
    """The compiled extension for this machine's GPU(s), built on first use. After the
    first call this is a global read: the op calls it on every launch (hashing the sources
    each time cost ~0.9 ms per call)."""
    global _default_module
    if _default_module is None:
        _default_module = build(None)
    return _default_module
