"""Contrastive and clustering methods: SimCLR, MoCo v2, SwAV, DeepCluster.

All four learn by telling images apart (instance discrimination against negatives, or
assignment to clusters/prototypes). Losses come from ``dlbench.pretrain.losses``; this
module owns the heads, the views and the state (queues, prototypes, pseudo-labels).
The momentum teacher, step counter and multi-crop helpers it shares with self-distillation
live in ``dlbench.pretrain.components``; k-means in ``dlbench.pretrain.kmeans``.

Defaults are scaled from the papers (ImageNet, 224 px, batch 256-4096, 200-800 epochs)
to 32 px images, ~8000 unlabeled images and a few CPU epochs; each class says what.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.models.inference import embed
from dlbench.pretrain import losses
from dlbench.pretrain.base import PretrainMethod, PretrainSetup, mlp, register_method
from dlbench.pretrain.components import MomentumTeacher, MultiCrop, StepCounter, encode_views, multicrop_config
from dlbench.pretrain.kmeans import kmeans, pca_whiten
from dlbench.pretrain.views import make_view, make_views
from dlbench.train.engine import Batch

Stats = dict[str, torch.Tensor]


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

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        images = batch.images
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

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        images = batch.images
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
class SwAV(MultiCrop, PretrainMethod):
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

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        images = batch.images
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

    The engine's batches carry the dataset row indices of their images, and ``training_loss``
    looks up ``pseudo_labels[batch.indices]``. After a resume the engine calls ``before_epoch`` again:
    that recomputes, from the restored weights and the same epoch generator, exactly the
    clustering an uninterrupted run computed at that epoch.

    Scaled: 100 clusters (paper 10000 for 1.28M images; over-segmentation helps, ~80
    images per cluster here), PCA to 32 dims (paper 256 of 4096), 20 Lloyd iterations (faiss'
    default). Not reproduced: the Sobel input filter (an AlexNet/VGG-specific trick) and the
    MLP layers of the classifier (here one linear head on the pooled features). The head's
    optimiser state (momentum/Adam moments) is owned by the engine and is not reset.
    """

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
        """Backbone features of every unlabeled image (the one batched-inference path: eval mode, float32, CPU)."""
        device = next(self.backbone.parameters()).device
        return embed(self.backbone, self.setup.images, device=device, batch_size=int(self.params["feature_batch"]))

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

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        images = batch.images
        targets = self.clusters.pseudo_labels[batch.indices.to(self.clusters.pseudo_labels.device)].to(images.device)
        if bool((targets < 0).any()):
            raise RuntimeError("deepcluster: no pseudo-labels yet; the engine must call before_epoch() first")
        view = make_view(images, self.setup.views, gen)
        logits = self.head(self.encode(view)).float()
        loss = F.cross_entropy(logits, targets, weight=self.clusters.weights.to(logits.device))
        with torch.no_grad():
            acc = (logits.argmax(1) == targets).float().mean()
            nonempty = (self.clusters.weights > 0).sum().float()
        return loss, {"acc": acc, "clusters": nonempty.to(loss.device)}
