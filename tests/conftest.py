import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smoke_cfg():
    from sslnb.config import Config

    return Config.from_preset("smoke", "byol")
