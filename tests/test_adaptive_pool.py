"""The exportable adaptive pooling equals torch's ops: same values and indices, ties and awkward sizes included."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity_case import PARITY_DIR

from network.adaptive_pool import (
    AdaptiveAvgPool2d,
    adaptive_avg_pool2d,
    adaptive_max_pool2d_with_indices,
    adaptive_window_positions,
    adaptive_window_weights,
)

# Heights/widths below, equal to and above the grid, multiples and not; grids 1 (one window), 4 and 14
# (the official maxpool_size, larger than every coarse map of a 256 x 384 input, so windows overlap).
LENGTHS = (1, 2, 3, 5, 8, 12, 13, 16, 23, 28, 29, 48, 57)
GRIDS = (1, 4, 9, 14)


def assert_same_pooling(x: torch.Tensor, size: int) -> None:
    expected_values, expected_indices = F.adaptive_max_pool2d(x, size, return_indices=True)
    values, indices = adaptive_max_pool2d_with_indices(x, size)
    assert indices.dtype == torch.int64 and values.dtype == x.dtype
    assert torch.equal(indices, expected_indices)
    assert torch.equal(values, expected_values)


def test_window_positions_by_hand():
    # 5 cells into 3 windows: [0, 2), [1, 4), [3, 5); padded to ceil(5 / 3) + 1 = 3 by repeating the last
    assert adaptive_window_positions(5, 3, torch.device("cpu")).tolist() == [[0, 1, 1], [1, 2, 3], [3, 4, 4]]
    # 2 cells into 4 windows: each cell is shared by two windows
    assert adaptive_window_positions(2, 4, torch.device("cpu")).tolist() == [[0, 0], [0, 0], [1, 1], [1, 1]]
    weights = adaptive_window_weights(5, 3, torch.float64, torch.device("cpu"))
    assert torch.equal(weights, torch.tensor([[1 / 2, 1 / 2, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0],
                                              [0, 0, 0, 1 / 2, 1 / 2]], dtype=torch.float64))


def test_max_pool_equals_torch_on_the_parity_fixture_matching_maps():
    intermediates = np.load(PARITY_DIR / "case_a_isaid16_intermediates.npz")
    for module in range(3):  # coarse maps 8 x 12, 16 x 24, 32 x 48 pooled to 14 x 14
        certainty = torch.from_numpy(intermediates[f"certainty_{module}"])
        values, indices = adaptive_max_pool2d_with_indices(certainty, 14)
        np.testing.assert_array_equal(indices[:, 0].numpy(), intermediates[f"maxpool_idx_{module}"])
        assert torch.equal(values, certainty.flatten(2).gather(2, indices.flatten(2)).view_as(values))
        assert_same_pooling(certainty, 14)


@pytest.mark.parametrize("size", GRIDS)
def test_max_pool_equals_torch_on_awkward_sizes(size):
    generator = torch.Generator().manual_seed(size)
    for height, width in itertools.product(LENGTHS, LENGTHS):
        x = torch.rand(2, 3, height, width, generator=generator)
        assert_same_pooling(x, size)


@pytest.mark.parametrize("size", GRIDS)
def test_max_pool_ties_and_infinities_follow_torch(size):
    # Few distinct values: most windows hold their maximum several times, the first in row-major order wins.
    generator = torch.Generator().manual_seed(100 + size)
    for height, width in itertools.product(LENGTHS, (3, 12, 29)):
        ties = (torch.rand(2, 2, height, width, generator=generator) * 3).floor()
        assert_same_pooling(ties, size)
        assert_same_pooling(torch.zeros(1, 1, height, width), size)
        with_infinities = torch.where(ties == 0, float("-inf"), ties)
        with_infinities[0, 0] = float("-inf")  # whole windows of -inf keep their first cell, as torch's kernel
        with_infinities[1, 1, 0, 0] = float("inf")
        assert_same_pooling(with_infinities, size)
        assert_same_pooling(ties.contiguous(memory_format=torch.channels_last), size)


def test_max_pool_in_half_precision_equals_torch():
    x = (torch.rand(2, 1, 23, 29, generator=torch.Generator().manual_seed(7)) * 64).floor() / 64
    assert_same_pooling(x.to(torch.bfloat16), 14)
    assert_same_pooling(x.to(torch.float16), 9)


def test_avg_pool_is_torchs_op_in_eager_and_matrix_means_under_export():
    x = torch.rand(2, 3, 23, 29, generator=torch.Generator().manual_seed(3))
    module = AdaptiveAvgPool2d(9)
    assert torch.equal(module(x), F.adaptive_avg_pool2d(x, 9))
    exported = torch.export.export(module, (x,), dynamic_shapes={"x": {2: torch.export.Dim("h", min=2, max=64),
                                                                   3: torch.export.Dim("w", min=2, max=64)}})
    assert "adaptive_avg_pool" not in str(exported.graph)
    for height, width in ((23, 29), (5, 17), (64, 9)):  # one graph, any size
        x = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height))
        torch.testing.assert_close(exported.module()(x), F.adaptive_avg_pool2d(x, 9), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(adaptive_avg_pool2d(x.double(), 4), F.adaptive_avg_pool2d(x.double(), 4))


def test_a_nan_propagates_and_its_index_stays_inside_the_window():
    """A diverged model's matching map can hold NaN: the pool gives NaN there, with an index inside the window
    (before, the index ran past the window and the gather that follows failed)."""
    values = torch.randn(2, 3, 5, 7)
    values[0, 1, 2, 3] = float("nan")
    for size in (2, 3, 8):
        maxima, indices = adaptive_max_pool2d_with_indices(values, size)
        expected, _ = F.adaptive_max_pool2d(values, size, return_indices=True)
        assert torch.equal(maxima.isnan(), expected.isnan())
        assert torch.equal(maxima.nan_to_num(0.0), expected.nan_to_num(0.0))
        assert torch.equal(values.flatten(2).gather(2, indices.flatten(2)).isnan(), maxima.flatten(2).isnan())
