"""Make the package importable from a checkout: the tests run against ``src/`` whether or not
the package is installed (``pip install -e .`` also registers the entry point)."""

from __future__ import annotations

import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
