"""Self-supervised objectives shared by the pretraining methods.

Pure functions with no module state, so the math can be tested by hand and against
`lightly` (tests/unit/test_ssl_losses.py) independently of any model. Every function casts its
inputs with `.float()` first: the engine runs forward passes under bf16 autocast on CUDA, and
softmax / normalisation / logit products must be done in float32. Definitions follow the papers'
official code (SimCLR, MoCo, SimSiam, BYOL, Barlow Twins, VICReg, SwAV, DINO); each docstring
names the reference and any convention that matters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "nt_xent",
    "info_nce_queue",
    "neg_cosine",
    "byol_loss",
    "barlow_twins_loss",
    "vicreg_loss",
    "sinkhorn",
    "swav_loss",
    "dino_loss",
    "dino_center_update",
]


def _off_diagonal(m: Tensor) -> Tensor:
    """Flattened off-diagonal entries of a square matrix (as in the Barlow Twins / VICReg code)."""
    n, k = m.shape
    assert n == k, m.shape
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's NT-Xent: each of the 2N views must pick its partner among the other 2N-1.

    z1[i] and z2[i] are the two views of image i; embeddings are L2-normalised here. The
    loss is the cross-entropy averaged over all 2N anchors (same as lightly's NTXentLoss
    without memory bank).
    """
    z1, z2 = z1.float(), z2.float()
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(n, device=z.device)
    targets = torch.cat([idx + n, idx])
    return F.cross_entropy(logits, targets)


def info_nce_queue(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo's InfoNCE: positive logit q.k against negatives q.queue^T, target index 0.

    q, k (N x D) are normalised here and k is detached (it comes from the momentum encoder);
    queue (K x D) holds already-normalised keys of earlier batches and gets no gradient.
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float().detach(), dim=1)
    queue = queue.float().detach()
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.T
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, targets)


def neg_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's D(p, z) = -mean_i cos(p_i, stopgrad(z_i)); the stop-gradient prevents collapse."""
    return -F.cosine_similarity(p.float(), z.float().detach(), dim=-1).mean()


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, stopgrad(z)), averaged over the batch."""
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.float().detach(), dim=-1)
    return (2.0 - 2.0 * (p * z).sum(dim=-1)).mean()


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_offdiag: float = 5e-3) -> Tensor:
    """Barlow Twins: drive the cross-correlation of the two views' embeddings to the identity.

    Each dimension is standardised over the batch exactly as the official code does with
    BatchNorm1d(affine=False) in training mode (biased variance, eps=1e-5); then
    c = z1n^T z2n / N and loss = sum_i (1 - c_ii)^2 + lambda * sum_{i != j} c_ij^2.
    """
    z1, z2 = z1.float(), z2.float()
    n = z1.shape[0]
    z1n = F.batch_norm(z1, None, None, training=True, eps=1e-5)
    z2n = F.batch_norm(z2, None, None, training=True, eps=1e-5)
    c = z1n.T @ z2n / n
    on_diag = (torch.diagonal(c) - 1.0).pow(2).sum()
    off_diag = _off_diagonal(c).pow(2).sum()
    return on_diag + lambda_offdiag * off_diag


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """VICReg (official facebookresearch/vicreg code).

    invariance = MSE(z1, z2) (mean over N*D entries);
    variance = mean_d relu(1 - sqrt(var_d + eps)) averaged over the two branches (unbiased var);
    covariance = sum over both branches of sum_{i != j} cov_ij^2 / D, with cov = Xc^T Xc / (N-1).
    Returns the weighted total and the unweighted terms.
    """
    z1, z2 = z1.float(), z2.float()
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    x = z1 - z1.mean(dim=0)
    y = z2 - z2.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + eps)
    std_y = torch.sqrt(y.var(dim=0) + eps)
    variance = F.relu(1.0 - std_x).mean() / 2 + F.relu(1.0 - std_y).mean() / 2
    cov_x = x.T @ x / (n - 1)
    cov_y = y.T @ y / (n - 1)
    covariance = _off_diagonal(cov_x).pow(2).sum() / d + _off_diagonal(cov_y).pow(2).sum() / d
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return loss, {"invariance": invariance, "variance": variance, "covariance": covariance}


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """SwAV's Sinkhorn-Knopp: soft codes Q (N x K) with rows summing to 1 and, at convergence,
    each prototype receiving N/K of the mass (equal partition), so codes cannot collapse.

    Follows `distributed_sinkhorn` of the official code (single process). The global max is
    subtracted before exp for overflow safety; a global constant cancels in the first
    normalisation, so the result is unchanged.
    """
    s = scores.detach().float() / epsilon
    q = torch.exp(s - s.max()).T  # K x N
    k, n = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)  # each prototype gets total mass 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # each sample gets total mass 1/N
        q /= n
    q *= n  # rows of the returned N x K matrix sum to 1
    return q.T


def swav_loss(
    scores: list[Tensor],
    n_global: int = 2,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 3,
) -> Tensor:
    """SwAV swapped prediction: codes of each global view (Sinkhorn, no grad) are predicted by
    softmax(scores / temperature) of every other view (global and local).

    As in the official code: for each code view the cross-entropies with the other views are
    summed and divided by (n_views - 1), then averaged over the n_global code views.
    """
    n_views = len(scores)
    assert 1 <= n_global <= n_views and n_views >= 2, (n_global, n_views)
    log_p = [F.log_softmax(s.float() / temperature, dim=1) for s in scores]
    loss = scores[0].new_zeros((), dtype=torch.float32)
    for i in range(n_global):
        q = sinkhorn(scores[i], epsilon=epsilon, iterations=iterations)
        sub = scores[0].new_zeros((), dtype=torch.float32)
        for v in range(n_views):
            if v != i:
                sub = sub - (q * log_p[v]).sum(dim=1).mean()
        loss = loss + sub / (n_views - 1)
    return loss / n_global


def dino_loss(
    student: list[Tensor],
    teacher: list[Tensor],
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """DINO: cross-entropy between the centred, sharpened teacher distribution of each global view
    and the student distribution of every other view (official DINOLoss.forward).

    teacher[i] (i < n_global) is the teacher head output of global view i; student[v] covers all
    views with the same order for the global ones, so pairs with v == i are skipped. Terms are
    batch means, averaged over the number of (i, v) pairs. The center is not updated here (see
    `dino_center_update`).
    """
    center = center.float().detach()
    t_probs = [F.softmax((t.float().detach() - center) / teacher_temp, dim=-1) for t in teacher]
    s_logp = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    total = student[0].new_zeros((), dtype=torch.float32)
    n_terms = 0
    for i, q in enumerate(t_probs):
        for v, lp in enumerate(s_logp):
            if v == i:
                continue
            total = total + (-(q * lp).sum(dim=-1)).mean()
            n_terms += 1
    assert n_terms > 0, "DINO needs at least two views"
    return total / n_terms


@torch.no_grad()
def dino_center_update(center: Tensor, teacher_out: Tensor, momentum: float = 0.9) -> Tensor:
    """New DINO center: EMA of the batch mean of the teacher outputs (all global views concatenated,
    M x K), center * momentum + mean * (1 - momentum); keeps `center`'s shape (K or 1 x K)."""
    batch_center = teacher_out.detach().float().mean(dim=0).reshape(center.shape)
    return center.float() * momentum + batch_center * (1.0 - momentum)
