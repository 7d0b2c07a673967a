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

A method is one file: a module in this folder whose class sets ``name`` (and, where it needs them,
``presets``, ``run_tag`` and ``grid_refusal``) registers itself when the package is imported, which
importing anything of ``sslnb`` does. Nothing else in the house lists the methods.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..config import Config
from .base import CLASSES, Method

for _module in pkgutil.iter_modules(__path__):  # every method module registers its class on import
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["CLASSES", "Method", "build_method"]


def build_method(cfg: Config, num_classes: int, num_train: int) -> Method:
    """The method module for ``cfg``; ``num_train`` sizes InsDis's memory bank."""
    return CLASSES[cfg.method].build(cfg, num_classes, num_train)
