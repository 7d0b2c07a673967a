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


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
            z1_all: torch.Tensor | None = None, z2_all: torch.Tensor | None = None, first: int = 0) -> torch.Tensor:
    """NT-Xent (Chen et al., 2020, eq. 1), the standard form.

    ``z1``, ``z2`` (B, D): projections of two views of the same B images. Every one of the 2B vectors is
    an anchor; its positive is the other view of its image and its 2B - 2 negatives are all other
    vectors, same-view ones included. Cosine similarities are divided by ``temperature``. Returns the
    mean loss over the 2B anchors.

    Across processes, ``z1``, ``z2`` (b, D) are this process's anchors and ``z1_all``, ``z2_all``
    (B, D) every process's projections (``sslnb.dist.gather_with_grad``), in which this process's rows
    start at ``first``; the loss is then the mean over the local 2b anchors, with all 2B - 2 negatives.
    """
    z1_all = z1 if z1_all is None else z1_all
    z2_all = z2 if z2_all is None else z2_all
    b, n = len(z1), len(z1_all)
    anchors = F.normalize(torch.cat([z1, z2]), dim=1)  # (2b, D)
    candidates = F.normalize(torch.cat([z1_all, z2_all]), dim=1)  # (2B, D)
    sim = anchors @ candidates.T / temperature  # (2b, 2B)
    own = torch.arange(first, first + b, device=z1.device)
    self_col = torch.cat([own, n + own])  # each anchor's own column
    is_self = torch.zeros_like(sim, dtype=torch.bool)
    is_self[torch.arange(2 * b, device=z1.device), self_col] = True
    sim = sim.masked_fill(is_self, float("-inf"))
    positives = torch.cat([n + own, own])
    return F.cross_entropy(sim, positives)


def nt_xent_seed(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
                 z1_all: torch.Tensor | None = None, z2_all: torch.Tensor | None = None,
                 first: int = 0) -> torch.Tensor:
    """The seed's SimCLR loss (seed-protocol 3b), which is *not* the standard NT-Xent.

    ``z1``, ``z2`` (B, D) are l2-normalised and ``S = z1 z2^T`` holds the B x B cross-view cosines. The
    logits are ``L = S + S^T - diag(S)``: the diagonal is the positive ``cos(z1_i, z2_i)``, and each
    off-diagonal logit is a *sum* of two cross-view cosines, ``cos(z1_i, z2_j) + cos(z1_j, z2_i)``, in
    [-2, 2]. Returns the cross-entropy of ``L / temperature`` against the diagonal, averaged over the B
    rows: B - 1 negatives per anchor and no same-view negatives (the standard form has 2B - 2).

    Across processes, ``z1``, ``z2`` (b, D) are this process's rows of ``L`` and ``z1_all``, ``z2_all``
    (B, D) every process's projections, in which this process's rows start at ``first``; the result is
    the mean over the local b rows.
    """
    z1_all = z1 if z1_all is None else z1_all
    z2_all = z2 if z2_all is None else z2_all
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    z1_all, z2_all = F.normalize(z1_all, dim=1), F.normalize(z2_all, dim=1)
    b = len(z1)
    rows = torch.arange(b, device=z1.device)
    own = rows + first
    logits = z1 @ z2_all.T + z2 @ z1_all.T  # (b, B): S[i, j] + S[j, i]
    logits = logits.index_put((rows, own), -(z1 * z2).sum(1), accumulate=True)  # diagonal: S[i, i] once
    return F.cross_entropy(logits / temperature, own)


def logit_matrices(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits (before dividing by the temperature) that the two SimCLR losses use, to look at.

    ``z1``, ``z2`` (B, D), normalised here. Returns the standard NT-Xent's (2B, 2B) cosines between all
    views, [z1; z2] against itself, with NaN on the excluded diagonal (row i's positive is column i + B,
    and i - B below), and the seed's (B, B) ``S + S^T - diag(S)`` with ``S = z1 z2^T`` (positives on the
    diagonal; see :func:`nt_xent_seed`).
    """
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    z = torch.cat([z1, z2])
    standard = (z @ z.T).fill_diagonal_(float("nan"))
    s = z1 @ z2.T
    return standard, s + s.T - torch.diag_embed(s.diagonal())


def insdis_softmax(f: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, temperature: float) -> torch.Tensor:
    """Instance discrimination with a full softmax over the memory bank (the seed's ``PointLoss``, 3a).

    ``f`` (B, D): features of one view, l2-normalised here; ``bank`` (N, D): one (lagged) vector per
    training image; ``idx`` (B,): each image's own bank row, the positive. Every bank entry, the
    positive included, is in the denominator:
    ``-log(exp(v_i.f / t) / sum_j exp(v_j.f / t) + 1e-7)``, averaged over the batch (the 1e-7 is the
    seed's). Returns a scalar.
    """
    f = F.normalize(f, dim=1)
    prob = torch.softmax(f @ bank.T / temperature, dim=1)  # (B, N)
    return -(prob.gather(1, idx[:, None]).squeeze(1) + 1e-7).log().mean()


def nce_normaliser(f: torch.Tensor, bank: torch.Tensor, neg_idx: torch.Tensor, temperature: float) -> torch.Tensor:
    """Wu et al. (2018)'s Monte-Carlo estimate of the partition function ``Z = N * E[exp(v.f / t)]``.

    ``neg_idx`` (B, K) are uniformly sampled bank rows. The paper estimates Z once, on the first batch,
    and keeps it fixed; the caller does that.
    """
    f = F.normalize(f, dim=1).detach()
    return (torch.einsum("bd,bkd->bk", f, bank[neg_idx]) / temperature).exp().mean() * len(bank)


def insdis_nce(f: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, neg_idx: torch.Tensor,
               temperature: float, z: float | torch.Tensor) -> torch.Tensor:
    """Instance discrimination with noise-contrastive estimation (Wu et al., 2018, eqs. 3-6).

    ``P(i | f) = exp(v_i.f / t) / Z`` with a fixed normaliser ``z``; noise is uniform, ``P_n = 1 / N``,
    with ``K = neg_idx.shape[1]`` noise samples per image. The loss is
    ``-log h(i, f) - sum_k log(1 - h(j_k, f))`` with ``h(i, f) = P(i|f) / (P(i|f) + K P_n)``, averaged
    over the batch. ``f`` (B, D), ``bank`` (N, D), ``idx`` (B,), ``neg_idx`` (B, K). Returns a scalar.
    """
    f = F.normalize(f, dim=1)
    n, k = len(bank), neg_idx.shape[1]
    rows = torch.cat([idx[:, None], neg_idx], dim=1)  # (B, 1 + K): positive first
    p = (torch.einsum("bd,bkd->bk", f, bank[rows]) / temperature).exp() / z
    noise = k / n  # K * P_n
    log_h_pos = (p[:, 0] / (p[:, 0] + noise + 1e-7)).log()
    log_1m_h_neg = (noise / (p[:, 1:] + noise + 1e-7)).log().sum(1)
    return -(log_h_pos + log_1m_h_neg).mean()
