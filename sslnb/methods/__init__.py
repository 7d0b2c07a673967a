"""Self-supervised methods. Each is an ``nn.Module`` with a small step protocol:

- ``n_views``: how many augmented views of each image ``forward`` takes;
- ``forward(views, y, idx) -> (loss, logs)``: ``views`` is a list of (B, 3, H, W) tensors, ``y`` (B,)
  labels (only the supervised reference may use them), ``idx`` (B,) dataset indices;
- ``after_step(progress)``: state changes after the optimiser step (EMA target, memory bank), under
  ``torch.no_grad``; ``progress`` is the fraction of training done;
- ``trainable_parameters()``: what the optimiser updates (parameters or parameter groups; a group's
  ``lr_mult`` scales the learning rate);
- ``backbone``: the network that is evaluated (kNN, linear probe, t-SNE), and ``embed(x) -> (h, z)``.
"""

from __future__ import annotations

from ..config import Config


def build_method(cfg: Config, num_classes: int, num_train: int):
    """The method module for ``cfg``; ``num_train`` sizes InsDis's memory bank."""
    if cfg.method == "byol":
        from .byol import BYOL
        return BYOL(cfg)
    if cfg.method == "simclr":
        from .simclr import SimCLR
        return SimCLR(cfg)
    if cfg.method == "insdis":
        from .insdis import InsDis
        return InsDis(cfg, num_train)
    if cfg.method == "supervised":
        from .supervised import Supervised
        return Supervised(cfg, num_classes)
    raise ValueError(f"method={cfg.method!r} is not implemented")
