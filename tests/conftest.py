import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the guest scripts are plain modules (they run under `python3 -S` in the guest); helpers.py too
sys.path.insert(0, str(HERE.parent / "guest_scripts"))
sys.path.insert(0, str(HERE))
