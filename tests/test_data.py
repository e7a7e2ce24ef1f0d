"""Tests for armini.data: IDX files, finding/downloading Fashion-MNIST safely, and the views.

Nothing here touches the internet: downloads go to a local http.server on 127.0.0.1,
and the places searched for the full set are redirected to temporary folders.
"""
import gzip
import hashlib
import http.server
import io
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from armini import data
from armini.data import DataError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No $ARMINI_DATA*, a fresh cache folder, and a fake (empty) system folder, for every test."""
    for name in ("ARMINI_DATA", "ARMINI_DATA_SUBSET", "ARMINI_DATA_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(data, "SYSTEM_DIRS", [tmp_path / "system"])
    monkeypatch.setattr(data, "_WARNED_ARMINI_DATA", set())  # each test starts unwarned


def synthetic_files(n_train=30, n_test=20, seed=0):
    """{file name: unpacked IDX bytes} for a tiny fake Fashion-MNIST."""
    rng = np.random.default_rng(seed)
    files = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        files[data.FILES[split, "images"]] = idx_bytes(images)
        files[data.FILES[split, "labels"]] = idx_bytes(labels)
    return files


def idx_bytes(array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def sha(raw):
    return hashlib.sha256(raw).hexdigest()


def write_dir(directory, files, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for name, raw in files.items():
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return directory


@pytest.fixture
def fake(monkeypatch):
    """Synthetic files whose checksums armini accepts (SHA256 patched)."""
    files = synthetic_files()
    for name, raw in files.items():
        monkeypatch.setitem(data.SHA256, name, sha(raw))
    return files


@pytest.fixture
def server():
    """A local HTTP server. Set server.routes[path] = (bytes, mode), mode in ok | drop; others 404."""
    routes, requests = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body, mode = routes.get(self.path, (None, None))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if mode == "drop":  # promise everything, send half, hang up
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.routes, httpd.requests = routes, requests
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/files/"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def serve(server, files, mode="ok"):
    for name, raw in files.items():
        server.routes[f"/files/{name}.gz"] = (gzip.compress(raw), mode)


def listing(directory):
    """Every file in `directory`, hidden temporary ones included, with its bytes."""
    return {p.name: p.read_bytes() for p in Path(directory).iterdir()} if Path(directory).exists() else {}


# ----------------------------------------------------------------------------- IDX files

@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    arrays = [np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
              np.array([3, 1, 4], dtype=np.uint8),
              np.array([[-5, 70000]], dtype=np.int32)]
    for k, a in enumerate(arrays):
        path = tmp_path / f"a{k}{suffix}"
        data.write_idx(path, a)
        b = data.read_idx(path)
        assert b.dtype == a.dtype and b.shape == a.shape and (b == a).all()


def test_truncated_idx_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        data.read_idx(path)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "x.gz"
    packed = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, (5, 28, 28), np.uint8)))
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="x.gz"):
        data.read_idx(path)


def test_bad_magic_names_the_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="notes.txt.*magic"):
        data.read_idx(path)


def test_count_mismatch(tmp_path, monkeypatch, fake):
    fake = dict(fake)
    fake["train-labels-idx1-ubyte"] = idx_bytes(np.zeros(7, np.uint8))
    monkeypatch.setitem(data.SHA256, "train-labels-idx1-ubyte", sha(fake["train-labels-idx1-ubyte"]))
    monkeypatch.setenv("ARMINI_DATA", str(write_dir(tmp_path / "mine", fake)))
    with pytest.raises(DataError, match="train-images.*30 images but 7 labels"):
        data.load(source="full")


def test_wrong_image_shape(tmp_path, monkeypatch, fake):
    fake = dict(fake)
    fake["t10k-images-idx3-ubyte"] = idx_bytes(np.zeros((20, 32, 32), np.uint8))
    monkeypatch.setitem(data.SHA256, "t10k-images-idx3-ubyte", sha(fake["t10k-images-idx3-ubyte"]))
    monkeypatch.setenv("ARMINI_DATA", str(write_dir(tmp_path / "mine", fake)))
    with pytest.raises(DataError, match=r"t10k-images.*\(N, 28, 28\)"):
        data.load(split="test", source="full")


def test_local_checksum_mismatch_keeps_the_file(tmp_path, monkeypatch, fake):
    folder = write_dir(tmp_path / "mine", fake, gz=False)  # unpacked files are accepted too
    monkeypatch.setitem(data.SHA256, "train-images-idx3-ubyte", "0" * 64)
    monkeypatch.setenv("ARMINI_DATA", str(folder))
    before = listing(folder)
    with pytest.raises(DataError, match=f"train-images-idx3-ubyte: checksum mismatch.*expected 0{{64}}, "
                                        f"got {sha(fake['train-images-idx3-ubyte'])}.*[Dd]elete"):
        data.load(source="full")
    with pytest.raises(DataError):  # auto does not hide a corrupt full set behind the subset
        data.load(source="auto")
    assert listing(folder) == before


# ----------------------------------------------------------------------------- finding the files

def test_search_order(tmp_path, monkeypatch, fake):
    system = write_dir(tmp_path / "system", fake)
    assert data.find_fashion_mnist() == system
    cache = write_dir(data.cache_dir(), fake)
    assert cache == tmp_path / "xdg" / "armini" / "fashion-mnist"
    assert data.find_fashion_mnist() == cache
    mine = write_dir(tmp_path / "mine", fake)
    monkeypatch.setenv("ARMINI_DATA", str(mine))
    assert data.find_fashion_mnist() == mine
    d = data.load(source="full")
    assert len(d) == 30 and d.source.startswith("full Fashion-MNIST") and str(mine) in d.source


def test_cache_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / ".cache" / "armini" / "fashion-mnist"


def test_incomplete_folder_is_skipped(tmp_path, monkeypatch, fake):
    partial = write_dir(tmp_path / "mine", {k: v for k, v in fake.items() if "train" in k})
    monkeypatch.setenv("ARMINI_DATA", str(partial))
    system = write_dir(tmp_path / "system", fake)
    with pytest.warns(UserWarning, match=f"ARMINI_DATA={partial}: {partial} lacks t10k-images-idx3-ubyte, "
                                         f"t10k-labels-idx1-ubyte .*; using the full set in {system} instead"):
        assert data.find_fashion_mnist() == system


def recorded_warnings(call):
    """The warning messages `call()` raises, with Python's own once-per-place filter switched off."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught]


def test_a_missing_armini_data_folder_is_reported_once(tmp_path, monkeypatch):
    """Old code: ARMINI_DATA pointing nowhere was ignored without a word."""
    nowhere = tmp_path / "typo"
    monkeypatch.setenv("ARMINI_DATA", str(nowhere))
    first = recorded_warnings(lambda: data.load(limit=3))
    assert first == [f"ARMINI_DATA={nowhere} is not an existing folder; using the bundled subset "
                     f"{data.BUNDLED_DIR / data.SUBSET_FILE} instead"]
    assert recorded_warnings(lambda: data.load(limit=3)) == []  # once per folder and process
    with pytest.raises(DataError, match=f"ARMINI_DATA={nowhere} is not an existing folder"):
        data.load(source="full")  # the error says it too
    elsewhere = tmp_path / "other-typo"
    monkeypatch.setenv("ARMINI_DATA", str(elsewhere))
    assert len(recorded_warnings(lambda: data.load(limit=3))) == 1  # another folder: warned again


def test_a_complete_armini_data_folder_gives_no_warning(tmp_path, monkeypatch, fake):
    monkeypatch.setenv("ARMINI_DATA", str(write_dir(tmp_path / "mine" / "fashion-mnist", fake).parent))
    assert recorded_warnings(lambda: data.load(source="full")) == []


def test_missing_full_set_explains_the_fixes(tmp_path):
    with pytest.raises(DataError) as err:
        data.load(source="full")
    msg = str(err.value)
    for needle in ("ARMINI_DATA", str(data.cache_dir()), str(tmp_path / "system"),
                   "dataset-fashion-mnist", "download=True"):
        assert needle in msg


def test_auto_falls_back_to_subset_and_env_forces_it(tmp_path, monkeypatch, fake):
    d = data.load(limit=3)
    assert d.source.startswith("bundled subset") and "first 3" in d.source
    monkeypatch.setenv("ARMINI_DATA", str(write_dir(tmp_path / "mine", fake)))
    assert data.load().source.startswith("full")
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    assert data.load().source.startswith("bundled subset")
    assert data.load(source="subset").source.startswith("bundled subset")
    assert data.load(source="full").source.startswith("full")  # an explicit argument wins


def test_raw_arrays_are_cached_in_process():
    a = data.fashion_mnist_arrays("train", source="subset")
    b = data.fashion_mnist_arrays("train", source="subset")
    assert a[0] is b[0]


# ----------------------------------------------------------------------------- downloading

def test_download_ok(tmp_path, monkeypatch, server, fake):
    serve(server, fake)
    monkeypatch.setenv("ARMINI_DATA_URL", server.url)
    d = data.load(split="test", source="full", download=True)
    cache = data.cache_dir()
    assert sorted(listing(cache)) == sorted(name + ".gz" for name in fake)  # no temporary files left
    assert len(d) == 20 and str(cache) in d.source
    n = len(server.requests)
    data.load(split="test", source="full", download=True)  # already there: no new request
    assert len(server.requests) == n


def test_download_checksum_mismatch_leaves_nothing(tmp_path, server, fake):
    serve(server, fake)
    bad = {name: "f" * 64 for name in fake}
    root = tmp_path / "dl"
    with pytest.raises(DataError, match="checksum mismatch.*nothing was saved"):
        data.download_fashion_mnist(root, base_url=server.url, checksums=bad)
    assert listing(root) == {}


def test_failed_download_keeps_a_good_file(tmp_path, server, fake):
    root = write_dir(tmp_path / "dl", {"train-images-idx3-ubyte": fake["train-images-idx3-ubyte"]})
    before = listing(root)
    serve(server, {name: b"corrupt" + raw for name, raw in fake.items()})
    checksums = {name: sha(raw) for name, raw in fake.items()}
    with pytest.raises(DataError, match="train-labels.*checksum mismatch"):
        data.download_fashion_mnist(root, base_url=server.url, checksums=checksums)
    assert listing(root) == before
    assert "/files/train-images-idx3-ubyte.gz" not in server.requests  # never fetched again


@pytest.mark.parametrize("mode", ["404", "drop"])
def test_broken_server_leaves_nothing(tmp_path, server, fake, mode):
    if mode == "drop":
        serve(server, fake, mode="drop")  # else: no routes, every request is a 404
    root = tmp_path / "dl"
    checksums = {name: sha(raw) for name, raw in fake.items()}
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*nothing was saved"):
        data.download_fashion_mnist(root, base_url=server.url, checksums=checksums, timeout=10)
    assert listing(root) == {}


DEAD_PID = 2**31 - 1  # no process has it


@pytest.mark.parametrize("ready", [False, True], ids=["downloading", "already-there"])
def test_stale_part_files_of_killed_downloads_are_removed(tmp_path, server, fake, ready):
    """Old code: a download killed midway left a hidden .part file forever."""
    serve(server, fake)
    root = write_dir(tmp_path / "dl", fake if ready else {})
    stale = [root / ".train-images-idx3-ubyte.gz.k2j4_x9q.part",  # old naming: no process id
             root / f".t10k-labels-idx1-ubyte.gz.{DEAD_PID}.abcd1234.part"]  # a process that is gone
    for path in stale:
        path.write_bytes(b"half a download")
    mine = root / "notes.part"  # not ours: kept
    mine.write_bytes(b"keep me")
    checksums = {name: sha(raw) for name, raw in fake.items()}
    data.download_fashion_mnist(root, base_url=server.url, checksums=checksums)
    assert sorted(listing(root)) == sorted([name + ".gz" for name in fake] + ["notes.part"])
    assert (len(server.requests) == 0) == ready


def test_downloads_get_the_users_normal_permissions(tmp_path, server, fake):
    """Old code: downloads kept mkstemp's private mode 0600."""
    serve(server, fake)
    checksums = {name: sha(raw) for name, raw in fake.items()}
    old = os.umask(0o022)
    try:
        root = data.download_fashion_mnist(tmp_path / "dl", base_url=server.url, checksums=checksums)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in root.iterdir()}
    assert modes == {name + ".gz": 0o644 for name in fake}


# ----------------------------------------------------------------------------- bundled files

def damaged(raw: bytes, how: str) -> bytes:
    """The bytes of a bundled .npz file, damaged in one of the ways a learner's copy can be."""
    if how == "truncated":
        return raw[: len(raw) // 2]
    if how == "empty":
        return b""
    if how == "flipped-byte":
        b = bytearray(raw)
        b[len(b) // 3] ^= 0xFF
        return bytes(b)
    if how == "not-an-npz":
        return b"<html>Git LFS pointer or an error page</html>\n" * 20
    if how == "missing-array":  # the labels are gone (old code: KeyError: 'test_labels')
        with np.load(io.BytesIO(raw)) as f:
            arrays = {k: f[k] for k in f.files if not k.endswith("labels")}
        out = io.BytesIO()
        np.savez(out, **arrays)
        return out.getvalue()
    raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated", "empty", "flipped-byte", "not-an-npz", "missing-array"])
@pytest.mark.parametrize("name", ["fashion-mnist", "digits"])
def test_a_damaged_bundled_file_is_named_with_the_fix(tmp_path, monkeypatch, name, how):
    """Old code: raw BadZipFile, EOFError, KeyError('test_labels') or numpy's allow_pickle hint."""
    file = data.SUBSET_FILE if name == "fashion-mnist" else data.DIGITS_FILE
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / file).write_bytes(damaged((data.BUNDLED_DIR / file).read_bytes(), how))
    monkeypatch.setattr(data, "BUNDLED_DIR", folder)
    with pytest.raises(DataError) as err:
        data.load(name, "test", source="subset")
    message = str(err.value)
    assert str(folder / file) in message
    assert f"git checkout -- data/{file}" in message and "python data/make_subset.py" in message
    assert "allow_pickle" not in message


# ----------------------------------------------------------------------------- views

@pytest.fixture
def subset(monkeypatch):
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")


def test_quantize():
    x = np.arange(256, dtype=np.uint8)
    assert (data.quantize(x, 256) == x).all()
    assert (data.quantize(x, 2) == (x >= 128)).all()
    q = data.quantize(x, 5)
    assert q.min() == 0 and q.max() == 4 and (np.diff(q.astype(int)) >= 0).all()
    assert torch.equal(data.quantize(torch.arange(256), 4), torch.arange(256) // 64)
    assert (data.quantize(np.arange(17), 2, native=17) == (np.arange(17) >= 9)).all()
    for bad in (1, 257):
        with pytest.raises(ValueError):
            data.quantize(x, bad)
    with pytest.raises(ValueError):
        data.quantize(np.array([300]), 4)


def test_levels(subset):
    for k in (256, 16, 2):
        d = data.load(levels=k, limit=200)
        assert d.levels == k and d.images.dtype == torch.int64
        assert d.images.min() >= 0 and d.images.max() == k - 1
    assert torch.equal(data.load(levels=2, limit=50).images, (data.load(limit=50).images >= 128).long())


def test_sizes(subset):
    full = data.load(limit=10)
    assert full.shape == (1, 28, 28) and full.images.shape == (10, 1, 28, 28)
    for s in (14, 7):
        assert data.load(size=s, limit=10).images.shape == (10, 1, s, s)
    small = data.load(size=14, limit=10).images.float()
    blocks = full.images.float().reshape(10, 1, 14, 2, 14, 2).mean((3, 5))
    assert (small - blocks).abs().max() <= 0.5  # an area average, rounded
    for bad in (5, 0, 56, 13.5):
        with pytest.raises(ValueError, match="divisor"):
            data.load(size=bad, limit=10)


def test_color(subset):
    d = data.load(color=True, levels=64, size=14, limit=100)
    assert d.images.shape == (100, 3, 14, 14) and d.shape == (3, 14, 14)
    assert d.images.min() >= 0 and d.images.max() < 64
    r, g, b = d.images.float().unbind(1)
    assert not torch.equal(r, g) and not torch.equal(g, b)
    assert torch.corrcoef(torch.stack([r.flatten(), g.flatten()]))[0, 1] > 0.5
    assert torch.equal(d.images, data.load(color=True, levels=64, size=14, limit=100).images)


def test_deterministic_labels_and_limit(subset):
    a, b = data.load("fashion-mnist", "test"), data.load("fashion-mnist", "test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert len(a) == 2000 and len(data.load()) == 10000
    assert a.labels.dtype == torch.int64 and a.labels.min() == 0 and a.labels.max() == 9
    assert torch.bincount(a.labels).tolist() == [200] * 10
    assert a.classes[0] == "T-shirt/top" and a.classes[9] == "Ankle boot" and len(a.classes) == 10
    c = data.load("fashion-mnist", "test", limit=7)
    assert torch.equal(c.images, a.images[:7]) and "test" in repr(c)
    x, y = a[3]
    assert x.shape == (1, 28, 28) and y == a.labels[3]


def test_batches(subset):
    d = data.load(limit=25)
    seen = torch.cat([y for _, y in d.batches(10, generator=torch.Generator().manual_seed(0))])
    assert len(seen) == 25 and torch.equal(seen.sort().values, d.labels.sort().values)
    xs = [x for x, _ in d.batches(10, shuffle=False)]
    assert [len(x) for x in xs] == [10, 10, 5] and torch.equal(torch.cat(xs), d.images)


def test_digits():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert train.images.shape == (1500, 1, 8, 8) and test.images.shape == (297, 1, 8, 8)
    assert train.levels == 17 and train.images.max() == 16 and train.images.min() == 0
    assert set(train.labels.unique().tolist()) == set(range(10)) and train.classes[3] == "3"
    assert "digits" in train.source
    b = data.load("digits", levels=2, size=4, color=True)
    assert b.images.shape == (1500, 3, 4, 4) and b.images.max() == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("cifar10")
    with pytest.raises(ValueError, match="split"):
        data.load(split="val")
    with pytest.raises(ValueError, match="source"):
        data.load(source="internet")
    with pytest.raises(ValueError, match="limit"):
        data.load(limit=0)


@pytest.mark.skipif(not all((DEBIAN / (n + ".gz")).exists() for n in data.FILES.values()),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_subset_matches_official_files():
    npz = np.load(data.BUNDLED_DIR / data.SUBSET_FILE)
    for split, n in (("train", 1000), ("test", 200)):
        images = data.read_idx(DEBIAN / (data.FILES[split, "images"] + ".gz"))
        labels = data.read_idx(DEBIAN / (data.FILES[split, "labels"] + ".gz"))
        index = npz[f"{split}_index"]
        assert (np.diff(index) > 0).all()
        assert (npz[f"{split}_images"] == images[index]).all()
        assert (npz[f"{split}_labels"] == labels[index]).all()
        assert np.bincount(npz[f"{split}_labels"]).tolist() == [n] * 10
        # the first n of each class: no image of a class is skipped before the last one kept
        for c in range(10):
            assert (index[npz[f"{split}_labels"] == c] == np.flatnonzero(labels == c)[:n]).all()
