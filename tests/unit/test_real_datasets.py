"""Real-data builders on tiny fixtures written in each dataset's ORIGINAL file format.

Fixtures are encoded here independently of the builders (e.g. CIFAR records as label byte +
CHW planes, STL-10 planes column by column), and single pixels are also checked at raw byte
offsets, so a wrong transpose in the builders cannot cancel out against the test.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import dlbench.data.real as real
from dlbench.data.registry import DATASETS
from dlbench.data.store import DatasetError, load_split

NAMES = ["cifar10", "cifar100", "stl10", "cifar10_1", "cifar10_2", "cifar10_c"]


def _tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _images(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _cifar_bin(images: np.ndarray, *label_cols: np.ndarray) -> bytes:
    """Original CIFAR binary records: label byte(s), then the red, green, blue 32x32 planes."""
    out = bytearray()
    for i, img in enumerate(images):
        out += bytes(int(col[i]) for col in label_cols) + img.transpose(2, 0, 1).tobytes()
    return bytes(out)


def _stl_bin(images: np.ndarray) -> bytes:
    """Original STL-10 layout: per image 3 planes of 96x96, each written column by column."""
    return b"".join(img.transpose(2, 1, 0).tobytes() for img in images)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100

@pytest.fixture
def cifar10_raw(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    data = {f"data_batch_{i}": (_images(rng, 2), np.array([i % 10, (i + 3) % 10])) for i in range(1, 6)}
    data["test_batch"] = (_images(rng, 10), np.arange(10)[::-1].copy())
    members = {f"cifar-10-batches-bin/{k}.bin": _cifar_bin(x, y) for k, (x, y) in data.items()}
    raw = bytearray(members["cifar-10-batches-bin/data_batch_1.bin"])
    raw[1 + 0 * 1024 + 1 * 32 + 2] = 201  # channel 0, row 1, col 2 of the first image
    members["cifar-10-batches-bin/data_batch_1.bin"] = bytes(raw)
    data["data_batch_1"][0][0, 1, 2, 0] = 201
    members["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(real.CIFAR10_CLASSES) + "\n\n").encode()
    members = {"cifar-10-batches-bin/readme.html": b"<html/>", **dict(reversed(members.items()))}
    _tar(tmp_path / "raw" / "cifar-10-binary.tar.gz", members)
    return tmp_path / "raw", data


def test_cifar10_round_trip_and_stl_view(tmp_path: Path, cifar10_raw) -> None:
    raw, data = cifar10_raw
    out = tmp_path / "out"
    real.build_cifar10(out, raw)
    train = load_split(out, "train")
    want_x = np.concatenate([data[f"data_batch_{i}"][0] for i in range(1, 6)])  # batch order, not archive order
    want_y = np.concatenate([data[f"data_batch_{i}"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(train.images, want_x)
    np.testing.assert_array_equal(train.labels, want_y)
    assert train.images[0, 1, 2, 0] == 201
    test = load_split(out, "test")
    np.testing.assert_array_equal(test.images, data["test_batch"][0])
    np.testing.assert_array_equal(test.labels, data["test_batch"][1])

    stl = load_split(out, "test_stl10")  # all of CIFAR-10 test; frog scored as STL-10's monkey (the course's mapping)
    np.testing.assert_array_equal(stl.images, data["test_batch"][0])
    names = [real.STL10_CLASSES[s] for s in stl.labels]
    cifar_names = [real.CIFAR10_CLASSES[c] for c in data["test_batch"][1]]
    assert names == [{"automobile": "car", "frog": "monkey"}.get(c, c) for c in cifar_names]
    assert real.CIFAR10_TO_STL10[real.CIFAR10_CLASSES.index("frog")] == real.STL10_CLASSES.index("monkey")

    meta = _meta(out)
    assert meta["classes"] == real.CIFAR10_CLASSES and meta["image_size"] == [32, 32, 3]
    assert {k: v["n"] for k, v in meta["splits"].items()} == {"train": 10, "test": 10, "test_stl10": 10}
    assert meta["splits"]["test_stl10"] == {"n": 10, "shift": "natural", "label_space": "stl10"}
    assert meta["splits"]["test"]["shift"] == "id" and "{}" in meta["prompt_templates"][0]


def test_cifar100_uses_fine_labels_and_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    fine_names = [f"fine{i}" for i in range(100)]
    x_tr, x_te = _images(rng, 4), _images(rng, 3)
    fine_tr, fine_te = np.array([99, 0, 57, 3]), np.array([12, 88, 5])
    coarse = lambda f: (f + 7) % 20  # noqa: E731  differs from fine, so using the wrong byte fails
    _tar(tmp_path / "raw" / "cifar-100-binary.tar.gz", {
        "cifar-100-binary/coarse_label_names.txt": "\n".join(f"c{i}" for i in range(20)).encode(),
        "cifar-100-binary/fine_label_names.txt": ("\n".join(fine_names) + "\n").encode(),
        "cifar-100-binary/test.bin": _cifar_bin(x_te, coarse(fine_te), fine_te),
        "cifar-100-binary/train.bin": _cifar_bin(x_tr, coarse(fine_tr), fine_tr),
    })
    out = tmp_path / "out"
    real.build_cifar100(out, tmp_path / "raw")
    for split, x, y in (("train", x_tr, fine_tr), ("test", x_te, fine_te)):
        s = load_split(out, split)
        np.testing.assert_array_equal(s.images, x)
        np.testing.assert_array_equal(s.labels, y)
    meta = _meta(out)
    assert meta["classes"] == fine_names and {k: v["n"] for k, v in meta["splits"].items()} == {"train": 4, "test": 3}


# ---------------------------------------------------------------- STL-10

def test_stl10_column_major_labels_and_cifar_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(real, "STL10_CHUNK", 2)  # exercise the chunked unlabeled conversion
    rng = np.random.default_rng(2)
    x_tr, x_te, x_un = _images(rng, 3, 96), _images(rng, 10, 96), _images(rng, 5, 96)
    y_tr, y_te = np.array([1, 10, 8], np.uint8), np.arange(1, 11, dtype=np.uint8)
    tr = bytearray(_stl_bin(x_tr))
    tr[0 * 9216 + 2 * 96 + 1] = 77  # channel 0, column 2, row 1 of the first image
    x_tr[0, 1, 2, 0] = 77
    _tar(tmp_path / "raw" / "stl10_binary.tar.gz", {
        "stl10_binary/unlabeled_X.bin": _stl_bin(x_un),
        "stl10_binary/test_y.bin": y_te.tobytes(),
        "stl10_binary/train_X.bin": bytes(tr),
        "stl10_binary/class_names.txt": ("\n".join(real.STL10_CLASSES) + "\n").encode(),
        "stl10_binary/train_y.bin": y_tr.tobytes(),
        "stl10_binary/test_X.bin": _stl_bin(x_te),
        "stl10_binary/fold_indices.txt": b"0 1 2\n",
    })
    out = tmp_path / "out"
    real.build_stl10(out, tmp_path / "raw")
    train, test, unl = load_split(out, "train"), load_split(out, "test"), load_split(out, "unlabeled")
    np.testing.assert_array_equal(train.images, x_tr)
    assert train.images[0, 1, 2, 0] == 77 and train.images.shape[1:] == (96, 96, 3)
    np.testing.assert_array_equal(train.labels, [0, 9, 7])  # 1-based -> 0-based
    np.testing.assert_array_equal(test.images, x_te)
    np.testing.assert_array_equal(unl.images, x_un)
    assert (unl.labels == -1).all()

    c10 = load_split(out, "test_cifar10")  # all 10 STL classes, monkey scored as frog
    np.testing.assert_array_equal(c10.images, x_te)
    assert [real.CIFAR10_CLASSES[c] for c in c10.labels] == [
        "airplane", "bird", "automobile", "cat", "deer", "dog", "horse", "frog", "ship", "truck"]
    meta = _meta(out)
    sizes = {k: v["n"] for k, v in meta["splits"].items()}
    assert sizes == {"unlabeled": 5, "train": 3, "test": 10, "test_cifar10": 10}
    assert meta["splits"]["unlabeled"]["labeled"] is False
    assert meta["splits"]["test_cifar10"]["label_space"] == "cifar10" and meta["image_size"] == [96, 96, 3]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the unlabeled temp file is gone


def test_label_tables_are_inverse() -> None:
    assert {real.CIFAR10_TO_STL10[c]: c for c in range(10)} == real.STL10_TO_CIFAR10
    for s, c in real.STL10_TO_CIFAR10.items():
        pair = {real.STL10_CLASSES[s], real.CIFAR10_CLASSES[c]}
        assert len(pair) == 1 or pair in ({"car", "automobile"}, {"monkey", "frog"})
    assert len(real.CIFAR10_STL10_SHARED) == 9 and real.CIFAR10_CLASSES.index("frog") not in real.CIFAR10_STL10_SHARED


# ---------------------------------------------------------------- CIFAR-10.1 / 10.2

def test_cifar10_1_default_raw_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    x, y = _images(rng, 6), np.array([0, 9, 6, 1, 2, 3], np.int64)
    raw = tmp_path / "data" / "raw" / "cifar10_1"  # the default raw_dir, relative to CWD
    raw.mkdir(parents=True)
    np.save(raw / "cifar10.1_v6_data.npy", x)
    np.save(raw / "cifar10.1_v6_labels.npy", y)
    monkeypatch.chdir(tmp_path)
    real.build_cifar10_1(tmp_path / "out", None)
    s = load_split(tmp_path / "out", "test")
    np.testing.assert_array_equal(s.images, x)
    np.testing.assert_array_equal(s.labels, y)
    assert _meta(tmp_path / "out")["splits"]["test"] == {"n": 6, "shift": "natural", "label_space": "cifar10"}


def test_cifar10_2_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x, y = _images(rng, 4), np.array([3, 1, 4, 1], np.int64)
    np.savez(tmp_path / "cifar102_test.npz", images=x, labels=y, ti_indices=np.arange(4),
             keywords=np.array(["tabby", "car", "doe", "sedan"]), label_names=np.array(real.CIFAR10_CLASSES))
    real.build_cifar10_2(tmp_path / "out", tmp_path)
    s = load_split(tmp_path / "out", "test")
    np.testing.assert_array_equal(s.images, x)
    np.testing.assert_array_equal(s.labels, y)
    assert _meta(tmp_path / "out")["splits"]["test"] == {"n": 4, "shift": "natural", "label_space": "cifar10"}

    np.savez(tmp_path / "cifar102_test.npz", images=x, labels=y, label_names=np.array(real.STL10_CLASSES))
    with pytest.raises(DatasetError, match="label_names"):
        real.build_cifar10_2(tmp_path / "out2", tmp_path)


# ---------------------------------------------------------------- CIFAR-10-C

def test_cifar10_c_severity_order(tmp_path: Path) -> None:
    k = 3
    stacks = {}
    for ci, corruption in enumerate(["gaussian_noise", "fog"]):
        x = np.zeros((5 * k, 32, 32, 3), np.uint8)
        for s in range(5):
            for i in range(k):
                x[s * k + i, 0, 0, 0] = 100 * ci + 10 * (s + 1) + i  # encodes corruption, severity, index
                x[s * k + i, 31, 30, 2] = 250 - i
        stacks[corruption] = x
    labels = np.tile(np.array([7, 0, 6], np.uint8), 5)
    labels[5 * k - 1] = 9  # distinguishes per-severity slicing from reusing the first block
    _tar(tmp_path / "CIFAR-10-C.tar", {
        "CIFAR-10-C/gaussian_noise.npy": _npy(stacks["gaussian_noise"]),
        "CIFAR-10-C/labels.npy": _npy(labels),
        "CIFAR-10-C/fog.npy": _npy(stacks["fog"]),
    }, mode="w")
    out = tmp_path / "out"
    real.build_cifar10_c(out, tmp_path)
    meta = _meta(out)
    assert sorted(meta["splits"]) == sorted(f"{c}-{s}" for c in ("fog", "gaussian_noise") for s in range(1, 6))
    for ci, corruption in enumerate(["gaussian_noise", "fog"]):
        for s in range(1, 6):
            split = load_split(out, f"{corruption}-{s}")
            np.testing.assert_array_equal(split.images, stacks[corruption][(s - 1) * k:s * k])
            assert split.images[:, 0, 0, 0].tolist() == [100 * ci + 10 * s + i for i in range(k)]
            assert split.labels.tolist() == ([7, 0, 9] if s == 5 else [7, 0, 6])
            assert meta["splits"][f"{corruption}-{s}"] == {
                "n": k, "shift": "corruption", "corruption": corruption, "severity": s, "label_space": "cifar10"}
    assert meta["classes"] == real.CIFAR10_CLASSES


# ---------------------------------------------------------------- damaged originals, download, registry

def test_truncated_archive_is_named(tmp_path: Path, cifar10_raw) -> None:
    raw, _ = cifar10_raw
    archive = raw / "cifar-10-binary.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DatasetError, match="cifar-10-binary.tar.gz"):
        real.build_cifar10(tmp_path / "out", raw)
    assert not (tmp_path / "out" / "meta.json").exists()


def test_partial_record_is_named(tmp_path: Path) -> None:
    _tar(tmp_path / "cifar-100-binary.tar.gz", {
        "cifar-100-binary/fine_label_names.txt": b"a\nb\n",
        "cifar-100-binary/train.bin": bytes(2 * 3074 - 5),
        "cifar-100-binary/test.bin": bytes(3074),
    })
    with pytest.raises(DatasetError, match=r"cifar-100-binary\.tar\.gz:cifar-100-binary/train\.bin.*records"):
        real.build_cifar100(tmp_path / "out", tmp_path)


def test_truncated_npy_is_named(tmp_path: Path) -> None:
    np.save(tmp_path / "cifar10.1_v6_labels.npy", np.zeros(4, np.int64))
    data = _npy(np.zeros((4, 32, 32, 3), np.uint8))
    (tmp_path / "cifar10.1_v6_data.npy").write_bytes(data[:-100])
    with pytest.raises(DatasetError, match=r"cifar10\.1_v6_data\.npy.*truncated"):
        real.build_cifar10_1(tmp_path / "out", tmp_path)


def test_truncated_cifar10_c_is_named(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "CIFAR-10-C.tar", {
        "CIFAR-10-C/labels.npy": _npy(np.zeros(10, np.uint8)),
        "CIFAR-10-C/snow.npy": _npy(np.zeros((10, 32, 32, 3), np.uint8)),
    }, mode="w")
    archive.write_bytes(archive.read_bytes()[:20000])
    with pytest.raises(DatasetError, match="CIFAR-10-C.tar"):
        real.build_cifar10_c(tmp_path / "out", tmp_path)


def test_pickled_npy_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "cifar10.1_v6_data.npy", np.array([{"images": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "cifar10.1_v6_labels.npy", np.zeros(1, np.int64))
    with pytest.raises(DatasetError, match="unpickle"):
        real.build_cifar10_1(tmp_path / "out", tmp_path)


def test_fetch_verifies_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"original bytes" * 1000)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    raw = tmp_path / "raw"
    got = real.fetch(raw, real.RawFile("good.bin", src.as_uri(), md5=md5))
    assert got.read_bytes() == src.read_bytes()
    with pytest.raises(DatasetError, match=r"bad\.bin.*md5"):
        real.fetch(raw, real.RawFile("bad.bin", src.as_uri(), md5="0" * 32))
    assert sorted(p.name for p in raw.iterdir()) == ["good.bin"]  # nothing left under the bad name
    monkeypatch.setenv(real.SKIP_CHECKSUM_ENV, "1")
    assert real.fetch(raw, real.RawFile("bad.bin", src.as_uri(), md5="0" * 32)).exists()
    with pytest.raises(DatasetError, match=r"missing\.bin.*failed"):
        real.fetch(raw, real.RawFile("missing.bin", (tmp_path / "nope").as_uri()))


def test_registered() -> None:
    import dlbench.data.real  # noqa: F401

    for name in NAMES:
        spec = DATASETS.get(name)
        assert spec.name == name and not spec.offline and callable(spec.build)
