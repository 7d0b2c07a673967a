"""The step protocol every method follows, with its defaults (see :mod:`sslnb.methods`)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config, register_method

# Every method class by its name (the registry of sslnb.config.METHODS, with the classes).
CLASSES: dict[str, type["Method"]] = {}


class Method(nn.Module):
    """A self-supervised method (or the supervised reference) as the trainer and the evaluation see it.

    Subclasses set ``n_views`` and ``forwards`` and define ``outputs``, ``objective`` and ``embed``; the
    rest has defaults that do nothing method-specific. A step is ``objective(outputs(views), y, idx)``:
    ``outputs`` holds every network call and returns (B, features) tensors (or lists of them), and
    ``objective`` turns them into the loss with no network call, so that a grid of runs
    (:mod:`sslnb.grid`) can run ``outputs`` once on its batched network and ``objective`` per run.
    """

    # What the rest of the house asks of a method. A subclass that sets ``name`` registers itself
    # (``__init_subclass__``): sslnb.config then accepts ``method=name`` and its presets, run directories
    # are named by ``run_tag``, and the grid, the book's scheduling and the tests find it.
    name: str = ""  # the value of ``Config.method``
    # settings in which this method's runs differ from a preset's shared ones, per preset
    presets: dict[str, dict] = {}
    labelled: bool = False  # trained with labels: a reference for the self-supervised methods, not one of them
    n_views: int = 1  # augmented views of each image that ``forward`` takes
    forwards: int = 1  # network passes per image per step (a rough relative cost, for scheduling)
    # What ``after_step`` changes: "network" (the network's own parameters, e.g. BYOL's EMA target: a grid
    # runs it once on its batched network) or "run" (state outside the network, e.g. the InsDis memory
    # bank: a grid runs it on each run).
    after_step_on: str = "network"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            register_method(cls.name, cls.presets, cls.run_tag)
            CLASSES[cls.name] = cls

    @classmethod
    def run_tag(cls, cfg: Config) -> list[str]:
        """What a run's directory name says after method and dataset (``rundir.run_name``): the settings
        that tell this method's runs apart at a glance. None by default."""
        return []

    @classmethod
    def grid_refusal(cls, cfg: Config) -> str | None:
        """Why runs of ``cfg`` cannot share a grid's batched network (:mod:`sslnb.grid`), or None if they
        can. A grid needs ``outputs``/``objective`` split as described above, with no state per run
        inside ``outputs``."""
        return None

    @classmethod
    def build(cls, cfg, num_classes: int, num_train: int) -> "Method":
        """The method for ``cfg`` on a dataset of ``num_classes`` classes and ``num_train`` images."""
        return cls(cfg)

    def forward(self, views: list[torch.Tensor], y: torch.Tensor | None = None, idx: torch.Tensor | None = None):
        """One step's loss: views (B, 3, H, W) each, labels y (B,), dataset indices idx (B,) ->
        ``(loss, logs)``, logs being 0-d tensors by name."""
        return self.objective(self.outputs(views), y, idx)

    def forward_views(self, net: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """The head's output z (B, d) of each view (B, 3, H, W) through ``net`` (an ``Encoder``): each view
        its own BatchNorm batch, as the seed's separate forwards, or both views in one when
        ``cfg.view_bn`` is ``"joint"``."""
        if self.cfg.view_bn == "joint":
            return list(net(torch.cat(views))[1].chunk(len(views)))
        return [net(v)[1] for v in views]

    def outputs(self, views: list[torch.Tensor]) -> dict:
        """Every network call of a step: a dict of (B, features) tensors or lists of them."""
        raise NotImplementedError

    def objective(self, out: dict, y=None, idx=None) -> tuple[torch.Tensor, dict]:
        """The loss and logs from ``outputs``' dict, with no network call."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) -> h (B, D) last-conv feature, z (B, d) the head's output ("FC")."""
        raise NotImplementedError

    def trainable_parameters(self):
        """What the optimiser updates: parameters, or groups whose ``lr_mult`` scales the learning rate."""
        return list(self.parameters())

    @torch.no_grad()
    def after_step(self, progress: float, members: list["Method"] | None = None) -> None:
        """State changes after the optimiser step (EMA target, memory bank); ``progress`` in [0, 1].
        ``members``: on a grid's batched network, the runs' own methods, for the settings each run keeps
        for itself (BYOL's EMA rate)."""

    def knn_banks(self) -> dict[str, torch.Tensor]:
        """Extra train-side features (N_train, d) that the test projections z are kNN-matched against
        every epoch, by record name (InsDis: the seed's memory-bank monitor). None by default."""
        return {}

    def predict(self, h: torch.Tensor) -> torch.Tensor | None:
        """Class logits (B, classes) from backbone features h (B, D), for methods trained with labels."""
        return None
