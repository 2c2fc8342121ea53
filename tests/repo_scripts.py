"""The repository's scripts (scripts/, benchmarks/), imported from their files for the tests
of their plain-Python parts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_script(relpath: str) -> ModuleType:
    """The script at ROOT / relpath as a module (named after its file, and in sys.modules
    under that name, as dataclasses need)."""
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module
