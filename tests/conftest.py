import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the guest scripts are plain modules (they run under `python3 -S` in the guest)
sys.path.insert(0, str(ROOT / "guest_scripts"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
