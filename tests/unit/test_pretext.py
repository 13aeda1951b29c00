"""Pretext family (rotation, jigsaw, colorization, inpainting, relative location): inputs and targets
each task builds, its heads and losses. What every method must do is in test_ssl_methods.py."""

import itertools

import pytest
import torch

from dlbench.pretrain import pretext
from dlbench.pretrain.base import PretrainSetup, load_all
from dlbench.pretrain.pretext import (NEIGHBOUR_OFFSETS, chroma_classes, crop_patches, grid_positions,
                                      maximal_hamming_permutations, min_pairwise_hamming, rotate_batch)
from dlbench.pretrain.views import ViewConfig

from .ssl_helpers import TINY_SPEC as TINY, VIT_SPEC, float_batch, tiny_backbone

METHODS = load_all()

NAMES = ["rotation", "jigsaw", "colorization", "inpainting", "relative_location"]
pytestmark = pytest.mark.usefixtures("one_thread")


def make(name, size=32, **params):
    torch.manual_seed(0)
    setup = PretrainSetup(backbone=tiny_backbone(TINY, size), backbone_spec=TINY, params=params,
                          views=ViewConfig(), input_size=(size, size))
    return METHODS.get(name)(setup)


def images(n=8, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def coordinate_image(n, size):
    """Channel 0 = row index, channel 1 = column index, channel 2 = image index."""
    rows = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size)
    cols = torch.arange(size, dtype=torch.float32)[None, :].expand(size, size)
    return torch.stack([torch.stack([rows, cols, torch.full((size, size), float(i))]) for i in range(n)])


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name", NAMES)
def test_registered_finite_loss_and_grad(name):
    cls = METHODS.get(name)
    assert cls.family == "pretext" and cls.name == name and cls.__module__ == pretext.__name__
    m = make(name)
    loss, stats = m.training_loss(float_batch(images()), gen())
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(v.ndim == 0 and not v.requires_grad and torch.isfinite(v) for v in stats.values())
    if name in ("rotation", "jigsaw", "relative_location", "colorization"):
        assert 0.0 <= float(stats["acc"]) <= 1.0
    loss.backward()
    # stem and last stage (timm zero-inits each block's last BN: the residual convs get gradient from step 2)
    bb = m.backbone.net
    for p in (bb.conv1.weight, bb.layer4[0].downsample[0].weight, bb.layer4[0].bn2.weight):
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0
    # every trainable part lives in model (the engine optimises model.parameters())
    assert set(m.model.keys()) >= {"backbone"} and len(m.model) == 2
    with pytest.raises(ValueError, match="unknown parameter"):
        make(name, no_such_param=1)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_bit_identical(name):
    x = images()
    a, _ = make(name).training_loss(float_batch(x), gen(3))
    b, _ = make(name).training_loss(float_batch(x), gen(3))
    c, _ = make(name).training_loss(float_batch(x), gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_overfits_one_batch(name):
    m = make(name)
    x = images(8, seed=1)
    opt = torch.optim.Adam([p for p in m.model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _ = m.training_loss(float_batch(x), gen(7))  # same views and targets each step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses


# --------------------------------------------------------------------------- rotation


def test_rotate_batch_matches_rot90():
    x = images(5, size=16)
    k = torch.tensor([0, 1, 2, 3, 1])
    out = rotate_batch(x, k)
    for i in range(5):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))
    # direction: k=1 is 90 degrees counter-clockwise, the top-left marker goes to the bottom-left
    marker = torch.zeros(1, 3, 8, 8)
    marker[..., 0, 0] = 1
    assert rotate_batch(marker, torch.tensor([1]))[0, :, 7, 0].eq(1).all()
    assert rotate_batch(marker, torch.tensor([2]))[0, :, 7, 7].eq(1).all()
    assert rotate_batch(marker, torch.tensor([3]))[0, :, 0, 7].eq(1).all()


def test_rotation_inputs_and_labels():
    x = images(32)
    inp = make("rotation", augment=False).make_inputs(x, gen(1))
    k = inp["target"]
    assert set(k.tolist()) == {0, 1, 2, 3}
    for i in range(32):
        assert torch.equal(inp["input"][i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))
    inp = make("rotation", augment=False, all_rotations=True).make_inputs(x[:3], gen(1))
    assert inp["input"].shape == (12, 3, 32, 32)
    assert inp["target"].tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert torch.equal(inp["input"][3 * 2 + 1], torch.rot90(x[1], 2, dims=(1, 2)))


# --------------------------------------------------------------------------- jigsaw


def test_permutation_set_properties():
    p = maximal_hamming_permutations(100)
    assert p.shape == (100, 9) and p.dtype == torch.int64
    assert (p.sort(1).values == torch.arange(9)).all()  # every row is a permutation
    assert len({tuple(r) for r in p.tolist()}) == 100  # no duplicates
    assert torch.equal(p, maximal_hamming_permutations(100))  # deterministic, training-seed free
    torch.manual_seed(123)
    assert torch.equal(p, maximal_hamming_permutations(100))
    ours = min_pairwise_hamming(p)
    all_perms = torch.tensor(list(itertools.permutations(range(9))))
    random_min = max(min_pairwise_hamming(all_perms[torch.randperm(len(all_perms), generator=gen(s))[:100]])
                     for s in range(3))
    assert ours >= 6 and ours > random_min
    d = (p[:, None] != p[None]).sum(-1).float()
    assert d.sum() / (100 * 99) > 8.0  # the paper's average distance for its maximal set
    assert min_pairwise_hamming(maximal_hamming_permutations(10, length=4)) >= 2


def assemble(tiles):
    """N x 9 x C x t x t in grid order -> N x C x 3t x 3t."""
    n, _, c, t, _ = tiles.shape
    return tiles.view(n, 3, 3, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(n, c, 3 * t, 3 * t)


def test_jigsaw_tiles_reassemble_and_shuffle():
    x = images(6, size=30)
    m = make("jigsaw", size=30, augment=False, tile_gap=0)
    inp = m.make_inputs(x, gen(2))
    tiles, target = inp["tiles"], inp["target"]
    assert tiles.shape == (6, 9, 3, 10, 10)
    assert torch.equal(assemble(tiles), x)  # identity order = the image
    shuffled = m.shuffle(tiles, target)
    for n in range(6):
        perm = m.perms[target[n]]
        for i in range(9):
            assert torch.equal(shuffled[n, i], tiles[n, perm[i]])
        assert not torch.equal(shuffled[n], tiles[n]) or perm.tolist() == list(range(9))
    inverse = m.perms[target].argsort(1)
    assert torch.equal(assemble(shuffled[torch.arange(6)[:, None], inverse]), x)


def test_jigsaw_tiles_stay_in_their_cells():
    x = coordinate_image(16, 32)
    inp = make("jigsaw", augment=False).make_inputs(x, gen(5))  # tile_gap 1: 9 px tiles in 10 px cells
    tiles = inp["tiles"]
    assert tiles.shape[-1] == 9
    y0, x0 = tiles[:, :, 0, 0, 0], tiles[:, :, 1, 0, 0]
    cell = torch.arange(9)
    # origin in [0, 2] (32 - 30 px of border), jitter in [0, 1]
    assert ((y0 - (cell // 3) * 10).ge(0) & (y0 - (cell // 3) * 10).le(3)).all()
    assert ((x0 - (cell % 3) * 10).ge(0) & (x0 - (cell % 3) * 10).le(3)).all()
    assert torch.equal(tiles[:, :, 0], y0[..., None, None] + torch.arange(9.0)[:, None].expand(9, 9))
    assert torch.equal(tiles[:, :, 2, 0, 0], torch.arange(16.0)[:, None].expand(16, 9))


def test_jigsaw_patch_upsampling_and_tile_normalize():
    m = make("jigsaw", min_patch_size=16, tile_normalize=True)
    seen = []
    m.backbone.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    loss, _ = m.training_loss(float_batch(images(4)), gen())
    assert torch.isfinite(loss) and seen == [torch.Size([36, 3, 16, 16])]
    with pytest.raises(ValueError, match="jigsaw"):
        make("jigsaw", tile_gap=11)


def test_patches_resized_for_fixed_size_vit():
    torch.manual_seed(0)
    setup = PretrainSetup(backbone=tiny_backbone(VIT_SPEC), backbone_spec=VIT_SPEC, params={}, views=ViewConfig(),
                          input_size=(32, 32))
    m = METHODS.get("relative_location")(setup)
    seen = []
    # the 7 px patches reach the Backbone as they are (no min_patch_size upsampling for a fixed-size ViT) ...
    m.backbone.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    # ... which resizes them to the one size its network accepts
    m.backbone.net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    loss, _ = m.training_loss(float_batch(images(4)), gen())
    assert torch.isfinite(loss) and seen == [torch.Size([8, 3, 7, 7]), torch.Size([8, 3, 32, 32])]


# --------------------------------------------------------------------------- relative location


def test_relative_location_offsets():
    x = coordinate_image(64, 32)
    m = make("relative_location", augment=False)
    inp = m.make_inputs(x, gen(3))
    patches, target = inp["patches"], inp["target"]
    p = 32 // 3 - 3
    assert patches.shape == (64, 2, 3, p, p)
    assert set(target.tolist()) == set(range(8))
    top = patches[:, :, 0, 0, 0]
    left = patches[:, :, 1, 0, 0]
    assert torch.equal(top, inp["ys"].float()) and torch.equal(left, inp["xs"].float())
    # patches are contiguous crops of their own image
    assert torch.equal(patches[:, :, 0], top[..., None, None] + torch.arange(float(p))[:, None].expand(p, p))
    assert torch.equal(patches[:, :, 2, 0, 0], torch.arange(64.0)[:, None].expand(64, 2))
    # the centre patch sits in the middle cell
    assert ((top[:, 0] >= 10) & (top[:, 0] <= 14)).all()
    dy, dx = top[:, 1] - top[:, 0], left[:, 1] - left[:, 0]
    offsets = torch.tensor(NEIGHBOUR_OFFSETS, dtype=torch.float32)[target]
    # the offset in cells (10 px) is the label's; the rest is jitter
    assert torch.equal(torch.round(dy / 10), offsets[:, 0]) and torch.equal(torch.round(dx / 10), offsets[:, 1])
    # neighbours one cell (10 px) away +- jitter 1 along a moved axis, at most 1 px along the other
    assert torch.where(offsets[:, 0] != 0, (dy.abs() - 10).abs() <= 1, dy.abs() <= 1).all()
    assert torch.where(offsets[:, 1] != 0, (dx.abs() - 10).abs() <= 1, dx.abs() <= 1).all()
    # gap between patches at least patch_gap - patch_jitter = 2 px
    assert (torch.maximum(dy.abs(), dx.abs()) - p >= 2).all()


def test_relative_location_color_dropping():
    x = images(8)
    plain = make("relative_location", augment=False).make_inputs(x, gen(1))["patches"]
    dropped = make("relative_location", augment=False, color_dropping=True).make_inputs(x, gen(1))["patches"]
    same = (dropped == plain).flatten(3).all(-1)  # N x 2 x C: channel kept as is
    assert same.sum(-1).eq(1).all()
    assert dropped[~same].std(-1).max() < 0.01  # dropped channels are nearly flat noise


def test_grid_positions_and_crop():
    ys, xs, p = grid_positions(4, 32, 32, gap=2, jitter=0, gen=gen())
    assert p == 8 and ys.shape == (4, 9)
    assert torch.equal(ys[:, 3] - ys[:, 0], torch.full((4,), 10))
    assert torch.equal(xs[:, 1] - xs[:, 0], torch.full((4,), 10))
    x = images(4)
    crops = crop_patches(x, ys, xs, p)
    assert torch.equal(crops[2, 5], x[2, :, ys[2, 5]:ys[2, 5] + 8, xs[2, 5]:xs[2, 5] + 8])
    with pytest.raises(ValueError):
        grid_positions(1, 32, 32, gap=2, jitter=3, gen=gen())


# --------------------------------------------------------------------------- inpainting


@pytest.mark.parametrize("mask", ["center", "random"])
def test_inpainting_hides_the_square(mask):
    x = images(6)
    m = make("inpainting", augment=False, mask=mask)
    inp = m.make_inputs(x, gen(2))
    hidden, masked = inp["hidden"], inp["input"]
    assert hidden.shape == (6, 1, 32, 32) and hidden.sum((1, 2, 3)).eq(16 * 16).all()
    # filled with the backbone's own normalisation mean (ImageNet's for a random timm init)
    torch.testing.assert_close(m.backbone.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    fill = m.backbone.mean.expand_as(masked)
    assert torch.equal(masked[hidden.expand_as(masked)], fill[hidden.expand_as(masked)])
    assert torch.equal(masked[~hidden.expand_as(masked)], x[~hidden.expand_as(masked)])
    assert m.backbone.normalize(masked)[hidden.expand_as(masked)].abs().max() < 1e-6  # the mean: 0 for the encoder
    if mask == "center":
        assert hidden[:, 0, 8:24, 8:24].all()
    assert torch.equal(inp["target"], torch.stack([x[i][hidden[i].expand(3, -1, -1)].view(3, 16, 16)
                                                   for i in range(6)]))


def test_inpainting_loss_counts_only_the_square():
    m = make("inpainting", augment=False, mask="random")
    x = images(4).requires_grad_(True)
    inp = m.make_inputs(x, gen(1))
    pred = torch.randn(4, 3, 16, 16, generator=gen(9))
    m.reconstruction_loss(pred, inp["target"], inp["weight"]).backward()
    touched = x.grad.abs().sum(1, keepdim=True) > 0
    assert torch.equal(touched, inp["hidden"])
    # the value is the plain MSE over the square, in normalised pixel units
    ref = ((pred - m.backbone.normalize(inp["target"].detach())) ** 2).mean()
    assert torch.allclose(m.reconstruction_loss(pred, inp["target"].detach(), inp["weight"]), ref)


def test_inpainting_overlap_and_downsampled_output():
    m = make("inpainting", augment=False, overlap=2, out_size=8)
    inp = m.make_inputs(images(2), gen())
    assert inp["hidden"].sum((1, 2, 3)).eq(12 * 12).all()  # hidden core, visible 2 px border
    assert inp["target"].shape == (2, 3, 8, 8) and inp["weight"].shape == (1, 1, 8, 8)
    assert inp["weight"][0, 0, 0, 0] == 10.0 and inp["weight"][0, 0, 3, 3] == 1.0
    loss, stats = m.training_loss(float_batch(images(2)), gen())
    assert torch.isfinite(loss) and "pixel_mse" in stats
    with pytest.raises(ValueError, match="mask"):
        make("inpainting", mask="diamond")


# --------------------------------------------------------------------------- colorization


def test_colorization_input_has_no_colour():
    x = images(4)
    inp = make("colorization").make_inputs(x, gen(1))
    g = inp["input"]
    assert g.shape == (4, 3, 32, 32)
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    assert inp["target"].shape == (4, 8, 8) and inp["target"].max() < 81
    plain = make("colorization", augment=False).make_inputs(x, gen(1))["input"]
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(plain[:, 0], luma, atol=1e-6)


def test_chroma_classes():
    grey = torch.full((1, 3, 16, 16), 0.4)
    assert chroma_classes(grey, 8, 9).eq(4 * 9 + 4).all()  # grey is the centre bin
    red = torch.zeros(1, 3, 16, 16)
    red[:, 0] = 1.0
    blue = torch.zeros(1, 3, 16, 16)
    blue[:, 2] = 1.0
    r, b = chroma_classes(red, 4, 9)[0, 0, 0], chroma_classes(blue, 4, 9)[0, 0, 0]
    assert r // 9 < 4 and r % 9 == 8  # red: U < 0, V maximal
    assert b // 9 == 8 and b % 9 < 4  # blue: U maximal, V < 0
    half = torch.cat([red[..., :8], blue[..., 8:]], -1)
    c = chroma_classes(half, 2, 9)[0]
    assert c[0, 0] == r and c[0, 1] == b
