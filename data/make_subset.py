"""Regenerate the bundled data files in this folder (see README.md).

    python data/make_subset.py            # needs the official Fashion-MNIST files and scikit-learn

fashion-mnist-subset.npz: from the official files, the first 1000 images of each class
of the training set (10000 images) and the first 200 of each class of the test set
(2000 images), kept in their original order; `train_index` / `test_index` are their
positions in the official files. digits.npz: scikit-learn's 8x8 digits, all 1797.
The arrays are deterministic (the .npz bytes are not: zip stores a timestamp).
"""
import hashlib
from pathlib import Path

import numpy as np

from armini import data

HERE = Path(__file__).resolve().parent
PER_CLASS = {"train": 1000, "test": 200}


def first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first `n` images of each class, in increasing order."""
    keep = np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(10)])
    return np.sort(keep)


def digest(*arrays: np.ndarray) -> str:
    """SHA-256 of the arrays' bytes, to record the content in README.md."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def make_fashion_subset() -> None:
    out = {}
    for split, n in PER_CLASS.items():
        images, labels, where = data.fashion_mnist_arrays(split, source="full")  # checksums verified
        keep = first_per_class(labels, n)
        out[f"{split}_images"], out[f"{split}_labels"] = images[keep], labels[keep]
        out[f"{split}_index"] = keep.astype(np.int32)
        print(f"{split}: {len(keep)} images from {where}; content sha256 {digest(images[keep], labels[keep])}")
    np.savez_compressed(HERE / data.SUBSET_FILE, **out)


def make_digits() -> None:
    from sklearn.datasets import load_digits
    d = load_digits()
    images = d.images.astype(np.uint8)  # (1797, 8, 8), values 0..16
    labels = d.target.astype(np.uint8)
    assert images.max() == 16 and (images == d.images).all()
    np.savez_compressed(HERE / data.DIGITS_FILE, images=images, labels=labels)
    print(f"digits: {len(images)} images; content sha256 {digest(images, labels)}")


if __name__ == "__main__":
    make_fashion_subset()
    make_digits()
    for name in (data.SUBSET_FILE, data.DIGITS_FILE):
        print(f"{name}: {(HERE / name).stat().st_size / 1e6:.2f} MB")
