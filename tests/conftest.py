import sys
from pathlib import Path

# The scripts and `core` live at the repository root; make them importable from tests.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
