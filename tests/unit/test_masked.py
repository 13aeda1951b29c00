"""Masked image modeling (MAE): patchify, masking, sin-cos positions, the loss, and the encoder that
runs the backbone's own ViT on the visible patches. What every method must do is in test_ssl_methods.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from dlbench.pretrain.base import PretrainSetup, load_all
from dlbench.pretrain.masked import (MAE, mae_loss, patchify, random_masking, sincos_2d,
                                     unpatchify)
from dlbench.pretrain.views import ViewConfig, make_view
from dlbench.train.engine import TrainConfig

from .ssl_helpers import TINY_SPEC as RESNET, VIT_SPEC, float_batch, images_uint8, quiet_fit, tiny_backbone

# 4 px patches (an 8 x 8 grid of 48-pixel patches): the hand-checked numbers below rely on them
VIT = {**VIT_SPEC, "kwargs": {**VIT_SPEC["kwargs"], "patch_size": 4}}
METHODS = load_all()
pytestmark = pytest.mark.usefixtures("one_thread")


def make(spec=VIT, params=None, side=32, **kwargs) -> MAE:
    torch.manual_seed(0)
    spec = {**spec, "kwargs": {**spec["kwargs"], **kwargs}}
    setup = PretrainSetup(backbone=tiny_backbone(spec, side), backbone_spec=spec, params=params or {},
                          views=ViewConfig(), input_size=(side, side))
    return MAE(setup)


def images(n=8, seed=0, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_registered_and_requires_vit():
    cls = METHODS.get("mae")
    assert cls is MAE and cls.family == "masked" and cls.requires == "vit"
    with pytest.raises(ValueError, match=r"mae.*ResNet"):
        make(RESNET)
    with pytest.raises(ValueError, match="unknown parameter"):
        make(params={"mask_ration": 0.5})


def test_patchify_roundtrip_and_order():
    x = images(2)
    p = patchify(x, 4)
    assert p.shape == (2, 64, 48)
    assert torch.equal(unpatchify(p, 4, (8, 8)), x)
    # token 1 is the second patch of the first row, pixels row-major, channels last (timm's token order)
    assert torch.equal(p[0, 1].reshape(4, 4, 3), x[0, :, 0:4, 4:8].permute(1, 2, 0))
    assert torch.equal(p[1, 8].reshape(4, 4, 3), x[1, :, 4:8, 0:4].permute(1, 2, 0))
    with pytest.raises(ValueError, match="divisible"):
        patchify(images(1, size=30), 4)


@pytest.mark.parametrize("length,ratio,keep", [(64, 0.75, 16), (64, 0.7, 19), (10, 0.6, 4)])
def test_random_masking(length, ratio, keep):
    n = 6
    tokens = torch.arange(length, dtype=torch.float32).expand(n, length).unsqueeze(-1).clone()
    visible, mask, ids_restore = random_masking(tokens, ratio, torch.Generator().manual_seed(1))
    assert visible.shape == (n, keep, 1)
    assert torch.equal(mask.sum(1), torch.full((n,), float(length - keep)))
    for i in range(n):  # visible tokens are exactly the unmasked positions, each once
        ids = visible[i, :, 0].long()
        assert len(set(ids.tolist())) == keep
        assert torch.equal(mask[i, ids], torch.zeros(keep))
    # ids_restore undoes the shuffle: [visible, placeholders] back to the original order
    filled = torch.cat([visible, torch.full((n, length - keep, 1), -1.0)], dim=1)
    restored = torch.gather(filled, 1, ids_restore.unsqueeze(-1))
    assert torch.equal(restored[..., 0], torch.where(mask.bool(), -1.0, tokens[..., 0]))
    assert len({tuple(m.tolist()) for m in mask}) == n  # every sample its own mask
    again = random_masking(tokens, ratio, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip((visible, mask, ids_restore), again))
    other = random_masking(tokens, ratio, torch.Generator().manual_seed(2))
    assert not torch.equal(mask, other[1])


def test_sincos_2d():
    pe = sincos_2d(16, (3, 5))
    assert pe.shape == (15, 16) and pe.dtype == torch.float32
    # position (0, 0): sin = 0, cos = 1 in both halves
    assert torch.equal(pe[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    # token 1 = (row 0, col 1): first half encodes the column (lowest frequency 1), second the row
    assert math.isclose(pe[1, 0].item(), math.sin(1.0), abs_tol=1e-6)
    assert math.isclose(pe[5, 8].item(), math.sin(1.0), abs_tol=1e-6)  # token 5 = (row 1, col 0)
    assert torch.equal(pe[5, :8], pe[0, :8])
    assert len({tuple(r.tolist()) for r in pe}) == 15


def test_loss_hand_checked():
    pred = torch.zeros(1, 2, 4)
    target = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]]])
    assert mae_loss(pred, target, torch.tensor([[1.0, 0.0]]), False).item() == pytest.approx(7.5)
    assert mae_loss(pred, target, torch.tensor([[0.0, 1.0]]), False).item() == pytest.approx(25.0)
    assert mae_loss(pred, target, torch.tensor([[1.0, 1.0]]), False).item() == pytest.approx(16.25)
    # norm_pix: (x - 2.5) / sqrt(5/3) has mean square 1.25 / (5/3) = 0.75; a constant patch normalises to 0
    assert mae_loss(pred, target, torch.tensor([[1.0, 0.0]]), True).item() == pytest.approx(0.75, rel=1e-5)
    assert mae_loss(pred, target, torch.tensor([[1.0, 1.0]]), True).item() == pytest.approx(0.375, rel=1e-5)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_ignores_visible_patches(norm_pix):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 16, 12, generator=g), torch.randn(4, 16, 12, generator=g)
    _, mask, _ = random_masking(torch.zeros(4, 16, 1), 0.75, g)
    noise = torch.randn(4, 16, 12, generator=g)
    base = mae_loss(pred, target, mask, norm_pix)
    visible_changed = target + noise * (1 - mask).unsqueeze(-1)
    masked_changed = target + noise * mask.unsqueeze(-1)
    assert mae_loss(pred, visible_changed, mask, norm_pix).item() == pytest.approx(base.item(), abs=1e-6)
    assert mae_loss(pred - noise * (1 - mask).unsqueeze(-1), target, mask, norm_pix) == pytest.approx(base.item())
    assert abs(mae_loss(pred, masked_changed, mask, norm_pix).item() - base.item()) > 1e-2


@pytest.mark.parametrize("kwargs", [{}, {"class_token": False, "reg_tokens": 2, "no_embed_class": True,
                                          "global_pool": "avg"},
                                     {"reg_tokens": 1}])
def test_encoder_embedding_matches_timm(kwargs):
    """Patch tokens + prefix tokens, before masking, are exactly what timm's own ``_pos_embed`` builds."""
    m = make(**kwargs)
    bb = m.backbone.net  # the timm ViT inside the Backbone wrapper
    x = m.backbone.normalize(images(2))
    tokens, grid = m._embed_patches(x)
    assert grid == (8, 8)
    ours = torch.cat(m._prefix_tokens(2, tokens.dtype) + [tokens], dim=1)
    assert torch.allclose(ours, bb._pos_embed(bb.patch_embed(x)), atol=1e-6)
    latent, mask, ids_restore, _ = m.forward_encoder(x, torch.Generator().manual_seed(0))
    assert latent.shape == (2, bb.num_prefix_tokens + 16, 48)
    pred = m.decoder(latent, ids_restore, grid)
    assert pred.shape == (2, 64, 48)
    loss, _ = m.training_loss(float_batch(images(2)), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert bb(x).shape == (2, 48)
    assert m.backbone(images(2)).shape == (2, 48)  # the wrapper normalises [0, 1] images itself
    torch.testing.assert_close(m.backbone(images(2)), bb(x))


def test_dynamic_img_size_resamples_positions():
    m = make(dynamic_img_size=True)
    x = images(2, size=48)
    loss, _ = m.training_loss(float_batch(x), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    latent, _, _, grid = m.forward_encoder(m.backbone.normalize(x), torch.Generator().manual_seed(0))
    assert grid == (12, 12) and latent.shape == (2, 1 + 36, 48)


def test_deterministic_and_gradients_reach_backbone():
    m = make()
    x = images()
    loss, stats = m.training_loss(float_batch(x), torch.Generator().manual_seed(3))
    loss2, _ = m.training_loss(float_batch(x), torch.Generator().manual_seed(3))
    assert torch.equal(loss, loss2) and stats == {}
    assert 0.5 < loss.item() < 5.0  # norm_pix targets have unit variance: an untrained decoder is near 1
    loss.backward()
    bb = m.backbone.net
    for name, p in [("patch_embed", bb.patch_embed.proj.weight), ("cls_token", bb.cls_token),
                    ("pos_embed", bb.pos_embed), ("norm", bb.norm.weight), ("mask_token", m.decoder.mask_token)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for i, blk in enumerate(bb.blocks):
        assert blk.attn.qkv.weight.grad.abs().sum() > 0, f"block {i}"
        assert blk.mlp.fc2.weight.grad.abs().sum() > 0, f"block {i}"
    # the decoder belongs to the optimised model; the backbone is the same object as in the setup
    names = dict(m.model.named_parameters())
    assert "decoder.mask_token" in names and m.model["backbone"] is m.setup.backbone


def test_overfits_fixed_batch_and_backbone_still_works():
    m = make()
    g = torch.Generator().manual_seed(0)  # smooth images: masked patches are predictable from their neighbours
    x = F.interpolate(torch.rand(8, 3, 4, 4, generator=g), size=32, mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(0)
    _, mask, target = m.reconstruct(make_view(x, m.view_cfg, gen), gen)  # what training_loss sees at seed 0
    predict_zero = mae_loss(torch.zeros_like(target), target, mask, True).item()  # the patch-mean guess
    assert predict_zero == pytest.approx(47 / 48, abs=1e-3)  # unbiased variance over 48 pixels
    opt = torch.optim.Adam(m.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = m.training_loss(float_batch(x), torch.Generator().manual_seed(0))  # same view and mask each step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.35 * losses[0], losses
    assert losses[-1] < 0.8 * predict_zero, losses  # learnt structure, not just the mean
    m.model.eval()
    with torch.no_grad():
        feats = m.setup.backbone(x)  # [0, 1] images: the backbone normalises them itself
    assert feats.shape == (8, 48) and torch.isfinite(feats).all()


def test_fit_one_epoch():
    m = make()
    before = m.backbone.net.patch_embed.proj.weight.detach().clone()
    data = torch.randint(0, 256, (32, 32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    cfg = TrainConfig(epochs=1, batch_size=8, optimizer="adamw", lr=1e-3, checkpoint_min_seconds=0)
    hist = quiet_fit(m, data, cfg)
    assert len(hist) == 1 and math.isfinite(hist[0]["train_loss"]) and hist[0]["train_loss"] > 0
    assert not torch.equal(before, m.backbone.net.patch_embed.proj.weight)


def test_images_of_another_size_are_resampled_to_the_fixed_vit_size():
    """The encoder feeds ``patch_embed`` directly, so MAE resamples like ``Backbone.forward`` does
    (before the fix, 16 px images failed in timm's strict PatchEmbed)."""
    m = make(side=16)
    assert m.backbone.fixed_size and m.backbone.input_size == (32, 32)
    seen = []
    m.backbone.net.patch_embed.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape)))
    small = images(4, size=16)
    loss, _ = m.training_loss(float_batch(small), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and seen == [(4, 3, 32, 32)]
    pred, mask, target = m.reconstruct(small, torch.Generator().manual_seed(0))
    assert pred.shape == target.shape == (4, 64, 48) and mask.shape == (4, 64)
    resized = F.interpolate(small, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(target, patchify(m.backbone.normalize(resized), 4))
    hist = quiet_fit(m, images_uint8(16, size=16), TrainConfig(epochs=1, batch_size=8, optimizer="adamw", lr=1e-3))
    assert math.isfinite(hist[0]["train_loss"])
