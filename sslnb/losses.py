"""Loss functions as pure functions of tensors. Each normalises its inputs itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss for one direction, averaged over the batch.

    ``p`` (B, D): the online prediction; ``z`` (B, D): the target projection (no gradient should reach
    it; the caller detaches it). Both are l2-normalised here, then
    ``||p - z||^2 = 2 - 2 cos(p, z)`` per sample, in [0, 4]. The seed (and Grill et al., 2020, eq. 2)
    sum this over the two view orderings, so the symmetric loss lies in [0, 8].

    The seed's ``l2_normalize`` had no epsilon, so a collapsed all-zero feature gave NaN; here
    ``F.normalize`` uses eps=1e-12 and a zero vector maps to zero (loss 2).
    """
    p = F.normalize(p, dim=-1)
    z = F.normalize(z, dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Supervised reference: mean cross-entropy. ``logits`` (B, C), ``y`` (B,) class indices."""
    return F.cross_entropy(logits, y)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (Chen et al., 2020, eq. 1), the standard form.

    ``z1``, ``z2`` (B, D): projections of two views of the same B images. Every one of the 2B vectors is
    an anchor; its positive is the other view of its image and its 2B - 2 negatives are all other
    vectors, same-view ones included. Cosine similarities are divided by ``temperature``. Returns the
    mean loss over the 2B anchors.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, D)
    n = z1.shape[0]
    sim = z @ z.T / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positives)
