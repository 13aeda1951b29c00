import torch

from dlbench.data.augment import AugmentConfig, augment


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 16, 16, generator=g)


def test_deterministic_given_generator():
    cfg = AugmentConfig(crop_scale=(0.5, 1.0), flip=True, brightness=0.3, contrast=0.3, saturation=0.3)
    a = augment(batch(), cfg, torch.Generator().manual_seed(1))
    b = augment(batch(), cfg, torch.Generator().manual_seed(1))
    c = augment(batch(), cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 3, 16, 16) and a.min() >= 0 and a.max() <= 1


def test_identity_config_is_identity():
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False)
    x = batch()
    assert torch.allclose(augment(x, cfg, torch.Generator().manual_seed(0)), x, atol=1e-5)


def test_full_crop_with_flip_mirrors_exactly():
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=True)
    x = batch()
    out = augment(x, cfg, torch.Generator().manual_seed(3))
    for i in range(len(x)):  # each image is either unchanged or mirrored left-right
        assert torch.allclose(out[i], x[i], atol=1e-5) or torch.allclose(out[i], x[i].flip(-1), atol=1e-5)


def test_crop_zooms_in():
    cfg = AugmentConfig(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), flip=False)
    x = torch.zeros(1, 3, 32, 32)
    x[..., 8:24, 8:24] = 1.0  # central square covering 25% of the area
    out = augment(x, cfg, torch.Generator().manual_seed(0))
    assert out.mean() > x.mean()  # a quarter-area crop magnifies content 2x per side
