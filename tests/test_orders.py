"""armini.orders: every named order is a permutation, its 8 symmetries differ, helpers invert."""
import pytest
import torch

from armini import orders

SIZES = [(1, 1), (1, 5), (4, 4), (5, 3), (7, 7), (8, 8), (14, 14), (28, 28), (3, 10)]


def is_permutation(order, n):
    return order.dtype == torch.long and torch.equal(order.sort().values, torch.arange(n))


@pytest.mark.parametrize("name", list(orders.NAMED))
@pytest.mark.parametrize("H,W", SIZES)
def test_every_named_order_and_symmetry_is_a_permutation(name, H, W):
    for k in range(8):
        assert is_permutation(orders.named(name, H, W, k), H * W), (name, H, W, k)


@pytest.mark.parametrize("name", list(orders.NAMED))
def test_the_eight_symmetries_are_distinct(name):
    variants = {tuple(orders.named(name, 7, 7, k).tolist()) for k in range(8)}
    assert len(variants) == 8


def test_raster_and_s_curve_by_hand():
    assert orders.raster(2, 3).tolist() == [0, 1, 2, 3, 4, 5]
    assert orders.s_curve(3, 3).tolist() == [0, 1, 2, 5, 4, 3, 6, 7, 8]
    assert orders.named("raster", 2, 3, "flip-lr").tolist() == [2, 1, 0, 5, 4, 3]
    assert orders.named("raster", 2, 3, "transpose").tolist() == [0, 3, 1, 4, 2, 5]  # column by column


def steps_between_neighbours(order, W):
    i, j = order // W, order % W
    return (i.diff().abs() + j.diff().abs())  # 1 for a move to a 4-neighbour


@pytest.mark.parametrize("H,W", [(4, 4), (8, 8), (16, 16), (6, 10), (28, 28), (14, 14), (7, 7)])
def test_hilbert_moves_to_a_neighbour_at_almost_every_step(H, W):
    order = orders.hilbert(H, W)
    jumps = steps_between_neighbours(order, W)
    assert order[0] == 0
    if H % 2 == 0 and W % 2 == 0:
        assert (jumps == 1).all()  # even sides: a true space-filling path, no diagonal step
    else:
        assert (jumps > 1).sum() <= 1 and jumps.max() <= 2  # odd sides: at most one diagonal step


def test_hilbert_is_the_classic_curve_on_a_power_of_two():
    # the 2x2 and 4x4 Hilbert curves as drawn in every textbook (start top-left, end top-right)
    assert orders.hilbert(2, 2).tolist() == [0, 2, 3, 1]
    assert orders.hilbert(4, 4)[[0, -1]].tolist() == [0, 3]


def test_spiral_by_hand_goes_outside_in_along_neighbours():
    assert orders.spiral(3, 3).tolist() == [0, 1, 2, 5, 8, 7, 6, 3, 4]
    assert orders.spiral(3, 4).tolist() == [0, 1, 2, 3, 7, 11, 10, 9, 8, 4, 5, 6]
    assert orders.spiral(1, 3).tolist() == [0, 1, 2] and orders.spiral(3, 1).tolist() == [0, 1, 2]
    for H, W in [(14, 14), (5, 8), (7, 2)]:
        order = orders.spiral(H, W)
        assert (steps_between_neighbours(order, W) == 1).all()  # always to a 4-neighbour
        ring = torch.minimum(torch.minimum(order // W, H - 1 - order // W), torch.minimum(order % W, W - 1 - order % W))
        assert (ring.diff() >= 0).all()  # ring by ring, the middle last
    # every symmetry of the spiral visits a hole around the middle after everything around it
    hole = torch.zeros(8, 8, dtype=torch.bool)
    hole[2:6, 2:6] = True
    for k in range(8):
        assert hole.flatten()[orders.named("spiral", 8, 8, k)[-16:]].all()


def test_rank_inverts_an_order_and_dims_order_keeps_channels_together():
    order = orders.hilbert(5, 6)
    r = orders.rank(order)
    assert torch.equal(order[r], torch.arange(30)) and torch.equal(r[order], torch.arange(30))
    dims = orders.dims_order(torch.tensor([2, 0, 1]), C=3)  # pixels 2, 0, 1 of a 1x3 RGB image
    assert dims.tolist() == [2, 5, 8, 0, 3, 6, 1, 4, 7]
    c, i, j = orders.unravel(dims[:3], (3, 1, 3))
    assert c.tolist() == [0, 1, 2] and i.tolist() == [0, 0, 0] and j.tolist() == [2, 2, 2]


def test_observed_first_and_random_orders():
    observed = torch.zeros(4, 4, dtype=torch.bool)
    observed[:2] = True  # the top half is given
    order = orders.observed_first(observed, orders.s_curve(4, 4))
    assert is_permutation(order, 16)
    assert observed.flatten()[order[:8]].all() and not observed.flatten()[order[8:]].any()
    assert order[8:].tolist() == [8, 9, 10, 11, 15, 14, 13, 12]  # the rest keeps the S-curve
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(orders.random_order(5, 5, g1), orders.random_order(5, 5, g2))
    assert is_permutation(orders.random_order(5, 5), 25)


def test_bad_orders_get_clear_errors():
    with pytest.raises(ValueError, match="unknown order 'zigzag'"):
        orders.named("zigzag", 4, 4)
    with pytest.raises(ValueError, match="symmetry must be 0..7"):
        orders.named("raster", 4, 4, 9)
    with pytest.raises(ValueError, match="not a permutation"):
        orders.check_order(torch.tensor([0, 0, 1]), 3)
    with pytest.raises(ValueError, match="permutation of 0..3"):
        orders.check_order(torch.arange(3), 4)
    assert orders.check_order([2, 0, 1], 3).tolist() == [2, 0, 1]
