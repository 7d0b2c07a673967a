"""Self-supervised methods. Each is a :class:`~sslnb.methods.base.Method` with a small step protocol:

- ``n_views``: how many augmented views of each image ``forward`` takes;
- ``forward(views, y, idx) -> (loss, logs)``: ``views`` is a list of (B, 3, H, W) tensors, ``y`` (B,)
  labels (only the supervised reference may use them), ``idx`` (B,) dataset indices;
- ``after_step(progress)``: state changes after the optimiser step (EMA target, memory bank), under
  ``torch.no_grad``; ``progress`` is the fraction of training done;
- ``trainable_parameters()``: what the optimiser updates (parameters or parameter groups; a group's
  ``lr_mult`` scales the learning rate);
- ``backbone``: the network that is evaluated (kNN, linear probe, t-SNE), and ``embed(x) -> (h, z)``;
- ``knn_banks()`` and ``predict(h)``: what the evaluation measures beyond the common metrics.
"""

from __future__ import annotations

from ..config import METHODS, Config
from .base import Method
from .byol import BYOL
from .insdis import InsDis
from .simclr import SimCLR
from .supervised import Supervised

# Each name of sslnb.config.METHODS (the one list) to its class.
CLASSES: dict[str, type[Method]] = {"byol": BYOL, "simclr": SimCLR, "insdis": InsDis, "supervised": Supervised}
assert set(CLASSES) == set(METHODS), "sslnb.config.METHODS and sslnb.methods.CLASSES must name the same methods"


def build_method(cfg: Config, num_classes: int, num_train: int) -> Method:
    """The method module for ``cfg``; ``num_train`` sizes InsDis's memory bank."""
    return CLASSES[cfg.method].build(cfg, num_classes, num_train)
