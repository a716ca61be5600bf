"""The trainer process: `python -m trainers PRESET [k=v ...] --log FILE`. Importing this package does not import torch."""

import os as _os

# torch's OpenMP threads spin-wait by default; when the cores are shared (a cockpit UI, other jobs) that
# makes CPU training up to 10x slower. Set before torch is imported; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
