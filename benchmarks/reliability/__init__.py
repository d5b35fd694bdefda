"""The reliability probe (issue 18), split by class; benchmarks/reliability_probe.py runs it."""

import sys
from pathlib import Path

# The repo root, so the probe reuses tests/helpers.py's data writers instead of a copy.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
