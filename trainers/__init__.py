"""The trainer process: `python -m trainers PRESET [k=v ...] --log FILE`. Importing this package does not import torch."""

# CPU threads are chosen at run time from the cores other processes leave free (trainers/threads.py).
