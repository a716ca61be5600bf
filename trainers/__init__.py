"""The trainer process: `python -m trainers PRESET [k=v ...] --log FILE`. Importing this package does not import torch."""
