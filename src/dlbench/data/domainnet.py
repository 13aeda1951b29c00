"""DomainNet (Peng et al., ICCV 2019, "Moment Matching for Multi-Source Domain Adaptation").

Reads the ORIGINAL release (the cleaned version of http://ai.bu.edu/M3SDA/): per domain a zip
``<domain>.zip`` of ``<domain>/<class>/<file>.jpg|png`` and the official lists
``<domain>_train.txt`` / ``<domain>_test.txt`` of ``<domain>/<class>/<file> <label>`` lines,
from ``raw_dir`` (default ``data/raw/domainnet``, shared by ``domainnet`` and ``domainnet40``).
A missing file is downloaded from its official URL. The authors publish NO checksums, so
downloads are not verified (``fetch`` says so on stderr); a damaged zip still fails on its
central directory or member CRCs when it is read.

The real domain is in-distribution, the other five are domain shifts:

- ``train``: real_train.txt minus ``val`` (shift "id")
- ``val``: the first 5% (rounded up, so at least 1) of each class of real_train.txt in list
  order; model selection uses it, never ``test``
- ``test``: real_test.txt (shift "id")
- ``<d>`` for d in clipart, infograph, painting, quickdraw, sketch: ``<d>_test.txt`` (shift "domain")

Images are decoded with Pillow, converted to RGB and preprocessed as CLIP's eval transform
does (short side to ``DOMAINNET_SIZE`` with bicubic, then the centre square), so every consumer
sees the centre crop of non-square images. Members are read from the zips in place (no
extraction), and each split is filled into a memory-mapped temp file inside ``out`` before it
is written, so memory stays bounded; disk needs about twice the largest split (real train at
224 px: ~17 GB).

Class names come from the lists (the directory of each path, one name per label). meta.json's
``classes`` has ``_`` replaced by spaces, as zero-shot prompts need ("aircraft carrier"); the
list names are that with spaces turned back into ``_`` (no DomainNet name contains a space).
"""

from __future__ import annotations

import io
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from dlbench.data.real import RawFile, _raw_dir, _reading, _Writer, fetch
from dlbench.data.registry import register_dataset
from dlbench.data.store import DatasetError

DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
ID_DOMAIN = "real"
SHIFT_DOMAINS = tuple(d for d in DOMAINS if d != ID_DOMAIN)
DOMAINNET_SIZE = 224  # the CLIP ViT-B/16 input side
N_CLASSES = 345
VAL_PERCENT = 5
SUBSET_CLASSES = 40
PROGRESS_EVERY = 10000  # images between progress lines on stderr
HOMEPAGE = "http://ai.bu.edu/M3SDA/"
DOMAINNET_LICENSE = "DomainNet: for research purposes only (see ai.bu.edu/M3SDA); cite Peng et al. 2019"

_BASE = "http://csr.bu.edu/ftp/visda/2019/multi-source/"
_CLEANED = frozenset({"clipart", "painting"})  # served from groundtruth/: the cleaned (de-duplicated) zips
# (train, test) lines of each domain's official lists, cleaned release (TFDS's domainnet counts the same).
OFFICIAL_SIZES: dict[str, tuple[int, int]] = {
    "clipart": (33525, 14604), "infograph": (36023, 15582), "painting": (50416, 21850),
    "quickdraw": (120750, 51750), "real": (120906, 52041), "sketch": (48212, 20916),
}


def zip_file(domain: str) -> RawFile:
    """A domain's image zip. No checksum: the authors publish none."""
    return RawFile(f"{domain}.zip", f"{_BASE}{'groundtruth/' if domain in _CLEANED else ''}{domain}.zip",
                   md5=None, sha256=None)


def list_file(domain: str, part: str) -> RawFile:
    """A domain's official ``train`` or ``test`` list. No checksum: the authors publish none."""
    name = f"{domain}_{part}.txt"
    return RawFile(name, f"{_BASE}domainnet/txt/{name}", md5=None, sha256=None)


# ---------------------------------------------------------------- the lists

@dataclass(frozen=True)
class _Entry:
    """One list line: the member path inside ``<domain>.zip``, its label, and ``file:line`` for errors."""

    member: str
    label: int
    where: str

    @property
    def name(self) -> str:
        return self.member.split("/")[1]


def _read_list(path: Path, domain: str) -> list[_Entry]:
    """Parse ``<domain>/<class>/<file> <label>`` lines (blank lines skipped); a bad line names file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a text list ({e})") from None
    entries = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(None, 1)
        member, label = (parts + [""])[:2]
        dirs = member.split("/")
        if not (label.isascii() and label.isdigit()) or len(dirs) != 3 or dirs[0] != domain or "" in dirs:
            raise DatasetError(f"{path}:{i}: malformed line {line.strip()!r}, "
                               f"expected '{domain}/<class>/<file> <label>'")
        entries.append(_Entry(member, int(label), f"{path}:{i}"))
    return entries


def _class_names(lists: dict[str, list[_Entry]], reference: str) -> list[str]:
    """Class names in label order, from the list paths.

    Every list must give each label one name and each name one label, and every label
    0..N-1 must occur in ``lists[reference]`` (real_train: the other lists may lack a class,
    e.g. painting_train.txt has no t-shirt).
    """
    first: dict[int, _Entry] = {}  # label -> its first line
    label_of: dict[str, int] = {}
    for entries in lists.values():
        for e in entries:
            seen = first.setdefault(e.label, e)
            if seen.name != e.name:
                raise DatasetError(f"{e.where}: label {e.label} is class {e.name!r} here but {seen.name!r} "
                                   f"at {seen.where}")
            other = label_of.setdefault(e.name, e.label)
            if other != e.label:
                raise DatasetError(f"{e.where}: class {e.name!r} has label {e.label} here but {other} at "
                                   f"{first[other].where}")
    present = {e.label for e in lists[reference]}
    n = max(first) + 1 if first else 0
    missing = sorted(set(range(n)) - present)
    if not present or missing:
        raise DatasetError(f"{reference}: has no image of label(s) {missing[:10] or 'any'} of 0..{n - 1}; "
                           "truncated, or not the official list?")
    return [first[c].name for c in range(n)]


def _top_classes(entries: Sequence[_Entry], k: int) -> dict[int, int]:
    """Old -> new label for the ``k`` labels with the most entries (ties: lower label), renumbered in label order."""
    counts = Counter(e.label for e in entries)
    if k > len(counts):
        raise DatasetError(f"a {k}-class subset needs {k} classes, the list has {len(counts)}")
    chosen = sorted(sorted(counts, key=lambda c: (-counts[c], c))[:k])
    return {old: new for new, old in enumerate(chosen)}


def _relabel(entries: Sequence[_Entry], table: dict[int, int]) -> list[_Entry]:
    return [replace(e, label=table[e.label]) for e in entries if e.label in table]


def _hold_out(entries: Sequence[_Entry], percent: int) -> tuple[list[_Entry], list[_Entry]]:
    """(train, val): val is the first ``percent``% (rounded up, so at least 1) of each class, in list order."""
    quota = {c: -(-n * percent // 100) for c, n in Counter(e.label for e in entries).items()}
    taken: Counter[int] = Counter()
    train, val = [], []
    for e in entries:
        if taken[e.label] < quota[e.label]:
            taken[e.label] += 1
            val.append(e)
        else:
            train.append(e)
    return train, val


# ---------------------------------------------------------------- images

def _clip_crop(img: Image.Image, size: int) -> np.ndarray:
    """Short side to ``size`` (bicubic), then the centre ``size`` x ``size`` square.

    The same sizes and offsets as CLIP's torchvision ``Resize(size, BICUBIC)`` + ``CenterCrop(size)``
    (long side truncated, crop offset rounded), so CLIP's own preprocessing of a stored image is a no-op.
    """
    w, h = img.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _decode(data: bytes, size: int, what: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _clip_crop(img.convert("RGB"), size)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{what}: not a readable image ({e})") from None


# ---------------------------------------------------------------- writing

@dataclass(frozen=True)
class _Part:
    """One output split: which list entries, and its meta.json tags."""

    split: str
    entries: list[_Entry]
    shift: str
    domain: str


def _write_part(w: _Writer, zf: zipfile.ZipFile, archive: Path, part: _Part, size: int) -> None:
    """Decode a split's members into a memory-mapped temp array, then write it (bounded memory)."""
    n = len(part.entries)
    labels = np.fromiter((e.label for e in part.entries), np.int64, n)
    with tempfile.TemporaryDirectory(dir=w.out, prefix=f".{part.split}.") as tmp:
        images = (np.lib.format.open_memmap(Path(tmp) / "x.npy", "w+", np.uint8, (n, size, size, 3)) if n
                  else np.zeros((0, size, size, 3), np.uint8))
        for i, e in enumerate(part.entries):
            images[i] = _decode(zf.read(e.member), size, f"{archive}:{e.member}")
            if (i + 1) % PROGRESS_EVERY == 0:
                print(f"  {w.name} {part.split}: {i + 1}/{n} images", file=sys.stderr)
        w.split(part.split, images, labels, shift=part.shift, domain=part.domain)
        del images


def _write_domain(w: _Writer, archive: Path, parts: Sequence[_Part], size: int) -> None:
    """Write the splits read from one domain's zip, after checking that every listed member is in it."""
    with _reading(archive), zipfile.ZipFile(archive) as zf:
        members = set(zf.namelist())
        for part in parts:
            for e in part.entries:
                if e.member not in members:
                    raise DatasetError(f"{archive}: has no member {e.member!r} (listed at {e.where}); "
                                       "truncated, or not the official zip?")
        for part in parts:
            _write_part(w, zf, archive, part, size)


def _build(out: Path, raw_dir: Path | None, name: str, k: int | None) -> None:
    """Build all splits; ``k``: keep only the ``k`` classes with most real_train images (None: all)."""
    raw, size = _raw_dir("domainnet", raw_dir), DOMAINNET_SIZE
    specs = [list_file(ID_DOMAIN, "train"), list_file(ID_DOMAIN, "test"),
             *(list_file(d, "test") for d in SHIFT_DOMAINS)]
    lists = {s.name: _read_list(fetch(raw, s), s.name.rsplit("_", 1)[0]) for s in specs}
    reference = specs[0].name
    names = _class_names(lists, reference)
    table = {c: c for c in range(len(names))} if k is None else _top_classes(lists[reference], k)
    lists = {f: _relabel(entries, table) for f, entries in lists.items()}
    train, val = _hold_out(lists[reference], VAL_PERCENT)
    plan = {ID_DOMAIN: [_Part("train", train, "id", ID_DOMAIN), _Part("val", val, "id", ID_DOMAIN),
                        _Part("test", lists[f"{ID_DOMAIN}_test.txt"], "id", ID_DOMAIN)]}
    plan.update({d: [_Part(d, lists[f"{d}_test.txt"], "domain", d)] for d in SHIFT_DOMAINS})
    w, zips = _Writer(out, name), []
    for domain, parts in plan.items():
        zips.append(zip_file(domain))
        _write_domain(w, fetch(raw, zips[-1]), parts, size)
    classes = [names[old].replace("_", " ") for old in sorted(table)]
    w.finish(classes, [HOMEPAGE, *(s.url for s in zips), *(s.url for s in specs)], DOMAINNET_LICENSE, size)


def _declared_sizes(k: int) -> dict[str, int]:
    """Images per split, used ONLY for job runtime estimates (nothing checks them against a build).

    k = 345: the official list lengths; val (and so train) is an estimate, 5% of real_train plus
    half an image per class for the per-class rounding up. k < 345: the proportional share
    k/345 of each list, an underestimate since the subset takes the largest real classes.
    """
    share = k / N_CLASSES
    real_train, real_test = OFFICIAL_SIZES[ID_DOMAIN]
    val = round(real_train * share * VAL_PERCENT / 100 + k / 2)
    return {"train": round(real_train * share) - val, "val": val, "test": round(real_test * share),
            **{d: round(OFFICIAL_SIZES[d][1] * share) for d in SHIFT_DOMAINS}}


@register_dataset("domainnet", offline=False,
                  description="DomainNet (cleaned): real train/val/test, other five domains' test lists as shifts",
                  splits=_declared_sizes(N_CLASSES), image_size=DOMAINNET_SIZE)
def build_domainnet(out: Path, raw_dir: Path | None = None) -> None:
    """All 345 classes: train/val/test from the real domain, one split per other domain (its test list)."""
    _build(out, raw_dir, "domainnet", None)


@register_dataset("domainnet40", offline=False,
                  description="DomainNet restricted to the 40 classes with most real training images",
                  splits=_declared_sizes(SUBSET_CLASSES), image_size=DOMAINNET_SIZE)
def build_domainnet40(out: Path, raw_dir: Path | None = None) -> None:
    """As ``domainnet``, on the 40 classes with the most images in real_train.txt (ties: lower label),
    relabelled 0..39 in their original label order.

    This is a deterministic rule of this project, NOT the DomainNet-40 class list of Tan et al.
    (which is not reproduced here); results on it are not comparable with papers using that list.
    """
    _build(out, raw_dir, "domainnet40", SUBSET_CLASSES)
