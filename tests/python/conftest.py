"""pytest configuration for the analysis tests: put the repository root on sys.path so that
`import analysis` works from any working directory."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
