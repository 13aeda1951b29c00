import json

import numpy as np

from dlbench.data import digits, shapes
from dlbench.data.store import load_split


def test_shapes_deterministic_balanced_and_captioned(tmp_path):
    sizes = {"unlabeled": 20, "train": 30, "val": 10, "test": 20, "style": 20}
    shapes.build(tmp_path / "a", sizes=sizes)
    shapes.build(tmp_path / "b", sizes=sizes)
    for split in sizes:
        a, b = load_split(tmp_path / "a", split), load_split(tmp_path / "b", split)
        np.testing.assert_array_equal(a.images, b.images)
        assert a.images.shape == (sizes[split], 32, 32, 3)
    train = load_split(tmp_path / "a", "train")
    assert np.bincount(train.labels, minlength=10).tolist() == [3] * 10
    assert (load_split(tmp_path / "a", "unlabeled").labels == -1).all()
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["classes"] == shapes.CLASSES and meta["splits"]["style"]["shift"] == "style"
    assert all("{}" in t for t in meta["prompt_templates"])
    for cap, label in zip(train.captions, train.labels):
        assert shapes.CLASSES[label] in cap and "background" in cap


def test_style_split_uses_unseen_renderings_and_palettes():
    _, _, train_caps = shapes.render_split(200, 1, style=False)
    _, _, style_caps = shapes.render_split(200, 2, style=True)
    assert not any(c in " ".join(train_caps) for c in shapes.STYLE_PALETTE)
    assert not any(b in " ".join(train_caps) for b in shapes.STYLE_BACKGROUNDS)
    assert all(any(w in c for w in ("outline", "sketched", "hatched")) for c in style_caps)


def test_digits_fixed_stratified_split(tmp_path):
    digits.build(tmp_path)
    sizes = {s: len(load_split(tmp_path, s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert abs(sizes["test"] - 500) <= 10 and abs(sizes["val"] - 200) <= 10
    test = load_split(tmp_path, "test")
    assert test.images.shape[1:] == (32, 32, 3) and test.images.dtype == np.uint8
    assert np.bincount(test.labels).min() >= 45
