"""DomainNet builder on a tiny fixture in the ORIGINAL release format.

Per domain a zip of ``<domain>/<class>/<file>`` JPEGs and PNGs of odd sizes (zip order differs
from list order) and the ``<domain>_train.txt`` / ``<domain>_test.txt`` lists. Each image is one
solid colour, unique within its split, so comparing the stored centre pixels with the listed
images' colours checks both content and order; two striped images check the CLIP crop geometry.
"""

from __future__ import annotations

import io
import itertools
import json
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dlbench.data.domainnet as dn
from dlbench.data.registry import DATASETS, load_all
from dlbench.data.store import DatasetError, load_split

CLASSES = ["aircraft_carrier", "t-shirt", "The_Eiffel_Tower"]
REAL_TRAIN = (5, 3, 21)  # images per class: class 2 > 0 > 1, so top-2 = {0, 2}; 21 -> 2 held out (5% rounded up)
VAL_QUOTA = {0: 1, 1: 1, 2: 2}
SIZES = [(40, 30), (30, 40), (17, 23), (64, 64), (50, 20)]  # (width, height)
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@dataclass
class Raw:
    root: Path
    lists: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # list file -> (member, label) in order
    colour: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # member -> its centre colour


def _encode(img: Image.Image, member: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG" if member.endswith(".png") else "JPEG", quality=95)
    return buf.getvalue()


def _stripes(wide: bool) -> Image.Image:
    """Red, green, blue thirds, left to right (60x30) or top to bottom (30x60)."""
    x = np.zeros((30, 60, 3) if wide else (60, 30, 3), np.uint8)
    for k, colour in enumerate((RED, GREEN, BLUE)):
        if wide:
            x[:, 20 * k:20 * (k + 1)] = colour
        else:
            x[20 * k:20 * (k + 1), :] = colour
    return Image.fromarray(x)


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for d in sorted({m.rsplit("/", 1)[0] for m in members} | {m.split("/")[0] for m in members}):
            zf.writestr(d + "/", b"")  # directory entries, as in the official zips
        for name in sorted(members):
            zf.writestr(name, members[name])


def _write_list(raw: Raw, name: str) -> None:
    (raw.root / name).write_text("".join(f"{m} {y}\n" for m, y in raw.lists[name]) + "\n")


def make_raw(root: Path) -> Raw:
    root.mkdir(parents=True, exist_ok=True)
    raw, counter, rng = Raw(root), itertools.count(), np.random.default_rng(0)
    for d in dn.DOMAINS:
        members: dict[str, bytes] = {}
        for part in ("train", "test"):
            lines = []
            for c, name in enumerate(CLASSES):
                n = REAL_TRAIN[c] if (d, part) == ("real", "train") else 4 if part == "train" else 2
                for j in range(n):
                    i = next(counter)
                    member = f"{d}/{name}/{d}_{c + 1:03d}_{i:06d}.{'png' if i % 2 else 'jpg'}"
                    w, h = SIZES[i % len(SIZES)]
                    if (d, part, c) == ("real", "test", 0):  # the two crop-geometry images
                        member, img, colour = f"{d}/{name}/stripes_{j}.png", _stripes(wide=j == 0), GREEN
                    elif d == "quickdraw":  # greyscale, as quickdraw sketches are
                        v = 10 + 2 * (i % 100)
                        img, colour = Image.new("L", (w, h), v), (v, v, v)
                    else:
                        colour = (10 + 5 * (i % 48), 10 + 5 * (i // 48), 200)
                        img = Image.new("RGB", (w, h), colour)
                    members[member], raw.colour[member] = _encode(img, member), colour
                    lines.append((member, c))
            if (d, part) == ("real", "train"):
                lines = [lines[k] for k in rng.permutation(len(lines))]  # classes interleaved in list order
            raw.lists[f"{d}_{part}.txt"] = lines
            _write_list(raw, f"{d}_{part}.txt")
        _write_zip(root / f"{d}.zip", members)
    return raw


@pytest.fixture
def raw(tmp_path: Path) -> Raw:
    return make_raw(tmp_path / "raw")


@pytest.fixture(autouse=True)
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every original is in the fixture: a download attempt is a test failure."""
    real_fetch = dn.fetch

    def fetch(raw_dir: Path, spec: dn.RawFile) -> Path:
        assert (Path(raw_dir) / spec.name).exists(), f"would download {spec.url}"
        return real_fetch(raw_dir, spec)

    monkeypatch.setattr(dn, "fetch", fetch)


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(dn, "DOMAINNET_SIZE", 32)
    return 32


def _meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def _expected(raw: Raw, table: dict[int, int] | None = None) -> dict[str, list[tuple[str, int]]]:
    """Each split's (member, label), in list order, worked out here independently of the builder."""
    table = table or {c: c for c in range(len(CLASSES))}
    keep = {f: [(m, table[y]) for m, y in lines if y in table] for f, lines in raw.lists.items()}
    old = {new: c for c, new in table.items()}
    taken: Counter[int] = Counter()
    train, val = [], []
    for m, y in keep["real_train.txt"]:
        if taken[y] < VAL_QUOTA[old[y]]:
            taken[y] += 1
            val.append((m, y))
        else:
            train.append((m, y))
    return {"train": train, "val": val, "test": keep["real_test.txt"],
            **{d: keep[f"{d}_test.txt"] for d in dn.SHIFT_DOMAINS}}


def _check_splits(out: Path, raw: Raw, want: dict[str, list[tuple[str, int]]], size: int) -> None:
    for split, entries in want.items():
        s = load_split(out, split)
        assert s.images.shape == (len(entries), size, size, 3) and s.images.dtype == np.uint8, split
        assert s.labels.tolist() == [y for _, y in entries], split
        centre = s.images[:, size // 2, size // 2].astype(int)
        colours = np.array([raw.colour[m] for m, _ in entries])
        assert np.abs(centre - colours).max() <= 3, split  # content and order of every image


# ---------------------------------------------------------------- builds

def test_build_splits_labels_and_meta(tmp_path: Path, raw: Raw, small: int, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(dn, "PROGRESS_EVERY", 10)
    out = tmp_path / "out"
    dn.build_domainnet(out, raw.root)
    want = _expected(raw)
    _check_splits(out, raw, want, small)

    meta = _meta(out)
    assert meta["name"] == "domainnet" and meta["classes"] == ["aircraft carrier", "t-shirt", "The Eiffel Tower"]
    assert {k: v["n"] for k, v in meta["splits"].items()} == {
        "train": 25, "val": 4, "test": 6, "clipart": 6, "infograph": 6, "painting": 6, "quickdraw": 6, "sketch": 6}
    for split in ("train", "val", "test"):
        assert meta["splits"][split] == {"n": len(want[split]), "shift": "id", "domain": "real"}
    for d in dn.SHIFT_DOMAINS:
        assert meta["splits"][d] == {"n": 6, "shift": "domain", "domain": d}
    assert meta["image_size"] == [small, small, 3] and "Peng et al. 2019" in meta["license"]
    assert "http://csr.bu.edu/ftp/visda/2019/multi-source/groundtruth/clipart.zip" in meta["source"]
    assert "http://csr.bu.edu/ftp/visda/2019/multi-source/real.zip" in meta["source"]
    assert "http://csr.bu.edu/ftp/visda/2019/multi-source/domainnet/txt/sketch_test.txt" in meta["source"]

    # val: class-balanced, the first images of each class in list order, disjoint from train
    val, train = {m for m, _ in want["val"]}, {m for m, _ in want["train"]}
    assert not val & train and val | train == {m for m, _ in raw.lists["real_train.txt"]}
    assert Counter(load_split(out, "val").labels.tolist()) == VAL_QUOTA
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # temp memmaps are gone
    err = capsys.readouterr().err
    assert "domainnet train: 10/25 images" in err and "domainnet train: 20/25 images" in err


def test_real_size_is_clips_centre_crop(tmp_path: Path, raw: Raw) -> None:
    assert dn.DOMAINNET_SIZE == 224 and DATASETS.get("domainnet").image_size == 224
    out = tmp_path / "out"
    dn.build_domainnet(out, raw.root)
    test = load_split(out, "test")
    assert test.images.shape == (6, 224, 224, 3)
    wide, tall = test.images[0].astype(int), test.images[1].astype(int)  # 60x30 and 30x60 stripes
    # short side 30 -> 224, long 60 -> 448, centre 224 kept: original columns (rows) 15..45
    for k, colour in ((5, RED), (112, GREEN), (218, BLUE)):
        assert np.abs(wide[112, k] - colour).max() <= 2 and np.abs(tall[k, 112] - colour).max() <= 2
    assert np.abs(wide[5, 112] - GREEN).max() <= 2  # the wide image is not cropped vertically


def test_clip_crop_matches_torchvision_rounding() -> None:
    img = Image.new("RGB", (41, 30))
    assert dn._clip_crop(img, 32).shape == (32, 32, 3)
    torchvision = pytest.importorskip("torchvision.transforms")
    t = torchvision.Compose([torchvision.Resize(32, interpolation=torchvision.InterpolationMode.BICUBIC),
                             torchvision.CenterCrop(32)])
    rng = np.random.default_rng(1)
    for w, h in ((41, 30), (30, 77), (33, 32), (32, 32)):
        x = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        np.testing.assert_array_equal(dn._clip_crop(x, 32), np.asarray(t(x)))


def test_subset_top_k_renumbered(tmp_path: Path, raw: Raw, small: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dn, "SUBSET_CLASSES", 2)
    monkeypatch.chdir(raw.root.parent)
    (raw.root.parent / "data" / "raw").mkdir(parents=True)
    raw.root.rename(raw.root.parent / "data" / "raw" / "domainnet")  # the default raw_dir, shared with domainnet
    raw.root = raw.root.parent / "data" / "raw" / "domainnet"
    out = tmp_path / "out40"
    dn.build_domainnet40(out, None)
    want = _expected(raw, {0: 0, 2: 1})  # top-2 by real train count: classes 2 (21) and 0 (5), in label order
    _check_splits(out, raw, want, small)
    meta = _meta(out)
    assert meta["name"] == "domainnet40" and meta["classes"] == ["aircraft carrier", "The Eiffel Tower"]
    assert {k: v["n"] for k, v in meta["splits"].items()} == {
        "train": 23, "val": 3, "test": 4, "clipart": 4, "infograph": 4, "painting": 4, "quickdraw": 4, "sketch": 4}


def test_top_classes_ties_go_to_the_lower_label() -> None:
    entries = [dn._Entry(f"real/c{c}/{i}.jpg", c, f"x:{i}") for i, c in enumerate([3, 1, 2, 0, 2, 1, 0, 1, 2])]
    assert dn._top_classes(entries, 1) == {1: 0}  # 1 and 2 both have 3: the lower label wins
    assert dn._top_classes(entries, 2) == {1: 0, 2: 1}
    assert dn._top_classes(entries, 3) == {0: 0, 1: 1, 2: 2}
    with pytest.raises(DatasetError, match="5-class subset"):
        dn._top_classes(entries, 5)


# ---------------------------------------------------------------- damaged originals

def test_missing_or_unreadable_member_is_named(tmp_path: Path, raw: Raw, small: int) -> None:
    with zipfile.ZipFile(raw.root / "sketch.zip") as zf:
        members = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}
    gone = raw.lists["sketch_test.txt"][2][0]
    _write_zip(raw.root / "sketch.zip", {n: b for n, b in members.items() if n != gone})
    with pytest.raises(DatasetError, match=rf"sketch\.zip: has no member '{gone}' \(listed at .*sketch_test\.txt:3\)"):
        dn.build_domainnet(tmp_path / "out", raw.root)
    assert not (tmp_path / "out" / "meta.json").exists()

    _write_zip(raw.root / "sketch.zip", {**members, gone: b"not an image"})
    with pytest.raises(DatasetError, match=rf"sketch\.zip:{gone}: not a readable image"):
        dn.build_domainnet(tmp_path / "out", raw.root)


@pytest.mark.parametrize("file, line, match", [
    ("real_test.txt", "real/t-shirt/x.jpg", r"real_test\.txt:7: malformed line 'real/t-shirt/x\.jpg'"),
    ("real_test.txt", "real/t-shirt/x.jpg one", r"real_test\.txt:7: malformed"),
    ("clipart_test.txt", "real/t-shirt/x.jpg 1", r"clipart_test\.txt:7: malformed"),
    ("clipart_test.txt", "clipart/x.jpg 1", r"clipart_test\.txt:7: malformed"),
    ("painting_test.txt", "painting/t-shirt/x.jpg 0", r"painting_test\.txt:7: label 0 is class 't-shirt' here"),
    ("painting_test.txt", "painting/t-shirt/x.jpg 3", r"painting_test\.txt:7: class 't-shirt' has label 3 here but 1"),
])
def test_bad_list_line_is_named(tmp_path: Path, raw: Raw, file: str, line: str, match: str) -> None:
    path = raw.root / file
    path.write_text("".join(f"{m} {y}\n" for m, y in raw.lists[file]) + line + "\n")
    with pytest.raises(DatasetError, match=match):
        dn.build_domainnet(tmp_path / "out", raw.root)


def test_class_missing_from_real_train_is_refused(tmp_path: Path, raw: Raw) -> None:
    raw.lists["real_train.txt"] = [(m, y) for m, y in raw.lists["real_train.txt"] if y != 1]
    _write_list(raw, "real_train.txt")
    with pytest.raises(DatasetError, match=r"real_train\.txt: has no image of label\(s\) \[1\]"):
        dn.build_domainnet(tmp_path / "out", raw.root)


# ---------------------------------------------------------------- registry

def test_registered_with_official_sizes() -> None:
    load_all()
    full, sub = DATASETS.get("domainnet"), DATASETS.get("domainnet40")
    for spec in (full, sub):
        assert not spec.offline and spec.image_size == 224
        assert spec.splits == ("train", "val", "test", "clipart", "infograph", "painting", "quickdraw", "sketch")
    assert full.sizes["train"] + full.sizes["val"] == 120906 and full.sizes["test"] == 52041
    assert full.sizes["quickdraw"] == 51750 and sub.sizes["quickdraw"] == 6000
    assert dn.zip_file("painting").url.endswith("/multi-source/groundtruth/painting.zip")
    assert dn.zip_file("infograph").url == "http://csr.bu.edu/ftp/visda/2019/multi-source/infograph.zip"
    assert dn.zip_file("real").md5 is None and dn.list_file("real", "train").sha256 is None
