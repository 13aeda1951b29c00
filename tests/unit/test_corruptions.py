"""The CIFAR-10-C corruption suite: API contract, determinism, severity order, reference semantics."""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dlbench.data import corruptions as C
from dlbench.data.corruptions import CORRUPTIONS, corrupt, corruption_names

# the 13 types the default config evaluates
CONFIG_TYPES = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                "zoom_blur", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"]
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
# Published constants that are not monotone, so "further from the clean image" need not grow:
#   glass_blur: sigma 0.05, 0.25, 0.4, 0.25, 0.4 with 1, 1, 1, 2, 2 shuffle passes (more blur also
#     smooths the shuffle away);
#   elastic_transform: affine jitter shrinks (0.08 .. 0.03 * size) while the elastic field grows.
NON_MONOTONE = {"glass_blur", "elastic_transform"}
# motion_blur 3 -> 4 is radius 6 -> 8 at the same sigma 2: the extra taps weigh < 1e-9, so the
# two severities differ only in their random angles.
TIES = {("motion_blur", 3)}


def structured(n: int = 32, h: int = 32, w: int = 32, c: int = 3, seed: int = 0) -> torch.Tensor:
    """Smooth colour gradients with a disc and a rectangle: image-like, not noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    a, b = torch.rand(n, c, 1, 1, generator=g), torch.rand(n, c, 1, 1, generator=g)
    img = 0.15 + 0.6 * (a * xx + b * yy) / (a + b + 1e-6)
    cy = torch.randint(h // 4, 3 * h // 4, (n, 1, 1), generator=g)
    cx = torch.randint(w // 4, 3 * w // 4, (n, 1, 1), generator=g)
    r = torch.randint(3, max(4, h // 4), (n, 1, 1), generator=g)
    disc = ((yy * (h - 1) - cy) ** 2 + (xx * (w - 1) - cx) ** 2) <= r**2
    img = torch.where(disc[:, None], torch.rand(n, c, 1, 1, generator=g), img)
    top = torch.randint(0, h // 2, (n, 1, 1), generator=g)
    left = torch.randint(0, w // 2, (n, 1, 1), generator=g)
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    rect = (rows >= top) & (rows < top + h // 6 + 1) & (cols >= left) & (cols < left + w // 3)
    img = torch.where(rect[:, None], torch.rand(n, c, 1, 1, generator=g), img)
    return (img * 255).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def clean() -> torch.Tensor:
    return structured()


@pytest.fixture(scope="module")
def severity_diffs(clean: torch.Tensor) -> dict[str, list[float]]:
    return {name: [(corrupt(clean, name, s, seed=0).float() - clean.float()).abs().mean().item() for s in range(1, 6)]
            for name in corruption_names()}


# ---- registry and argument checks ----------------------------------------------------------------

def test_registry_has_the_suite() -> None:
    names = corruption_names()
    assert len(names) >= 12 and len(set(names)) == len(names)
    assert set(CONFIG_TYPES) <= set(names)
    assert sorted(names) == CORRUPTIONS.names()
    assert all(name in CORRUPTIONS for name in names)


def test_unknown_name_raises_with_known_names(clean: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"unknown corruption name 'gaussian_blurr'.*gaussian_noise"):
        corrupt(clean, "gaussian_blurr", 1, seed=0)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True, "3"])
def test_bad_severity_raises(clean: torch.Tensor, severity: object) -> None:
    with pytest.raises(ValueError, match=r"severity must be an integer in 1\.\.5"):
        corrupt(clean, "contrast", severity, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="severity"):
        CORRUPTIONS.get("contrast")(clean.float() / 255, severity, torch.Generator())  # type: ignore[arg-type]


def test_bad_images_raise(clean: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="uint8"):
        corrupt(clean.float(), "contrast", 1, seed=0)
    with pytest.raises(ValueError, match="channels"):
        corrupt(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), "contrast", 1, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        corrupt(clean, "contrast", 1, seed=0, batch_size=0)


# ---- contract for every corruption ---------------------------------------------------------------

@pytest.mark.parametrize("name", corruption_names())
def test_shape_dtype_device_and_odd_sizes(name: str, clean: torch.Tensor) -> None:
    out = corrupt(clean[:4], name, 3, seed=1)
    assert out.shape == clean[:4].shape and out.dtype == torch.uint8 and out.device == clean.device
    gray = structured(3, 20, 26, c=1)  # one channel, not square, not a power of two
    out = corrupt(gray, name, 5, seed=1)
    assert out.shape == gray.shape and out.dtype == torch.uint8
    assert corrupt(clean[:0], name, 1, seed=0).shape == clean[:0].shape


@pytest.mark.parametrize("name", corruption_names())
def test_deterministic(name: str, clean: torch.Tensor) -> None:
    a = corrupt(clean, name, 4, seed=7, batch_size=5)
    assert torch.equal(a, corrupt(clean, name, 4, seed=7, batch_size=5))
    nhwc = clean.permute(0, 2, 3, 1).contiguous()  # the evaluator passes a permuted (non-contiguous) view
    assert torch.equal(a, corrupt(nhwc.permute(0, 3, 1, 2), name, 4, seed=7, batch_size=5))
    other = corrupt(clean, name, 4, seed=8, batch_size=5)
    if name in DETERMINISTIC:
        assert torch.equal(a, other)
        assert torch.equal(a, corrupt(clean, name, 4, seed=0, batch_size=512))
    else:
        assert not torch.equal(a, other)


@pytest.mark.parametrize("name", corruption_names())
def test_severity_increases_distance_from_clean(name: str, severity_diffs: dict[str, list[float]]) -> None:
    d = severity_diffs[name]
    assert d[0] > 0, f"{name} severity 1 leaves the images unchanged"
    if name == "glass_blur":  # at equal sigma, two shuffle passes move pixels more than one
        assert d[3] > d[1] and d[4] > d[2], d
        return
    if name in NON_MONOTONE:
        return
    for s in range(1, 5):
        if (name, s) in TIES:
            assert d[s] >= 0.85 * d[s - 1], (name, s, d)
        else:
            assert d[s] > d[s - 1], (name, s, d)


def test_seed_stream_is_stable() -> None:
    """Seeds derive from a fixed hash (not the per-process salted ``hash()``), so files reproduce."""
    assert C._stream_seed(0, "fog", 3) == C._stream_seed(0, "fog", 3)
    assert len({C._stream_seed(s, n, v) for s in (0, 1) for n in ("fog", "snow") for v in (1, 2)}) == 8


# ---- hand-checkable semantics ----------------------------------------------------------------------

def test_contrast_matches_formula(clean: torch.Tensor) -> None:
    x = clean.float() / 255
    mean = x.mean(dim=(2, 3), keepdim=True)  # per image and channel, as the reference
    expected = ((x - mean) * 0.75 + mean).clamp(0, 1)
    assert torch.allclose(CORRUPTIONS.get("contrast")(x, 1, torch.Generator()), expected, atol=1e-6)


def test_brightness_keeps_hue_and_raises_value(clean: torch.Tensor) -> None:
    x = clean[:4].float() / 255
    out = CORRUPTIONS.get("brightness")(x, 2, torch.Generator())  # c = 0.1
    xs = x.permute(0, 2, 3, 1).reshape(-1, 3)[::7].double().tolist()
    ys = out.permute(0, 2, 3, 1).reshape(-1, 3)[::7].double().tolist()
    checked = 0
    for p, q in zip(xs, ys):
        hp, sp, vp = colorsys.rgb_to_hsv(*p)
        hq, sq, vq = colorsys.rgb_to_hsv(*q)
        assert vq == pytest.approx(min(vp + 0.1, 1.0), abs=1e-5)
        if sp > 0.05:
            assert min(abs(hp - hq), 1 - abs(hp - hq)) < 1e-4 and sq == pytest.approx(sp, abs=1e-4)
            checked += 1
    assert checked > 50
    gray = torch.full((1, 1, 4, 4), 0.5)
    assert torch.allclose(CORRUPTIONS.get("brightness")(gray, 5, torch.Generator()), gray + 0.3)


def test_pixelate_matches_pil_and_is_blocky(clean: torch.Tensor) -> None:
    for severity, c in enumerate([0.95, 0.9, 0.85, 0.75, 0.65], start=1):
        out = corrupt(clean, "pixelate", severity, seed=0)
        for i in range(4):
            img = Image.fromarray(clean[i].permute(1, 2, 0).numpy())
            ref = img.resize((int(32 * c),) * 2, Image.BOX).resize((32, 32), Image.BOX)
            assert np.array_equal(out[i].permute(1, 2, 0).numpy(), np.asarray(ref)), severity
    out = corrupt(clean, "pixelate", 4, seed=0)  # 32 -> 24 -> 32: at most 24 distinct rows and columns
    for img in out:
        assert len(torch.unique(img, dim=1)) <= 24 and len(torch.unique(img, dim=2)) <= 24


def test_jpeg_matches_pil(clean: torch.Tensor) -> None:
    out = corrupt(clean[:3], "jpeg_compression", 1, seed=0)
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(clean[i].permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=80)
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), np.asarray(Image.open(buf)))


def test_defocus_severity1_is_small_gaussian(clean: torch.Tensor) -> None:
    """Radius 0.3 covers one pixel, so the disk is just cv2's 3x3 Gaussian at alias_blur 0.4."""
    x = clean.float() / 255
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / (2 * 0.4**2))
    k = torch.outer(g, g) / g.sum() ** 2
    padded = F.pad(x.reshape(-1, 1, 32, 32), (1, 1, 1, 1), mode="reflect")  # = BORDER_REFLECT_101
    expected = F.conv2d(padded, k[None, None]).reshape(x.shape)
    assert torch.allclose(CORRUPTIONS.get("defocus_blur")(x, 1, torch.Generator()), expected, atol=1e-5)


def test_gaussian_filter_matches_scipy() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(2, 3, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for mode, sigma, truncate in [("nearest", 0.4, 4.0), ("reflect", 6.4, 3.0), ("reflect", 0.96, 3.0)]:
        ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode=mode, truncate=truncate)
        assert np.allclose(C._gaussian_filter(x, sigma, mode, truncate).numpy(), ref, atol=1e-12)


def test_zoom_blur_matches_scipy_reference(clean: torch.Tensor) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")

    def clipped_zoom(img: np.ndarray, z: float) -> np.ndarray:  # make_cifar_c.py, verbatim logic
        h = img.shape[0]
        ch = int(np.ceil(h / z))
        top = (h - ch) // 2
        img = ndimage.zoom(img[top:top + ch, top:top + ch], (z, z, 1), order=1)
        trim = (img.shape[0] - h) // 2
        return img[trim:trim + h, trim:trim + h]

    x = clean[:2].float() / 255
    out = CORRUPTIONS.get("zoom_blur")(x, 3, torch.Generator())
    for i in range(2):
        img = x[i].permute(1, 2, 0).numpy()
        factors = np.arange(1, 1.16, 0.01)
        ref = (img + sum(clipped_zoom(img, z) for z in factors)) / (len(factors) + 1)
        assert np.allclose(out[i].permute(1, 2, 0).numpy(), ref, atol=1e-5)


def test_motion_blur_kernel_is_imagemagick_line() -> None:
    x = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    i = torch.arange(13, dtype=torch.float64)
    k = torch.exp(-(i**2) / 2.0)
    k = (k / k.sum()).tolist()  # radius 6 -> width 13, sigma 1
    out = C._motion_blur(x, 6, 1.0, torch.tensor([0.0, 90.0], dtype=torch.float64))
    cols = torch.arange(11)
    rows = torch.arange(9)
    right = sum(k[t] * x[0][..., (cols + t).clamp(max=10)] for t in range(13))  # 0 degrees: along +x
    down = sum(k[t] * x[1][:, (rows + t).clamp(max=8), :] for t in range(13))  # 90 degrees: along +y
    assert torch.allclose(out[0], right, atol=1e-5) and torch.allclose(out[1], down, atol=1e-5)


def reference_glass_loop(img: np.ndarray, d: np.ndarray, delta: int) -> np.ndarray:
    """make_cifar_c.py's glass-blur pixel loop as written (32 -> the array's size), on one H x W x C array.

    ``d``: iterations x steps x 2 displacements ``(dx, dy)``, in place of ``np.random.randint``.
    """
    x = img.copy()
    height, width = x.shape[:2]
    for i in range(d.shape[0]):
        k = 0
        for h in range(height - delta, delta, -1):
            for w in range(width - delta, delta, -1):
                dx, dy = d[i, k]
                k += 1
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]  # views: copies, not swaps
    return x


def true_swap_loop(img: np.ndarray, d: np.ndarray, delta: int) -> np.ndarray:
    """What the reference line seems to intend (and this suite did before): a real swap."""
    x = img.copy()
    height, width = x.shape[:2]
    for i in range(d.shape[0]):
        k = 0
        for h in range(height - delta, delta, -1):
            for w in range(width - delta, delta, -1):
                dx, dy = d[i, k]
                k += 1
                x[[h, h + dy], [w, w + dx]] = x[[h + dy, h], [w + dx, w]]
    return x


def grid_image(h: int, w: int) -> np.ndarray:
    """H x W x 3 with pixel value ``w * row + col`` in channel 0 (+100, +200 in channels 1, 2)."""
    base = np.arange(h * w).reshape(h, w, 1)
    return (base + np.array([0, 100, 200])).astype(np.int64)


def shuffle_one(img: np.ndarray, moves: list[list[tuple[int, int]]], delta: int) -> np.ndarray:
    """``C._glass_shuffle`` on one H x W x 3 image with displacements ``moves[pass][step] = (dx, dy)``."""
    d = np.array(moves, dtype=np.int64)[..., None]  # iterations x steps x 2 x 1 image
    x = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
    return C._glass_shuffle(x, d, delta)[0].permute(1, 2, 0).numpy()


def test_numpy_tuple_assign_of_views_copies() -> None:
    """numpy issue 14428: the right-hand side holds views, so the "swap" copies one pixel into the other."""
    x = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)  # two RGB pixels, uint8 as in the reference
    x[0, 0], x[0, 1] = x[0, 1], x[0, 0]
    assert x.tolist() == [[[3, 4, 5], [3, 4, 5]]]  # pixel 0 took pixel 1; pixel 1 is unchanged
    s = np.arange(2, dtype=np.uint8).reshape(1, 2)  # scalar elements are copies, so there it does swap
    s[0, 0], s[0, 1] = s[0, 1], s[0, 0]
    assert s.tolist() == [[1, 0]]


def test_glass_shuffle_hand_case_delta1() -> None:
    """4x4, delta 1: pixels (3,3), (3,2), (2,3), (2,2) each take their neighbour's value; nothing travels further."""
    img = grid_image(4, 4)
    moves = [[(-1, -1), (-1, 0), (0, -1), (-1, -1)]]  # (dx, dy) for (3,3), (3,2), (2,3), (2,2)
    expected = [[0, 1, 2, 3],
                [4, 5, 6, 7],
                [8, 9, 5, 7],  # (2,2) <- (1,1); (2,3) <- (1,3)
                [12, 13, 13, 10]]  # (3,2) <- (3,1); (3,3) <- (2,2) before (2,2) was overwritten
    out = shuffle_one(img, moves, 1)
    assert out[..., 0].tolist() == expected
    assert np.array_equal(out[..., 1:], out[..., :1] + np.array([100, 200]))  # channels move together
    d = np.array(moves)
    assert np.array_equal(reference_glass_loop(img, d, 1), out)
    swapped = [[0, 1, 2, 3], [4, 15, 6, 11], [8, 9, 5, 7], [12, 14, 13, 10]]  # a true swap carries 15 two steps
    assert true_swap_loop(img, d, 1)[..., 0].tolist() == swapped


def test_glass_shuffle_hand_case_delta2_reads_processed_pixels() -> None:
    """6x6, delta 2: displacements that point down/right read pixels this pass already overwrote."""
    img = grid_image(6, 6)
    moves = [[(-1, 0), (-2, -2), (0, 1), (1, 0)]]  # (dx, dy) for (4,4), (4,3), (3,4), (3,3)
    expected = img[..., 0].copy()
    expected[4, 4] = 27  # <- (4,3), still the original
    expected[4, 3] = 13  # <- (2,1)
    expected[3, 4] = 27  # <- (4,4), which already holds 27
    expected[3, 3] = 27  # <- (3,4), which already holds 27
    out = shuffle_one(img, moves, 2)
    assert out[..., 0].tolist() == expected.tolist()
    assert np.array_equal(reference_glass_loop(img, np.array(moves), 2), out)


@pytest.mark.parametrize(("delta", "iterations", "h", "w"), [(1, 1, 8, 8), (1, 2, 6, 7), (2, 2, 8, 9), (3, 1, 10, 8)])
def test_glass_shuffle_matches_reference_loop(delta: int, iterations: int, h: int, w: int) -> None:
    """Random displacements, several images at once: the batched index table equals the loop image by image."""
    rng = np.random.RandomState(0)
    n = 3
    imgs = rng.randint(0, 256, size=(n, h, w, 3)).astype(np.uint8)
    steps = max(h - 2 * delta, 0) * max(w - 2 * delta, 0)
    d = rng.randint(-delta, delta, size=(iterations, steps, 2, n))
    out = C._glass_shuffle(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), d, delta)
    for i in range(n):
        ref = reference_glass_loop(imgs[i], d[..., i], delta)
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), ref)
        assert not np.array_equal(ref, true_swap_loop(imgs[i], d[..., i], delta))


def test_glass_blur_severity1_is_the_reference_loop() -> None:
    """Severity 1 (sigma 0.05 -> identity filter) is exactly the reference loop with the drawn displacements."""
    x = structured(2, 10, 12).float() / 255
    out = CORRUPTIONS.get("glass_blur")(x, 1, torch.Generator().manual_seed(3))
    steps = 8 * 10  # h in 9..2, w in 11..2
    d = torch.randint(-1, 1, (1, steps, 2, 2), generator=torch.Generator().manual_seed(3)).numpy()
    for n in range(2):
        ref = reference_glass_loop(x[n].permute(1, 2, 0).numpy(), d[..., n], 1)
        assert np.array_equal(out[n].permute(1, 2, 0).numpy(), ref)


def test_quantize_truncates_like_np_uint8() -> None:
    k = torch.arange(256, dtype=torch.float64)
    for frac in (0.0, 0.3, 0.7, 0.99):
        y = ((k + frac) / 255).to(torch.float32)  # exact k/255 must survive float32 error
        assert torch.equal(C._quantize(y), k.to(torch.uint8)), frac
    assert np.array_equal(np.uint8(((k + 0.7) / 255 * 255).numpy()), k.numpy())  # what the reference does
    assert C._quantize(torch.tensor([-0.1, 1.2])).tolist() == [0, 255]


@pytest.mark.parametrize("offset", [0.0, 0.7])
def test_corrupt_truncates_output(clean: torch.Tensor, offset: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: an output of (k + 0.7) / 255 becomes k (rounding would give k + 1), k / 255 stays k."""
    images = clean.clamp(max=254)

    def shifted(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
        return x + offset / 255

    monkeypatch.setattr(CORRUPTIONS, "get", lambda name: shifted)
    assert torch.equal(corrupt(images, "contrast", 1, seed=0, batch_size=7), images)


def test_fog_plasma_is_normalised_and_fog_brightens_dark_images() -> None:
    maps = C._plasma_fractal(3, 32, 2.0, torch.Generator().manual_seed(0))
    assert maps.shape == (3, 32, 32)
    assert torch.allclose(maps.amin(dim=(1, 2)), torch.zeros(3, dtype=maps.dtype))
    assert torch.allclose(maps.amax(dim=(1, 2)), torch.ones(3, dtype=maps.dtype))
    assert maps.std(dim=(1, 2)).min() > 0.05
    dark = torch.full((2, 3, 32, 32), 0.2)
    out = CORRUPTIONS.get("fog")(dark, 5, torch.Generator().manual_seed(0))
    # (x + 1.5 * plasma) * 0.2 / 1.7 with plasma in [0, 1]
    assert out.min() >= 0.2 * 0.2 / 1.7 - 1e-6 and out.max() <= 1.7 * 0.2 / 1.7 + 1e-6


def test_noise_strength_matches_published_constants() -> None:
    x = torch.full((4, 3, 32, 32), 0.5)
    g = torch.Generator().manual_seed(0)
    assert (CORRUPTIONS.get("gaussian_noise")(x, 1, g) - x).std().item() == pytest.approx(0.04, rel=0.05)
    flipped = (CORRUPTIONS.get("impulse_noise")(x, 5, g) != x).float().mean().item()
    assert flipped == pytest.approx(0.07, abs=0.01)
    shot = CORRUPTIONS.get("shot_noise")(x, 5, g)  # Poisson(25) / 50: std = 5 / 50
    assert (shot - x).std().item() == pytest.approx(0.1, rel=0.05)
    assert torch.allclose(shot * 50, (shot * 50).round(), atol=1e-4)


def test_elastic_severity1_is_affine_only() -> None:
    """Severity 1 has alpha 0: a linear ramp stays linear (away from the reflected border)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    ramp = (0.2 + 0.3 * xx + 0.4 * yy).expand(3, 1, 32, 32).contiguous()
    out = CORRUPTIONS.get("elastic_transform")(ramp, 1, torch.Generator().manual_seed(0))
    inner = out[:, 0, 10:22, 10:22]
    assert not torch.allclose(out, ramp, atol=1e-3)
    assert torch.allclose(inner.diff(dim=-1).diff(dim=-1), torch.zeros(()), atol=1e-4)
    assert torch.allclose(inner.diff(dim=-2).diff(dim=-2), torch.zeros(()), atol=1e-4)
    assert math.isfinite(out.sum().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", corruption_names())
def test_cuda_matches_cpu(name: str, clean: torch.Tensor) -> None:
    cpu = corrupt(clean, name, 3, seed=0)
    gpu = corrupt(clean.cuda(), name, 3, seed=0)
    assert gpu.device.type == "cuda"
    assert (gpu.cpu().int() - cpu.int()).abs().float().mean() < 0.05  # float error flips a rare rounding
