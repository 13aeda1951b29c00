import numpy as np
import pytest

from dlbench.data.store import DatasetError, load_split, write_meta, write_split


def make(tmp_path, n=7):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 4, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, n)
    write_split(tmp_path, "train", images, labels, [f"c{i}" for i in range(n)])
    write_meta(tmp_path, {"name": "toy", "classes": ["a", "b", "c"], "splits": {"train": {"n": n, "shift": "id"}}})
    return images, labels


@pytest.mark.parametrize("mmap", [False, True])
def test_round_trip(tmp_path, mmap):
    images, labels = make(tmp_path)
    s = load_split(tmp_path, "train", mmap=mmap)
    np.testing.assert_array_equal(np.asarray(s.images), images)
    np.testing.assert_array_equal(s.labels, labels)
    assert s.labels.dtype == np.int64
    assert list(s.captions) == [f"c{i}" for i in range(7)]
    if mmap:
        assert isinstance(s.images, np.memmap)


def test_truncated_file_names_it(tmp_path):
    make(tmp_path)
    path = tmp_path / "train.npz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"train\.npz: truncated or corrupt"):
        load_split(tmp_path, "train")


def test_size_mismatch_with_meta(tmp_path):
    make(tmp_path)
    write_meta(tmp_path, {"name": "toy", "classes": ["a"], "splits": {"train": {"n": 99, "shift": "id"}}})
    with pytest.raises(DatasetError, match="meta.json says 99"):
        load_split(tmp_path, "train")


def test_missing_dataset_and_split(tmp_path):
    with pytest.raises(DatasetError, match="meta.json: missing"):
        load_split(tmp_path / "nope", "train")
    make(tmp_path)
    with pytest.raises(DatasetError, match="no split 'test'"):
        load_split(tmp_path, "test")


def test_contract_checks_on_write(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_split(tmp_path, "x", np.zeros((2, 4, 4, 3), np.float32), np.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        write_split(tmp_path, "x", np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3))
    with pytest.raises(ValueError, match="shift"):
        write_meta(tmp_path, {"name": "t", "classes": [], "splits": {"a": {"shift": "weird"}}})
