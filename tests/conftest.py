import sys
from pathlib import Path

import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py
