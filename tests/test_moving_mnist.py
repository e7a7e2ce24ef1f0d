"""Tests for Moving MNIST (armini.data): the bundled MNIST sample, the generator, the standard test file.

Nothing here touches the internet: the download goes to a local http.server on 127.0.0.1, and the
places searched for mnist_test_seq.npy are redirected to temporary folders.
"""
import gzip
import hashlib
import http.server
import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from armini import data
from armini.data import DataError


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No $ARMINI_DATA, a fresh cache folder, the Fashion-MNIST subset."""
    monkeypatch.delenv("ARMINI_DATA", raising=False)
    monkeypatch.setenv("ARMINI_DATA_SUBSET", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


# ----------------------------------------------------------------------------- the bundled MNIST sample

def test_mnist_sample_is_real_digits_with_disjoint_splits():
    train, train_labels, where = data.mnist_arrays("train")
    test, test_labels, _ = data.mnist_arrays("test")
    assert train.shape == (1500, 28, 28) and test.shape == (500, 28, 28) and train.dtype == np.uint8
    assert np.bincount(train_labels).tolist() == [150] * 10 and np.bincount(test_labels).tolist() == [50] * 10
    assert "MNIST sample" in where
    assert train.max() == 255 and (train[:, 0, :] == 0).mean() > 0.95  # ink on a black border, as in MNIST
    seen = {img.tobytes() for img in train}
    assert not any(img.tobytes() in seen for img in test)  # no digit in both splits


def test_sha256sums_file_matches_the_checked_digests():
    lines = (data.MNIST_DIR / "SHA256SUMS").read_text().split("\n")
    listed = dict(reversed(line.split("  ")) for line in lines if line)
    assert listed == data.MNIST_SHA256
    for name, digest in data.MNIST_SHA256.items():
        assert hashlib.sha256(gzip.decompress((data.MNIST_DIR / (name + ".gz")).read_bytes())).hexdigest() == digest


def copy_sample(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "mnist"
    shutil.copytree(data.MNIST_DIR, folder)
    monkeypatch.setattr(data, "MNIST_DIR", folder)
    return folder


@pytest.mark.parametrize("how", ["other-digits", "truncated", "missing"])
def test_a_damaged_mnist_sample_is_named_with_the_fix(tmp_path, monkeypatch, how):
    folder = copy_sample(tmp_path, monkeypatch)
    path = folder / (data.MNIST_FILES["test", "images"] + ".gz")
    if how == "other-digits":  # a valid IDX file with other contents: only the checksum can tell
        images = data.read_idx(path).copy()
        images[0, 14, 14] ^= 1
        data.write_idx(path, images)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path.unlink()
    with pytest.raises(DataError) as err:
        data.moving_mnist(2, split="test")
    message = str(err.value)
    assert str(path) in message and "git checkout -- data/mnist/" in message and "source='fashion'" in message
    if how == "other-digits":
        assert "checksum mismatch" in message
    data.moving_mnist(2, split="train")  # the other split's files are fine


# ----------------------------------------------------------------------------- the generator

def test_shapes_levels_and_dtype():
    d = data.moving_mnist(4)
    assert d.videos.shape == (4, 16, 1, 32, 32) and d.videos.dtype == torch.long and d.shape == (16, 1, 32, 32)
    assert d.labels.shape == (4, 2) and d.levels == 256 and d.classes == data.DIGIT_CLASSES
    assert d.positions.shape == d.velocities.shape == (4, 2, 16, 2)
    assert 0 <= d.videos.min() and d.videos.max() <= 255 and d.videos.max() > 200
    b = data.moving_mnist(4, levels=2, dtype=torch.uint8)
    assert b.videos.dtype == torch.uint8 and set(b.videos.unique().tolist()) == {0, 1}
    assert torch.equal(b.videos.long(), d.videos * 2 // 256)  # floor(v * K / 256), as data.load
    videos, labels = next(b.batches(3, shuffle=False))
    assert videos.dtype == torch.long and videos.shape == (3, 16, 1, 32, 32) and labels.shape == (3, 2)
    assert "moving-mnist" in repr(d) and "seed 0" in d.source
    from armini.train import as_images_labels
    assert as_images_labels(d)[0] is d.videos  # fit(model, videos) trains on the videos


def test_official_setting():
    d = data.moving_mnist(2, **data.MOVING_MNIST_OFFICIAL)
    assert d.videos.shape == (2, 20, 1, 64, 64)
    assert "28x28 items" in d.source and "3.6 px/frame" in d.source  # 0.1 of the free range 64 - 28
    speeds = d.velocities.norm(dim=-1)
    assert torch.allclose(speeds, torch.full_like(speeds, 3.6))


def test_digits_stay_inside_the_canvas():
    d = data.moving_mnist(64, digits=1, frames=24, speed=3.0)  # fast: many bounces
    free = 32 - 14
    assert d.positions.min() >= 0 and d.positions.max() <= free
    assert d.positions.min() == 0 and d.positions.max() == free  # some digit reached each wall
    ink = d.videos.sum(dim=(2, 3, 4))  # (N, T): a digit cut by the border would lose ink
    assert (ink == ink[:, :1]).all()


def test_nothing_is_drawn_outside_the_digits_boxes():
    d = data.moving_mnist(16, digits=2)
    corner = d.positions.floor().long()  # (N, D, T, 2)
    inside = torch.zeros(d.videos.shape, dtype=torch.bool)
    for i in range(16):
        for k in range(2):
            for t in range(16):
                r, c = corner[i, k, t].tolist()
                inside[i, t, 0, r:r + 14, c:c + 14] = True
    assert (d.videos[~inside] == 0).all() and (d.videos[inside] > 0).any()


def test_velocity_flips_sign_exactly_at_the_walls():
    d = data.moving_mnist(64, frames=30, speed=2.5)
    free = 32 - 14
    p, v = d.positions.numpy(), d.velocities.numpy()  # (N, D, T, 2)
    flipped = np.sign(v[:, :, 1:]) != np.sign(v[:, :, :-1])  # from frame t to t + 1
    at_wall = (p[:, :, 1:] == 0) | (p[:, :, 1:] == free)
    assert flipped.sum() > 20
    assert (flipped == at_wall).all()
    assert np.allclose(np.abs(v), np.abs(v[:, :, :1]))  # a bounce keeps the speed
    # between bounces the digit moves in a straight line: x_{t+1} = x_t + v_t
    moved = ~at_wall
    assert np.allclose((p[:, :, 1:] - p[:, :, :-1])[moved], v[:, :, :-1][moved], atol=1e-4)


def test_bounce_by_hand():
    """Rows start at 0.5 moving up (-1) with 10 rows of room; columns start at 9 moving right (+1.5)."""
    p, v = data.trajectories(np.array([0.5, 9.0]), np.array([-1.0, 1.5]), frames=4, high=10)
    assert p.tolist() == [[0.5, 9.0], [0.0, 10.0], [1.0, 8.5], [2.0, 7.0]]
    assert v.tolist() == [[-1.0, 1.5], [1.0, -1.5], [1.0, -1.5], [1.0, -1.5]]


def test_digits_combine_by_pixelwise_maximum():
    glyphs = np.array([[[[100, 200], [50, 0]], [[150, 10], [255, 0]]]], dtype=np.uint8)  # (1, 2, 2, 2)
    positions = np.zeros((1, 2, 1, 2))  # both at the top-left corner, one frame
    positions[0, 1, 0] = [0, 1]  # the second one column to the right
    canvas = data.render_videos(glyphs, positions, size=3)
    assert canvas[0, 0].tolist() == [[100, 200, 10], [50, 255, 0], [0, 0, 0]]  # max, not sum (would wrap)


def test_same_seed_same_videos_and_prefixes():
    a, b = data.moving_mnist(6, seed=3), data.moving_mnist(6, seed=3)
    assert torch.equal(a.videos, b.videos) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.videos, data.moving_mnist(6, seed=4).videos)
    first = data.moving_mnist(2, seed=3)
    assert torch.equal(first.videos, a.videos[:2])  # the first k videos do not depend on n
    longer = data.moving_mnist(2, seed=3, frames=20)
    assert torch.equal(longer.videos[:, :16], a.videos[:2])  # nor on the number of frames


def test_train_and_test_use_disjoint_digits():
    """Single 28x28 digits on 64x64: each frame shows one source image whole, so it can be found."""
    train_images = {img.tobytes() for img in data.mnist_arrays("train")[0]}
    test_images = {img.tobytes() for img in data.mnist_arrays("test")[0]}
    for split, own, other in (("train", train_images, test_images), ("test", test_images, train_images)):
        d = data.moving_mnist(20, digits=1, size=64, frames=2, split=split)
        r, c = d.positions[:, 0, 0].floor().long().T.tolist()
        crops = [d.videos[i, 0, 0, r[i]:r[i] + 28, c[i]:c[i] + 28].numpy().astype(np.uint8).tobytes()
                 for i in range(20)]
        assert all(crop in own and crop not in other for crop in crops)
    train, test = data.moving_mnist(5, split="train"), data.moving_mnist(5, split="test")
    assert not torch.allclose(train.positions, test.positions)  # the split is part of the seed


def test_starts_and_directions_are_spread_uniformly():
    d = data.moving_mnist(2000, digits=1, frames=1)
    start = d.positions[:, 0, 0] / (32 - 14)  # (N, 2) in [0, 1]
    angle = torch.atan2(d.velocities[:, 0, 0, 0], d.velocities[:, 0, 0, 1])  # (N,) in (-pi, pi]
    assert (start.mean(0) - 0.5).abs().max() < 0.03 and (start.std(0) - 12 ** -0.5).abs().max() < 0.02
    quarter = torch.histc(angle, bins=4, min=-np.pi, max=np.pi) / 2000
    assert (quarter - 0.25).abs().max() < 0.04


def test_moving_fashion_mnist():
    d = data.moving_mnist(3, source="fashion", frames=4)
    assert d.name == "moving-fashion-mnist" and d.classes == data.FASHION_CLASSES
    assert "Fashion-MNIST" in d.source or "subset" in d.source
    assert d.videos.shape == (3, 4, 1, 32, 32)


def test_digit_size_and_speed():
    d = data.moving_mnist(3, size=16, frames=3, speed=0)
    assert "7x7 items" in d.source and torch.equal(d.videos[:, 0], d.videos[:, 2])  # speed 0: no motion
    assert data.moving_mnist(1, size=64, digit_size=14).positions.max() <= 50


@pytest.mark.parametrize("kwargs, needle", [
    ({"source": "emnist"}, "source must be one of"),
    ({"split": "val"}, "split must be"),
    ({"digit_size": 5}, "digit_size must divide 28"),
    ({"size": 8, "digit_size": 14}, "digit_size must divide 28"),
    ({"frames": 0}, "frames must be a positive whole number"),
    ({"speed": -1}, "speed must be"),
    ({"levels": 1}, "levels must be between"),
])
def test_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        data.moving_mnist(2, **kwargs)


# ----------------------------------------------------------------------------- the standard test file

def fake_test_seq(n=3, seed=0) -> bytes:
    """The bytes of a tiny stand-in for mnist_test_seq.npy: (20, n, 64, 64) uint8, time first."""
    array = np.random.default_rng(seed).integers(0, 256, size=(20, n, 64, 64), dtype=np.uint8)
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


@pytest.fixture
def fake(monkeypatch):
    raw = fake_test_seq()
    monkeypatch.setattr(data, "MNIST_TEST_SEQ_SHA256", hashlib.sha256(raw).hexdigest())
    return raw


def test_missing_test_seq_names_the_generator_and_the_download(tmp_path):
    with pytest.raises(DataError) as err:
        data.load_mnist_test_seq()
    message = str(err.value)
    for needle in ("mnist_test_seq.npy", "ARMINI_DATA", "download=True", data.MNIST_TEST_SEQ_URL,
                   "moving_mnist(10000, frames=20, size=64, digits=2, split='test')", str(data.video_cache_dir())):
        assert needle in message


def test_test_seq_is_read_from_armini_data_time_first(tmp_path, monkeypatch, fake):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mnist_test_seq.npy").write_bytes(fake)
    monkeypatch.setenv("ARMINI_DATA", str(tmp_path / "mine"))
    d = data.load_mnist_test_seq()
    stored = np.load(io.BytesIO(fake))  # (T, N, H, W)
    assert d.videos.shape == (3, 20, 1, 64, 64) and d.shape == (20, 1, 64, 64)
    assert np.array_equal(d.videos[1, 5, 0].numpy(), stored[5, 1])  # video 1, frame 5
    assert len(data.load_mnist_test_seq(limit=2, levels=2)) == 2
    assert str(tmp_path / "mine") in d.source


def test_test_seq_checksum_mismatch_is_clear_and_keeps_the_file(tmp_path, monkeypatch, fake):
    path = tmp_path / "mnist_test_seq.npy"
    path.write_bytes(fake_test_seq(seed=1))  # a valid .npy of the right shape, but other videos
    monkeypatch.setenv("ARMINI_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"mnist_test_seq.npy: checksum mismatch.*download=True"):
        data.load_mnist_test_seq()
    assert path.read_bytes() == fake_test_seq(seed=1)  # never deleted


@pytest.fixture
def server():
    """A local HTTP server on 127.0.0.1 serving server.routes[path] = (bytes, mode), mode ok | drop."""
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
            self.wfile.write(body[: len(body) // 2] if mode == "drop" else body)  # drop: hang up halfway
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.routes, httpd.requests = routes, requests
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/seq/mnist_test_seq.npy"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_download_test_seq(server, fake):
    server.routes["/seq/mnist_test_seq.npy"] = (fake, "ok")
    d = data.load_mnist_test_seq(download=True, url=server.url)
    cache = data.video_cache_dir()
    assert [p.name for p in cache.iterdir()] == ["mnist_test_seq.npy"]  # no temporary left behind
    assert (cache / "mnist_test_seq.npy").read_bytes() == fake and len(d) == 3
    data.load_mnist_test_seq(download=True, url=server.url)  # already there: not fetched again
    assert len(server.requests) == 1


@pytest.mark.parametrize("mode", ["checksum", "drop", "404"])
def test_a_failed_download_leaves_nothing(tmp_path, server, fake, mode):
    if mode != "404":
        server.routes["/seq/mnist_test_seq.npy"] = (fake_test_seq(seed=1) if mode == "checksum" else fake, mode)
    root = tmp_path / "dl"
    needle = {"checksum": "checksum mismatch", "drop": "connection ended", "404": "failed"}[mode]
    with pytest.raises(DataError, match=f"{needle}.*nothing was saved"):
        data.download_mnist_test_seq(root, url=server.url, timeout=10)
    assert list(root.iterdir()) == []
