"""Real-data builders: CIFAR-10/100, STL-10, CIFAR-10.1, CIFAR-10.2 and CIFAR-10-C.

Each ``build(out, raw_dir)`` reads the authors' ORIGINAL files from ``raw_dir`` (default
``data/raw/<name>``, relative to the working directory) and writes the array format of
``dlbench.data.store``. A file missing from ``raw_dir`` is downloaded from its official URL
and its checksum is checked before it is kept under its final name; files already present
are used as they are (tests feed fixtures this way, and an offline cluster can be given
copies). ``DLBENCH_SKIP_CHECKSUM=1`` skips the check of fresh downloads (e.g. a mirror).

Nothing is ever unpickled: CIFAR comes from the *binary* releases, STL-10 from its raw
``.bin`` files, and ``.npy``/``.npz`` files are read with pickling disabled. Tar members are
read in place (no extraction), and large sets are written split by split (CIFAR-10-C one
corruption and severity at a time, STL-10's 100k unlabeled images in chunks) so peak memory
stays bounded.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from dlbench.data.registry import register_dataset
from dlbench.data.store import DatasetError, write_meta, write_split
from dlbench.io import atomic_path

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
# The course scores STL-10 "monkey" as CIFAR-10 "frog" (and back); the other nine classes are shared.
STL10_TO_CIFAR10: dict[int, int] = {0: 0, 1: 2, 2: 1, 3: 3, 4: 4, 5: 5, 6: 7, 7: 6, 8: 8, 9: 9}
CIFAR10_TO_STL10: dict[int, int] = dict(sorted((c, s) for s, c in STL10_TO_CIFAR10.items()))
# CIFAR-10 labels of the nine classes STL-10 really has (all but frog): cifar10's test_stl10 split.
CIFAR10_STL10_SHARED: frozenset[int] = frozenset(c for c, name in enumerate(CIFAR10_CLASSES) if name != "frog")

PROMPT_TEMPLATES = [
    "a photo of a {}.", "a blurry photo of a {}.", "a low resolution photo of a {}.",
    "a photo of the small {}.", "a photo of the large {}.",
]
SEVERITIES = 5
STL10_CHUNK = 2048  # unlabeled STL-10 images converted per step (~57 MB)
SKIP_CHECKSUM_ENV = "DLBENCH_SKIP_CHECKSUM"
CIFAR_LICENSE = "no license stated; the authors ask to cite Krizhevsky (2009), Learning Multiple Layers of Features"


@dataclass(frozen=True)
class RawFile:
    """One original file: its name in raw_dir, official URL, and the checksum to verify a download."""

    name: str
    url: str
    md5: str | None = None
    sha256: str | None = None


# MD5s published by the authors on https://www.cs.toronto.edu/~kriz/cifar.html
CIFAR10_BIN = RawFile("cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                      md5="c32a1d4ab5d03f1284b67883e8d87530")
CIFAR100_BIN = RawFile("cifar-100-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
                       md5="03b5dce01913d631647c71ecec9e9cb8")
# The STL-10 page publishes no checksum; this MD5 is the one torchvision.datasets.STL10 verifies.
STL10_BIN = RawFile("stl10_binary.tar.gz", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                    md5="91f7769df0f17e558f3565bffb0c7dfb")
# The CIFAR-10.1 authors publish no checksums; these MD5s are those verified by MIT LL's
# rai-toolbox (rai_toolbox/datasets/_cifar10p1.py).
_C101 = "https://raw.githubusercontent.com/modestyachts/CIFAR-10.1/master/datasets/"
CIFAR10_1_DATA = RawFile("cifar10.1_v6_data.npy", _C101 + "cifar10.1_v6_data.npy",
                         md5="4fcae82cb1326aec9ed1dc1fc62345b8")
CIFAR10_1_LABELS = RawFile("cifar10.1_v6_labels.npy", _C101 + "cifar10.1_v6_labels.npy",
                           md5="09a97fb7c430502fcbd69d95093a3f85")
# The CIFAR-10.2 authors publish no checksum. The URL is pinned to a repository commit, and the
# SHA-256 (6,393,664 bytes) is the one a third-party study pinned for that commit's file.
CIFAR10_2_TEST = RawFile(
    "cifar102_test.npz",
    "https://github.com/modestyachts/cifar-10.2/raw/521467a52ad494b78ff9c70051099c0d9ba74d40/cifar102_test.npz",
    sha256="e4fd6462bd5141ed293acd52ea570952f65d1bfd4ec9b068f87742f75a7a632e")
# MD5 as listed on the Zenodo record.
CIFAR10_C_TAR = RawFile("CIFAR-10-C.tar", "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1",
                        md5="56bf5dcef84df0e2308c6dcbcbbd8499")


# ---------------------------------------------------------------- download and verify

def _raw_dir(name: str, raw_dir: Path | None) -> Path:
    return Path(raw_dir) if raw_dir is not None else Path("data") / "raw" / name


def fetch(raw_dir: Path, spec: RawFile) -> Path:
    """Return ``raw_dir/spec.name``, downloading and verifying it first if it is not there.

    The download streams into a temp file that is renamed only after its checksum matched,
    so an interrupted or corrupted download never masquerades as the original.
    """
    path = Path(raw_dir) / spec.name
    if path.exists():
        return path
    algo, expected = ("md5", spec.md5) if spec.md5 else ("sha256", spec.sha256)
    digest = hashlib.new(algo, usedforsecurity=False)
    print(f"downloading {spec.url} -> {path}", file=sys.stderr)
    with atomic_path(path) as tmp:
        try:
            request = urllib.request.Request(spec.url, headers={"User-Agent": "dlbench"})
            with urllib.request.urlopen(request, timeout=60) as resp, open(tmp, "wb") as f:
                total, done, next_pct = int(resp.headers.get("Content-Length") or 0), 0, 5
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if total and done * 100 >= next_pct * total:
                        print(f"  {spec.name}: {done * 100 // total}% of {total / 1e6:.1f} MB", file=sys.stderr)
                        next_pct = done * 100 // total + 5
        except (urllib.error.URLError, OSError) as e:
            raise DatasetError(f"{path}: download from {spec.url} failed ({e})") from None
        if total and done != total:
            raise DatasetError(f"{path}: download from {spec.url} stopped after {done} of {total} bytes")
        if os.environ.get(SKIP_CHECKSUM_ENV) == "1" or expected is None:
            print(f"  {spec.name}: checksum NOT verified", file=sys.stderr)
        elif digest.hexdigest() != expected:
            raise DatasetError(f"{path}: {algo} of the download from {spec.url} is {digest.hexdigest()}, expected "
                               f"{expected}; the file was not kept (set {SKIP_CHECKSUM_ENV}=1 to accept it anyway)")
    return path


# ---------------------------------------------------------------- reading original formats

@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Report a truncated or corrupt archive as a DatasetError that names the original file."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile) as e:
        raise DatasetError(f"{path}: truncated or corrupt ({type(e).__name__}: {e}); delete it and rerun "
                           "to download it again") from None


@contextlib.contextmanager
def _open_tar(archive: Path) -> Iterator[tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]]:
    """Open a tar(.gz) for reading members in place; members are keyed by base name."""
    with _reading(archive), tarfile.open(archive, "r:*") as tar:
        yield tar, {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}


def _in_archive_order(archive: Path, members: dict[str, tarfile.TarInfo], names: Sequence[str]) -> list[str]:
    """Check that all ``names`` are present and order them as stored, so a .tar.gz is read in one pass."""
    missing = [n for n in names if n not in members]
    if missing:
        raise DatasetError(f"{archive}: has no member(s) {missing}; truncated, or not the official archive?")
    return sorted(names, key=lambda n: members[n].offset)


def _read_exact(f: IO[bytes], n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DatasetError(f"{what}: truncated (expected {n} more bytes, got {len(data)})")
    return data


def _records(f: IO[bytes], size: int, record: int, what: str, chunk: int | None = None) -> Iterator[np.ndarray]:
    """Yield (k, record) uint8 blocks of a file of fixed-size binary records (CIFAR, STL-10)."""
    if size % record:
        raise DatasetError(f"{what}: {size} bytes is not a whole number of {record}-byte records (truncated?)")
    n = size // record
    step = chunk or max(n, 1)
    for start in range(0, n, step):
        k = min(step, n - start)
        yield np.frombuffer(_read_exact(f, k * record, what), np.uint8).reshape(k, record)


def _all_records(f: IO[bytes], size: int, record: int, what: str) -> np.ndarray:
    blocks = list(_records(f, size, record, what))
    return blocks[0] if blocks else np.empty((0, record), np.uint8)


def _planar_to_hwc(pixels: np.ndarray, size: int, column_major: bool = False) -> np.ndarray:
    """(n, 3*size*size) channel-planar bytes -> (n, size, size, 3); STL-10 stores each plane column by column."""
    x = pixels.reshape(-1, 3, size, size)
    return np.ascontiguousarray(x.transpose(0, 3, 2, 1) if column_major else x.transpose(0, 2, 3, 1))


def _npy_header(f: IO[bytes], what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse a .npy header (shape, fortran order, dtype), refusing pickled object arrays."""
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except ValueError as e:
        raise DatasetError(f"{what}: not a valid .npy file ({e})") from None
    if dtype.hasobject:
        raise DatasetError(f"{what}: holds Python objects; refusing to unpickle")
    return shape, fortran, dtype


def _read_npy(f: IO[bytes], what: str) -> np.ndarray:
    """A whole .npy array from a stream (a file or a tar member), without pickle."""
    shape, fortran, dtype = _npy_header(f, what)
    data = _read_exact(f, int(np.prod(shape)) * dtype.itemsize, what)
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _check(images: np.ndarray, labels: np.ndarray, size: int, n_classes: int, what: str) -> np.ndarray:
    """Validate an image/label pair read from an original file; return int64 labels."""
    if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
        raise DatasetError(f"{what}: images are {images.dtype} {images.shape}, expected uint8 N x {size} x {size} x 3")
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
        raise DatasetError(f"{what}: labels are {labels.dtype} {labels.shape} for {len(images)} images")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DatasetError(f"{what}: labels outside 0..{n_classes - 1}")
    return labels


def _names(f: IO[bytes]) -> list[str]:
    """Class names from a txt meta file: one per line, blank lines ignored."""
    return [line.strip() for line in f.read().decode().splitlines() if line.strip()]


def _expect_classes(found: list[str], expected: list[str], what: str) -> None:
    """The label-space tables assume the official class order; refuse a file that disagrees."""
    if found != expected:
        raise DatasetError(f"{what}: class names {found} differ from the expected {expected}")


# ---------------------------------------------------------------- writing

class _Writer:
    """Writes splits into ``out`` as they are ready and meta.json last, so a partial build has no meta."""

    def __init__(self, out: Path, name: str) -> None:
        self.out, self.name = Path(out), name
        self.splits: dict[str, dict[str, Any]] = {}
        self.out.mkdir(parents=True, exist_ok=True)

    def split(self, split: str, images: np.ndarray, labels: np.ndarray, shift: str = "id", **info: Any) -> None:
        write_split(self.out, split, images, labels)
        self.splits[split] = {"n": int(len(images)), "shift": shift, **info}

    def mapped(self, split: str, images: np.ndarray, labels: np.ndarray, table: dict[int, int], space: str) -> None:
        """Write the images whose label ``table`` maps, relabelled into dataset ``space``'s classes."""
        keep = np.isin(labels, list(table))
        lookup = np.array([table.get(c, -1) for c in range(max(table) + 1)], dtype=np.int64)
        kept = images if keep.all() else images[keep]  # STL-10 keeps every class: no 221 MB copy
        self.split(split, kept, lookup[labels[keep]], shift="natural", label_space=space)

    def finish(self, classes: list[str], sources: list[str], terms: str, size: int) -> None:
        write_meta(self.out, {"name": self.name, "classes": classes, "splits": self.splits,
                              "prompt_templates": PROMPT_TEMPLATES, "source": sources, "license": terms,
                              "image_size": [size, size, 3]})


# ---------------------------------------------------------------- builders

def _build_cifar(out: Path, raw_dir: Path | None, name: str, spec: RawFile, train: Sequence[str], test: str,
                 meta: str, label_bytes: int) -> None:
    """Convert a CIFAR binary archive.

    Records are ``label_bytes`` label bytes (CIFAR-100: coarse, fine; the last one is used)
    followed by 3072 bytes of 32x32 red, green and blue planes, rows top to bottom.
    """
    archive = fetch(_raw_dir(name, raw_dir), spec)
    parts: dict[str, Any] = {}
    with _open_tar(archive) as (tar, members):
        for member in _in_archive_order(archive, members, [meta, test, *train]):
            f, what = tar.extractfile(members[member]), f"{archive}:{members[member].name}"
            if member == meta:
                parts[member] = _names(f)
            else:
                rec = _all_records(f, members[member].size, label_bytes + 3072, what)
                parts[member] = (_planar_to_hwc(rec[:, label_bytes:], 32), rec[:, label_bytes - 1])
    classes = parts.pop(meta)
    if name == "cifar10":
        _expect_classes(classes, CIFAR10_CLASSES, f"{archive}:{meta}")
    w = _Writer(out, name)
    for split, files in (("train", train), ("test", [test])):
        images = np.concatenate([parts[f][0] for f in files])
        labels = _check(images, np.concatenate([parts.pop(f)[1] for f in files]), 32, len(classes),
                        f"{archive} ({split})")
        w.split(split, images, labels)
    if name == "cifar10":
        # the course scores STL-10's monkey as CIFAR-10's frog, so frog images count as monkey here
        w.mapped("test_stl10", images, labels, CIFAR10_TO_STL10, "stl10")
    w.finish(classes, [spec.url], CIFAR_LICENSE, 32)


@register_dataset("cifar10", offline=False, description="CIFAR-10 (binary release), plus its test set in STL-10 labels",
                  splits={"train": 50000, "test": 10000, "test_stl10": 9000}, image_size=32)
def build_cifar10(out: Path, raw_dir: Path | None = None) -> None:
    """train 50000, test 10000 (id), test_stl10: the test set in STL-10's label space (frog scored as monkey)."""
    _build_cifar(out, raw_dir, "cifar10", CIFAR10_BIN, [f"data_batch_{i}.bin" for i in range(1, 6)],
                 "test_batch.bin", "batches.meta.txt", label_bytes=1)


@register_dataset("cifar100", offline=False, description="CIFAR-100 (binary release), 100 fine classes",
                  splits={"train": 50000, "test": 10000}, image_size=32)
def build_cifar100(out: Path, raw_dir: Path | None = None) -> None:
    """train 50000, test 10000 (id), fine labels and fine class names."""
    _build_cifar(out, raw_dir, "cifar100", CIFAR100_BIN, ["train.bin"], "test.bin", "fine_label_names.txt",
                 label_bytes=2)


@register_dataset("stl10", offline=False,
                  description="STL-10 (binary release) at 96x96, plus its test set in CIFAR-10 labels",
                  splits={"train": 5000, "test": 8000, "unlabeled": 100000, "test_cifar10": 7200},
                  image_size=96)
def build_stl10(out: Path, raw_dir: Path | None = None) -> None:
    """train 5000, test 8000, unlabeled 100000 (label -1), test_cifar10 (monkey scored as frog).

    Images are stored as 3 planes of 96x96 written column by column; labels are 1..10.
    """
    archive, px = fetch(_raw_dir("stl10", raw_dir), STL10_BIN), 3 * 96 * 96
    w, arrays = _Writer(out, "stl10"), {}
    with _open_tar(archive) as (tar, members):
        names = ["class_names.txt", "train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"]
        for name in _in_archive_order(archive, members, names):
            f, size, what = tar.extractfile(members[name]), members[name].size, f"{archive}:{members[name].name}"
            if name == "class_names.txt":
                _expect_classes(_names(f), STL10_CLASSES, what)
            elif name == "unlabeled_X.bin":
                with tempfile.TemporaryDirectory(dir=w.out, prefix=".unlabeled.") as tmp:
                    images = np.lib.format.open_memmap(Path(tmp) / "x.npy", "w+", np.uint8, (size // px, 96, 96, 3))
                    done = 0
                    for block in _records(f, size, px, what, chunk=STL10_CHUNK):
                        images[done:done + len(block)] = _planar_to_hwc(block, 96, column_major=True)
                        done += len(block)
                    w.split("unlabeled", images, np.full(len(images), -1, np.int64), labeled=False)
                    del images
            elif name.endswith("_X.bin"):
                arrays[name] = _planar_to_hwc(_all_records(f, size, px, what), 96, column_major=True)
            else:
                arrays[name] = _all_records(f, size, 1, what)[:, 0].astype(np.int64) - 1
    for split in ("train", "test"):
        images = arrays.pop(f"{split}_X.bin")
        labels = _check(images, arrays.pop(f"{split}_y.bin"), 96, 10, f"{archive} ({split})")
        w.split(split, images, labels)
        if split == "test":
            w.mapped("test_cifar10", images, labels, STL10_TO_CIFAR10, "cifar10")
    w.finish(STL10_CLASSES, [STL10_BIN.url], "no license stated; cite Coates, Lee & Ng (AISTATS 2011)", 96)


@register_dataset("cifar10_1", offline=False, description="CIFAR-10.1 v6: 2000 new test images in CIFAR-10 labels",
                  splits={"test": 2000}, image_size=32)
def build_cifar10_1(out: Path, raw_dir: Path | None = None) -> None:
    """test 2000 (natural shift, CIFAR-10 label space) from the two v6 .npy files."""
    raw, arrays = _raw_dir("cifar10_1", raw_dir), []
    for spec in (CIFAR10_1_DATA, CIFAR10_1_LABELS):
        path = fetch(raw, spec)
        with open(path, "rb") as f:
            arrays.append(_read_npy(f, str(path)))
    w = _Writer(out, "cifar10_1")
    w.split("test", arrays[0], _check(*arrays, 32, 10, str(raw)), shift="natural", label_space="cifar10")
    w.finish(CIFAR10_CLASSES, [CIFAR10_1_DATA.url, CIFAR10_1_LABELS.url],
             "MIT (github.com/modestyachts/CIFAR-10.1); images from 80 Million Tiny Images", 32)


@register_dataset("cifar10_2", offline=False, description="CIFAR-10.2: 2000 new test images in CIFAR-10 labels",
                  splits={"test": 2000}, image_size=32)
def build_cifar10_2(out: Path, raw_dir: Path | None = None) -> None:
    """test 2000 (natural shift, CIFAR-10 label space) from ``cifar102_test.npz`` (images N x 32 x 32 x 3)."""
    path = fetch(_raw_dir("cifar10_2", raw_dir), CIFAR10_2_TEST)
    try:
        with _reading(path), np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
            if "label_names" in z.files:
                _expect_classes([str(s) for s in z["label_names"]], CIFAR10_CLASSES, f"{path}:label_names")
    except (KeyError, ValueError, OSError) as e:
        raise DatasetError(f"{path}: truncated or not the official file ({e})") from None
    w = _Writer(out, "cifar10_2")
    w.split("test", images, _check(images, labels, 32, 10, str(path)), shift="natural", label_space="cifar10")
    w.finish(CIFAR10_CLASSES, [CIFAR10_2_TEST.url],
             "no license stated (github.com/modestyachts/cifar-10.2); images from 80 Million Tiny Images", 32)


@register_dataset("cifar10_c", offline=False, description="CIFAR-10-C: every corruption x severity 1..5",
                  splits=None, image_size=32)
def build_cifar10_c(out: Path, raw_dir: Path | None = None) -> None:
    """One split ``<corruption>-<severity>`` per corruption .npy in the archive.

    Each ``<corruption>.npy`` stacks severities 1..5, 10000 images each; ``labels.npy`` holds the
    matching labels (the 10000 test labels, tiled once per severity). Only one severity of one
    corruption is in memory at a time.
    """
    archive = fetch(_raw_dir("cifar10_c", raw_dir), CIFAR10_C_TAR)
    w = _Writer(out, "cifar10_c")
    with _open_tar(archive) as (tar, members):
        corruptions = sorted(n[:-4] for n in members if n.endswith(".npy") and n != "labels.npy")
        order = _in_archive_order(archive, members, ["labels.npy", *(f"{c}.npy" for c in corruptions)])
        all_labels = _read_npy(tar.extractfile(members["labels.npy"]), f"{archive}:labels.npy")
        for name in (n for n in order if n != "labels.npy"):
            f, what = tar.extractfile(members[name]), f"{archive}:{members[name].name}"
            shape, fortran, dtype = _npy_header(f, what)
            if dtype != np.uint8 or fortran or len(shape) != 4 or shape[1:] != (32, 32, 3) or shape[0] % SEVERITIES:
                raise DatasetError(f"{what}: {dtype} {shape}, expected uint8 ({SEVERITIES}k) x 32 x 32 x 3")
            per = shape[0] // SEVERITIES
            if len(all_labels) not in (per, shape[0]):
                raise DatasetError(f"{archive}:labels.npy: {len(all_labels)} labels for {shape[0]} images in {name}")
            for s in range(1, SEVERITIES + 1):
                block = np.frombuffer(_read_exact(f, per * 32 * 32 * 3, what), np.uint8).reshape(per, 32, 32, 3)
                labels = all_labels if len(all_labels) == per else all_labels[(s - 1) * per:s * per]
                w.split(f"{name[:-4]}-{s}", block, _check(block, labels, 32, 10, what), shift="corruption",
                        corruption=name[:-4], severity=s, label_space="cifar10")
    w.finish(CIFAR10_CLASSES, [CIFAR10_C_TAR.url, "https://zenodo.org/records/2535967"],
             "CC BY 4.0 (Zenodo record 2535967)", 32)
