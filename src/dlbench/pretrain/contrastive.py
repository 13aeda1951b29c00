"""Contrastive and clustering methods: SimCLR, MoCo v2, SwAV, DeepCluster.

All four learn by telling images apart (instance discrimination against negatives, or
assignment to clusters/prototypes). Losses come from ``dlbench.pretrain.losses``; this
module owns the heads, the views and the state (queues, prototypes, pseudo-labels).
Also home of the helpers the distillation family shares: the momentum teacher, multi-crop
views and the step counter buffer.

Defaults are scaled from the papers (ImageNet, 224 px, batch 256-4096, 200-800 epochs)
to 32 px images, ~8000 unlabeled images and a few CPU epochs; each class says what.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.data.augment import normalize, to_float
from dlbench.pretrain import losses
from dlbench.pretrain.base import PretrainMethod, PretrainSetup, ema_update, mlp, register_method
from dlbench.pretrain.views import ViewConfig, make_view, make_views

Stats = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- shared helpers


class MomentumTeacher(nn.Module):
    """A frozen copy of (backbone, head) that follows the online network by EMA.

    Shared by MoCo v2 (key encoder), BYOL (target) and DINO (teacher). It never receives
    gradients (``requires_grad_(False)``, so the engine's optimiser skips it) and its forward
    runs under ``no_grad``. It stays in the mode the engine sets (train: batch-norm uses batch
    statistics, as in all three papers); its BN running statistics are copied from the online
    network at each update by ``ema_update``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.head = copy.deepcopy(head)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Head output for float images in [0, 1] (normalised here, like ``PretrainMethod.encode``)."""
        return self.head(self.backbone(normalize(x01)))

    @torch.no_grad()
    def update(self, backbone: nn.Module, head: nn.Module, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * online."""
        ema_update(self.backbone, backbone, momentum)
        ema_update(self.head, head, momentum)


class StepCounter(nn.Module):
    """Optimiser steps done so far, as a buffer: schedules (prototype freezing, DINO's
    teacher temperature) survive a checkpoint/resume without relying on Python state."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def value(self) -> int:
        return int(self.steps)

    def set(self, steps: int) -> None:
        self.steps.fill_(steps)


def local_crop_size(backbone: nn.Module, input_side: int, requested: int | None) -> int:
    """Side of multi-crop local views: ``requested``, else half the input (paper 96/224 ~ 0.43).

    A Vision Transformer with a fixed position-embedding grid (timm's default,
    ``dynamic_img_size=False``) cannot take smaller inputs, so its local views keep the small
    crop *area* but are resampled to the full input side.
    """
    if getattr(backbone, "patch_embed", None) is not None and not getattr(backbone, "dynamic_img_size", False):
        return input_side
    return int(requested) if requested else max(8, input_side // 2)


def multicrop_config(setup: PretrainSetup, backbone: nn.Module, local_crops: int,
                     local_size: int | None) -> ViewConfig:
    """The run's ViewConfig with the method's multi-crop settings applied."""
    side = setup.views.size or setup.input_size[0]
    return setup.views.with_(local_crops=int(local_crops),
                             local_size=local_crop_size(backbone, side, local_size))


def encode_views(encode: Any, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run ``encode`` once per run of consecutive same-size views (as DINO's MultiCropWrapper).

    Views of one resolution share one forward pass, so batch norm sees them together.
    """
    out: list[torch.Tensor] = []
    i = 0
    while i < len(views):
        j = i
        while j < len(views) and views[j].shape[-2:] == views[i].shape[-2:]:
            j += 1
        feats = encode(torch.cat(views[i:j]))
        out += list(feats.chunk(j - i))
        i = j
    return out


def _count_stat(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(float(value), device=like.device)


# --------------------------------------------------------------------------- SimCLR


@register_method("simclr", family="contrastive")
class SimCLR(PretrainMethod):
    """SimCLR (Chen et al. 2020): two views, MLP projector, NT-Xent over the 2N views.

    Scaled: projector hidden 512 (paper 2048 on ResNet-50), output 128 as in the paper;
    temperature 0.5 (the paper's CIFAR-10 value; 0.1 for ImageNet with batch 4096). Both
    views go through the backbone in one forward, so batch norm normalises over all 2N
    images like the paper's global BN.
    """

    defaults: ClassVar[dict[str, Any]] = {"proj_hidden": 512, "proj_dim": 128, "temperature": 0.5}

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        p = self.params
        self.projector = mlp(self.feature_dim, p["proj_hidden"], p["proj_dim"])
        self.model["projector"] = self.projector

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor,
                      gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        v1, v2 = make_views(images, self.setup.views, gen)
        z = self.projector(self.encode(torch.cat([v1, v2]))).float()
        z1, z2 = z.chunk(2)
        loss = losses.nt_xent(z1, z2, temperature=self.params["temperature"])
        with torch.no_grad():  # is the other view of each image its nearest neighbour among the 2N-1?
            zn = F.normalize(z, dim=1)
            sim = zn @ zn.T
            sim.fill_diagonal_(-2.0)
            n = z1.shape[0]
            target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
            acc = (sim.argmax(1) == target).float().mean()
        return loss, {"acc": acc}


# --------------------------------------------------------------------------- MoCo v2


@register_method("moco_v2", family="contrastive")
class MoCoV2(PretrainMethod):
    """MoCo v2 (Chen et al. 2020): query encoder vs. a momentum key encoder and a queue of keys.

    The key encoder is a :class:`MomentumTeacher` of backbone + projector, updated in
    ``after_step`` with a constant momentum; the keys of the step are enqueued there too
    (after the loss used the queue, so autograd never sees an in-place change).

    Scaled: momentum 0.99 (paper 0.999, which moves too slowly for a few hundred steps);
    queue 4096 keys (paper 65536 for 1.28M images; 4096 as in the MoCo CIFAR-10 demo): it must
    stay well below the set size (~8000), else a query's own key from the previous epoch is
    mostly still queued as a "negative"; projector hidden 512 (paper 2048) -> 128, with BN in
    the hidden layer (``mlp``; the v2 head has none, v3 and SimCLR have it); temperature 0.2.

    Shuffling BN: the paper's fix for batch norm leaking "which key is the positive"
    (query and its key normalised with statistics of the same sub-batch) needs several BN
    groups. On one device we emulate it without touching the backbone's layers: queries are
    encoded in ``shuffle_bn_splits`` contiguous chunks and keys in chunks of a shuffled order
    (what the MoCo CIFAR demo does with SplitBatchNorm), so a query and its positive key see
    statistics of different subsets. ``shuffle_bn_splits: 1`` turns it off (one BN group).
    """

    defaults: ClassVar[dict[str, Any]] = {"proj_hidden": 512, "proj_dim": 128, "temperature": 0.2,
                                          "queue_size": 4096, "momentum": 0.99, "shuffle_bn_splits": 4}

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        p = self.params
        self.projector = mlp(self.feature_dim, p["proj_hidden"], p["proj_dim"])
        self.key_encoder = MomentumTeacher(self.backbone, self.projector)
        queue_gen = torch.Generator().manual_seed(setup.seed)
        state = nn.Module()
        state.register_buffer("queue", F.normalize(torch.randn(int(p["queue_size"]), int(p["proj_dim"]),
                                                               generator=queue_gen), dim=1))
        state.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.state = state
        self.model["projector"] = self.projector
        self.model["key_encoder"] = self.key_encoder
        self.model["queue"] = state
        self._pending_keys: torch.Tensor | None = None

    def _splits(self, n: int) -> int:
        # every BN group keeps >= 8 images (batch norm on 1-2 images is degenerate)
        return max(1, min(int(self.params["shuffle_bn_splits"]), n // 8))

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor,
                      gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        v_q, v_k = make_views(images, self.setup.views, gen)
        n = images.shape[0]
        splits = self._splits(n)
        q = torch.cat([self.projector(self.encode(c)) for c in v_q.chunk(splits)]).float()
        perm = (torch.randperm(n, generator=gen) if splits > 1 else torch.arange(n)).to(images.device)
        with torch.no_grad():
            k_shuffled = torch.cat([self.key_encoder(c) for c in v_k[perm].chunk(splits)]).float()
            k = torch.empty_like(k_shuffled)
            k[perm] = k_shuffled
        queue = self.state.queue.clone()
        loss = losses.info_nce_queue(q, k, queue, temperature=self.params["temperature"])
        with torch.no_grad():
            qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
            pos = (qn * kn).sum(1)
            acc = (pos > (qn @ queue.float().T).max(1).values).float().mean()
        self._pending_keys = kn.detach()
        return loss, {"acc": acc}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        self.key_encoder.update(self.backbone, self.projector, float(self.params["momentum"]))
        if self._pending_keys is not None:
            self.enqueue(self._pending_keys)
            self._pending_keys = None

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (normalised) at the pointer, wrapping around; the oldest keys go."""
        queue, ptr = self.state.queue, self.state.ptr
        size = queue.shape[0]
        keys = keys[-size:]
        rows = (int(ptr) + torch.arange(keys.shape[0], device=queue.device)) % size
        queue[rows] = keys.to(queue.dtype)
        ptr.fill_((int(ptr) + keys.shape[0]) % size)


# --------------------------------------------------------------------------- SwAV


@register_method("swav", family="contrastive")
class SwAV(PretrainMethod):
    """SwAV (Caron et al. 2020): swapped prediction of Sinkhorn cluster codes across views.

    Projector -> l2-normalised z -> scores against K prototypes (a bias-free Linear whose
    rows are re-normalised to unit length before every step). Codes come from the global
    views only (inside ``losses.swav_loss``); every view predicts the codes of the others.
    The prototypes get no gradient during the first ``freeze_prototypes_steps`` steps
    (None: one epoch, as the paper's 5005 iterations at batch 256), which the paper found
    necessary to start training.

    Scaled: multi-crop 2 x 32 px + 2 x 16 px (paper 2 x 224 + 6 x 96); 100 prototypes (paper
    3000 for ImageNet); projector hidden 512 (paper 2048) -> 128; temperature 0.1, Sinkhorn
    epsilon 0.05 and 3 iterations as in the paper. No queue: the paper adds one when the batch
    (256) is much smaller than K (3000); with K=100 a batch of >= 128 images already lets
    Sinkhorn spread the codes evenly over the prototypes.
    """

    defaults: ClassVar[dict[str, Any]] = {"proj_hidden": 512, "proj_dim": 128, "num_prototypes": 100,
                                          "temperature": 0.1, "epsilon": 0.05, "sinkhorn_iterations": 3,
                                          "freeze_prototypes_steps": None, "local_crops": 2, "local_size": None}

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        p = self.params
        self.projector = mlp(self.feature_dim, p["proj_hidden"], p["proj_dim"])
        self.prototypes = nn.Linear(int(p["proj_dim"]), int(p["num_prototypes"]), bias=False)
        self.counter = StepCounter()
        self.views = multicrop_config(setup, self.backbone, p["local_crops"], p["local_size"])
        freeze = p["freeze_prototypes_steps"]
        self.freeze_steps = int(setup.steps_per_epoch if freeze is None else freeze)
        self.model["projector"] = self.projector
        self.model["prototypes"] = self.prototypes
        self.model["counter"] = self.counter

    @property
    def prototypes_frozen(self) -> bool:
        return self.counter.value < self.freeze_steps

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        w.copy_(F.normalize(w.float(), dim=1).to(w.dtype))

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor,
                      gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        self.normalize_prototypes()
        views = make_views(images, self.views, gen)
        feats = encode_views(self.encode, views)
        weight = self.prototypes.weight.detach() if self.prototypes_frozen else self.prototypes.weight
        scores = [F.linear(F.normalize(self.projector(f).float(), dim=1), weight.float()) for f in feats]
        p = self.params
        loss = losses.swav_loss(scores, n_global=2, temperature=p["temperature"], epsilon=p["epsilon"],
                                iterations=p["sinkhorn_iterations"])
        with torch.no_grad():  # how many prototypes the first global view actually uses
            used = scores[0].argmax(1).unique().numel()
        return loss, {"prototypes_used": _count_stat(used, loss)}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        self.counter.set(step + 1)


# --------------------------------------------------------------------------- DeepCluster


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


@register_method("deepcluster", family="contrastive")
class DeepCluster(PretrainMethod):
    """DeepCluster (Caron et al. 2018): classify images into k-means clusters of their own features.

    At the start of every epoch (``before_epoch``) the backbone embeds ALL unlabeled images
    (eval mode, no augmentation), the features are PCA-whitened to ``pca_dim``,
    l2-normalised and clustered by :func:`kmeans`; the cluster of every image is stored in
    the ``pseudo_labels`` buffer (in ``model``, so checkpoints carry it) and the classifier
    head is re-initialised, as the paper does, since cluster ids are arbitrary between
    epochs. Training classifies one augmented view into its pseudo-label with class-balanced
    weights (each non-empty cluster weighted by 1/size: the same expected loss as the paper's
    uniform sampling over clusters, its guard against one giant cluster). Clusters that stay
    empty after k-means' splitting repair get weight 0.

    ``wants_indices = True``: the engine then passes the dataset row indices of the batch as
    the ``labels`` argument (the images are unlabeled anyway), and ``training_loss`` looks
    up ``pseudo_labels[labels]``. After a resume the engine calls ``before_epoch`` again:
    that recomputes, from the restored weights and the same epoch generator, exactly the
    clustering an uninterrupted run computed at that epoch.

    Scaled: 100 clusters (paper 10000 for 1.28M images; over-segmentation helps, ~80
    images per cluster here), PCA to 32 dims (paper 256 of 4096), 20 Lloyd iterations (faiss'
    default). Not reproduced: the Sobel input filter (an AlexNet/VGG-specific trick) and the
    MLP layers of the classifier (here one linear head on the pooled features). The head's
    optimiser state (momentum/Adam moments) is owned by the engine and is not reset.
    """

    wants_indices: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"num_clusters": 100, "pca_dim": 32, "kmeans_iterations": 20,
                                          "feature_batch": 512}

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        if setup.images is None:
            raise ValueError("deepcluster needs setup.images (the unlabeled set it re-clusters every epoch)")
        k = int(self.params["num_clusters"])
        if not 2 <= k <= len(setup.images):
            raise ValueError(f"deepcluster: num_clusters={k} must be in [2, {len(setup.images)}] "
                             f"(the number of images)")
        self.head = nn.Linear(self.feature_dim, k)
        state = nn.Module()
        state.register_buffer("pseudo_labels", torch.full((len(setup.images),), -1, dtype=torch.long))
        state.register_buffer("weights", torch.zeros(k))
        self.clusters = state
        self.model["head"] = self.head
        self.model["clusters"] = state

    @torch.no_grad()
    def features(self) -> torch.Tensor:
        """Backbone features of every unlabeled image (eval mode, float32, CPU)."""
        images = self.setup.images
        device = next(self.backbone.parameters()).device
        was_training = self.backbone.training
        self.backbone.eval()
        bs = int(self.params["feature_batch"])
        out = [self.encode(to_float(images[i:i + bs], device)).float().cpu() for i in range(0, len(images), bs)]
        self.backbone.train(was_training)
        return torch.cat(out)

    @torch.no_grad()
    def cluster(self, gen: torch.Generator) -> torch.Tensor:
        feats = self.features()
        x = F.normalize(pca_whiten(feats, min(int(self.params["pca_dim"]), len(feats) - 1)), dim=1)
        _, labels = kmeans(x, int(self.params["num_clusters"]), gen, iterations=int(self.params["kmeans_iterations"]))
        return labels

    @torch.no_grad()
    def before_epoch(self, epoch: int, gen: torch.Generator) -> None:
        labels = self.cluster(gen)
        k = int(self.params["num_clusters"])
        counts = torch.bincount(labels, minlength=k).float()
        nonempty = counts > 0
        weights = torch.zeros(k)
        weights[nonempty] = len(labels) / (int(nonempty.sum()) * counts[nonempty])
        self.clusters.pseudo_labels.copy_(labels.to(self.clusters.pseudo_labels.device))
        self.clusters.weights.copy_(weights.to(self.clusters.weights.device))
        self.reset_head(gen)

    @torch.no_grad()
    def reset_head(self, gen: torch.Generator) -> None:
        """nn.Linear's default init (U(+-1/sqrt(fan_in))), drawn from ``gen``."""
        bound = 1 / self.feature_dim ** 0.5
        for p in (self.head.weight, self.head.bias):
            p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen).to(p.device, p.dtype))

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor,
                      gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        if bool((labels < 0).any()):
            raise RuntimeError("deepcluster: labels must be dataset row indices; the engine passes them "
                               "for methods with wants_indices = True")
        targets = self.clusters.pseudo_labels[labels.to(self.clusters.pseudo_labels.device)].to(images.device)
        if bool((targets < 0).any()):
            raise RuntimeError("deepcluster: no pseudo-labels yet; the engine must call before_epoch() first")
        view = make_view(images, self.setup.views, gen)
        logits = self.head(self.encode(view)).float()
        loss = F.cross_entropy(logits, targets, weight=self.clusters.weights.to(logits.device))
        with torch.no_grad():
            acc = (logits.argmax(1) == targets).float().mean()
            nonempty = (self.clusters.weights > 0).sum().float()
        return loss, {"acc": acc, "clusters": nonempty.to(loss.device)}
