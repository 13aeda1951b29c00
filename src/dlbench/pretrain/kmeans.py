"""k-means with k-means++ seeding and faiss-style empty-cluster repair, and PCA whitening (DeepCluster).

Both run in float on the CPU from an explicit generator, so a clustering is reproducible and a
resumed DeepCluster run recomputes exactly the clustering an uninterrupted one computed.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def pca_whiten(x: torch.Tensor, dim: int, eps: float = 1e-5) -> torch.Tensor:
    """Project centred rows onto the top ``dim`` principal axes, each scaled to unit variance.

    ``eps`` (relative to the largest eigenvalue) keeps near-degenerate axes of a random
    network from being blown up. Computed in float64 on CPU (deterministic).
    """
    x = x.double().cpu()
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / max(1, x.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    dim = min(dim, x.shape[1])
    evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]
    evals = evals.clamp(min=0) + eps * float(evals[0].clamp(min=1e-12))
    return (x @ evecs / evals.sqrt()).float()


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return ((x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)).clamp_(min=0)


def _assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid and squared distance of every row, ``chunk`` rows at a time."""
    labels, dists = [], []
    for i in range(0, x.shape[0], chunk):
        d = _sq_dists(x[i:i + chunk], centroids)
        m = d.min(1)
        labels.append(m.indices)
        dists.append(m.values)
    return torch.cat(labels), torch.cat(dists)


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, gen: torch.Generator, iterations: int = 20,
           chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding; all randomness from ``gen`` (CPU, deterministic).

    Empty clusters are repaired as faiss (and so DeepCluster) does: a non-empty cluster,
    drawn with probability proportional to its size, is split in two by perturbing its
    centroid by +-1/1024 in alternate dimensions. Returns (centroids K x D, labels N).
    """
    x = x.float().cpu()
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means: need 1 <= k <= number of points, got k={k}, n={n}")
    # k-means++: each new centroid drawn with probability proportional to D^2
    centroids = torch.empty(k, x.shape[1])
    centroids[0] = x[torch.randint(n, (1,), generator=gen)]
    closest = _sq_dists(x, centroids[:1]).squeeze(1)
    for j in range(1, k):
        weights = closest if float(closest.sum()) > 0 else torch.ones(n)
        idx = torch.multinomial(weights, 1, generator=gen)
        centroids[j] = x[idx]
        closest = torch.minimum(closest, _sq_dists(x, centroids[j:j + 1]).squeeze(1))
    labels = _assign(x, centroids, chunk)[0]
    sign = torch.where(torch.arange(x.shape[1]) % 2 == 0, 1.0, -1.0) / 1024
    for _ in range(iterations):
        counts = torch.bincount(labels, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None]
        for j in torch.nonzero(~nonempty).flatten().tolist():
            splittable = counts * (counts > 1)
            if float(splittable.sum()) == 0:
                break
            big = int(torch.multinomial(splittable, 1, generator=gen))
            centroids[j] = centroids[big] * (1 + sign)
            centroids[big] = centroids[big] * (1 - sign)
            counts[j] = counts[big] = counts[big] / 2
        new_labels = _assign(x, centroids, chunk)[0]
        if torch.equal(new_labels, labels) and bool(nonempty.all()):
            break
        labels = new_labels
    return centroids, labels


