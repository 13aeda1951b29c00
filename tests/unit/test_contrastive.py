"""Contrastive family (SimCLR, MoCo v2, SwAV, DeepCluster): losses, state updates.

What every method must do is in test_ssl_methods.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlbench.pretrain.base import PretrainSetup
from dlbench.pretrain.contrastive import DeepCluster, MoCoV2, SwAV
from dlbench.pretrain.kmeans import kmeans, pca_whiten
from dlbench.pretrain.views import ViewConfig, make_views

from .ssl_helpers import (BATCH, N_IMAGES, SMALL_PARAMS as SMALL, TINY_SPEC as SPEC, as_batch, first_batch as batch,
                          loss_of, make, sgd_step, tiny_backbone)

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- SimCLR


def test_simclr_loss_is_nt_xent_of_the_projected_views():
    from dlbench.pretrain.losses import nt_xent

    m = make("simclr")
    b = batch(m)
    loss, _ = m.training_loss(b, torch.Generator().manual_seed(0))
    v1, v2 = make_views(b.images, m.setup.views, torch.Generator().manual_seed(0))
    z1, z2 = m.projector(m.encode(torch.cat([v1, v2]))).chunk(2)
    torch.testing.assert_close(loss, nt_xent(z1, z2, temperature=0.5))


# --------------------------------------------------------------------------- MoCo v2


def test_moco_queue_receives_the_normalised_keys_and_pointer_advances():
    m = make("moco_v2", params={**SMALL["moco_v2"], "shuffle_bn_splits": 1})
    assert isinstance(m, MoCoV2)
    queue0 = m.state.queue.clone()
    torch.testing.assert_close(queue0.norm(dim=1), torch.ones(64))  # seeded random unit keys
    x = batch(m).images
    with torch.no_grad():  # the keys the step must enqueue: the (pre-update) key encoder on view 2
        v_k = make_views(x, m.setup.views, torch.Generator().manual_seed(0))[1]
        expected = F.normalize(m.key_encoder(v_k).float(), dim=1)
    sgd_step(m)
    m.after_step(0, 8)
    assert int(m.state.ptr) == BATCH
    torch.testing.assert_close(m.state.queue[:BATCH], expected)
    assert torch.equal(m.state.queue[BATCH:], queue0[BATCH:])


def test_moco_enqueue_wraps_around():
    m = make("moco_v2", params={**SMALL["moco_v2"], "queue_size": 24})
    a, b = F.normalize(torch.randn(16, 16), dim=1), F.normalize(torch.randn(16, 16), dim=1)
    m.enqueue(a)
    m.enqueue(b)
    assert int(m.state.ptr) == 8
    assert torch.equal(m.state.queue[16:24], b[:8]) and torch.equal(m.state.queue[:8], b[8:])
    assert torch.equal(m.state.queue[8:16], a[8:])


def test_moco_shuffled_bn_chunks_keep_keys_aligned_with_their_images():
    """In eval mode BN is per-sample, so chunked + shuffled keys must equal the plain forward row by row."""
    m = make("moco_v2", params={**SMALL["moco_v2"], "shuffle_bn_splits": 2})
    assert m._splits(BATCH) == 2
    m.model.eval()
    b = batch(m)
    m.training_loss(b, torch.Generator().manual_seed(0))
    x = b.images
    with torch.no_grad():
        v_k = make_views(x, m.setup.views, torch.Generator().manual_seed(0))[1]
        expected = F.normalize(m.key_encoder(v_k).float(), dim=1)
    torch.testing.assert_close(m._pending_keys, expected, atol=1e-5, rtol=1e-5)


def test_moco_key_encoder_follows_the_ema_rule_and_gets_no_gradient():
    m = make("moco_v2")
    key0 = [p.clone() for p in m.key_encoder.parameters()]
    sgd_step(m)
    assert all(not p.requires_grad and p.grad is None for p in m.key_encoder.parameters())
    online = [p.detach().clone() for p in (*m.backbone.parameters(), *m.projector.parameters())]
    m.after_step(0, 8)
    mom = m.params["momentum"]
    assert mom == 0.99
    for t, t0, o in zip(m.key_encoder.parameters(), key0, online, strict=True):
        torch.testing.assert_close(t, mom * t0 + (1 - mom) * o)
    assert not torch.equal(next(m.key_encoder.parameters()), key0[0])


# --------------------------------------------------------------------------- SwAV


def test_swav_prototypes_are_unit_norm_when_used():
    m = make("swav")
    assert isinstance(m, SwAV)
    with torch.no_grad():
        m.prototypes.weight.mul_(3.0)
    loss_of(m)
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(10))


def test_swav_prototypes_frozen_for_the_first_steps():
    m = make("swav", params={**SMALL["swav"], "freeze_prototypes_steps": 2})
    for step in range(3):
        m.model.zero_grad(set_to_none=True)
        loss, _ = loss_of(m)
        loss.backward()
        frozen = m.prototypes.weight.grad is None or not m.prototypes.weight.grad.any()
        assert frozen == (step < 2), step
        assert m.projector[0].weight.grad.abs().sum() > 0
        m.after_step(step, 8)
    assert m.counter.value == 3
    assert make("swav").freeze_steps == 4  # default: one epoch (steps_per_epoch=4)


def test_swav_multicrop_uses_two_global_and_two_small_local_views():
    m = make("swav")
    assert m.views.local_crops == 2 and m.views.local_size == 16
    views = make_views(batch(m).images, m.views, torch.Generator().manual_seed(0))
    assert [v.shape[-1] for v in views] == [32, 32, 16, 16]


# --------------------------------------------------------------------------- DeepCluster


def blobs(k: int = 5, per: int = 40, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, dim, generator=g) * 10
    truth = torch.arange(k).repeat_interleave(per)
    return centers[truth] + 0.1 * torch.randn(k * per, dim, generator=g), truth


def test_kmeans_recovers_well_separated_blobs():
    x, truth = blobs()
    for seed in range(3):
        centroids, labels = kmeans(x, 5, torch.Generator().manual_seed(seed))
        # a bijection between blobs and clusters: purity 1 both ways
        pairs = set(zip(truth.tolist(), labels.tolist()))
        assert len(pairs) == 5 and len({c for _, c in pairs}) == 5
        for c in range(5):
            torch.testing.assert_close(centroids[c], x[labels == c].mean(0))


def test_kmeans_is_deterministic_and_survives_degenerate_data():
    x, _ = blobs(k=6, per=20, dim=4, seed=1)
    a = kmeans(x, 10, torch.Generator().manual_seed(5))[1]
    b = kmeans(x, 10, torch.Generator().manual_seed(5))[1]
    assert torch.equal(a, b)
    dup = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(5, 1)  # 2 distinct points, 3 clusters
    labels = kmeans(dup, 3, torch.Generator().manual_seed(0))[1]
    assert labels.shape == (10,) and 0 <= int(labels.min()) and int(labels.max()) < 3
    with pytest.raises(ValueError):
        kmeans(dup, 11, torch.Generator())


def test_pca_whiten_gives_unit_variance_decorrelated_axes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g) @ torch.randn(6, 6, generator=g) + 3
    w = pca_whiten(x, 4, eps=0.0)
    assert w.shape == (500, 4)
    torch.testing.assert_close(torch.cov(w.T), torch.eye(4), atol=1e-4, rtol=0)


def test_deepcluster_pseudo_labels_buffer_balanced_weights_and_head_reset():
    m = make("deepcluster")  # before_epoch(0) already ran, as the engine runs it before the first step
    assert isinstance(m, DeepCluster)
    labels = m.clusters.pseudo_labels
    assert labels.shape == (N_IMAGES,) and int(labels.min()) >= 0 and int(labels.max()) < 8
    state = m.model.state_dict()
    assert torch.equal(state["clusters.pseudo_labels"], labels)  # checkpoints carry them
    counts = torch.bincount(labels, minlength=8).float()
    w = m.clusters.weights
    assert torch.all(w[counts == 0] == 0)
    prod = (w * counts)[counts > 0]  # class-balanced: every non-empty cluster has the same total weight
    torch.testing.assert_close(prod, torch.full_like(prod, N_IMAGES / int((counts > 0).sum())))
    # a fresh epoch re-clusters and re-initialises the head, both reproducibly from the generator
    with torch.no_grad():
        m.head.weight.fill_(1.0)
    m.before_epoch(1, torch.Generator().manual_seed(9))
    head1, labels1 = m.head.weight.detach().clone(), m.clusters.pseudo_labels.clone()
    assert not torch.all(head1 == 1.0)
    assert float(head1.abs().max()) <= 1 / math.sqrt(m.feature_dim)
    m.before_epoch(1, torch.Generator().manual_seed(9))
    assert torch.equal(m.head.weight, head1) and torch.equal(m.clusters.pseudo_labels, labels1)
    # restored state (what a resume loads) gives the same pseudo-labels
    other = make("deepcluster")
    other.model.load_state_dict(m.model.state_dict())
    assert torch.equal(other.clusters.pseudo_labels, labels1)


def test_deepcluster_trains_on_the_pseudo_labels_of_the_batch_rows():
    """The targets are looked up by ``batch.indices`` (the rows of the images in the training set)."""
    m = make("deepcluster")
    images = m.setup.images
    rows = torch.tensor([5, 40, 7, 63, 0, 22, 31, 12])
    loss, _ = m.training_loss(as_batch(images[rows], rows), torch.Generator().manual_seed(0))
    m.clusters.pseudo_labels.copy_(torch.roll(m.clusters.pseudo_labels, 1))  # other targets -> other loss
    loss2, _ = m.training_loss(as_batch(images[rows], rows), torch.Generator().manual_seed(0))
    assert not torch.equal(loss, loss2)
    # the same images under other row indices are other targets too: the rows, not the pixels, pick them
    m.clusters.pseudo_labels.copy_(torch.arange(N_IMAGES) % 8)
    a, _ = m.training_loss(as_batch(images[rows], rows), torch.Generator().manual_seed(0))
    b, _ = m.training_loss(as_batch(images[rows], (rows + 1) % N_IMAGES), torch.Generator().manual_seed(0))
    assert not torch.equal(a, b)
    fresh = make("deepcluster", prepare=False)  # no before_epoch yet: no pseudo-labels to train on
    with pytest.raises(RuntimeError, match="no pseudo-labels yet"):
        fresh.training_loss(as_batch(images[:4]), torch.Generator())
    with pytest.raises(ValueError, match="needs setup.images"):
        DeepCluster(PretrainSetup(backbone=tiny_backbone(SPEC), backbone_spec=SPEC, params={},
                                  views=ViewConfig(), input_size=(32, 32)))
    with pytest.raises(ValueError, match=r"num_clusters=65 must be in \[2, 64\]"):
        make("deepcluster", params={"num_clusters": 65})


def test_deepcluster_features_are_the_backbones_batched_embedding():
    """The features it clusters come from the one batched-inference path: eval mode, at the backbone's size."""
    from dlbench.models.inference import embed

    m = make("deepcluster", params={**SMALL["deepcluster"], "feature_batch": 24})
    m.model.train()
    feats = m.features()
    assert m.backbone.training  # the mode is restored after embedding
    assert feats.shape == (N_IMAGES, m.feature_dim) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, embed(m.backbone, m.setup.images, batch_size=7))
