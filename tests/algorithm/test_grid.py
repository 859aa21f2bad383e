"""The group arithmetic every module shares (`grid.group_columns` and
friends): `group_size=-1` is one group spanning the row."""

import numpy as np
import pytest

from keras_gptq.algorithm import grid


@pytest.mark.parametrize("group_size,columns,size,groups", [
    (-1, 48, 48, 1), (16, 48, 16, 3), (32, 48, 32, 2), (48, 48, 48, 1),
    (1, 5, 1, 5)])
def test_group_columns_and_count(group_size, columns, size, groups):
    assert grid.group_columns(group_size, columns) == size
    assert grid.num_groups(group_size, columns) == groups


@pytest.mark.parametrize("group_size,columns", [(-1, 10), (4, 10), (10, 10)])
def test_contiguous_g_idx_matches_rtn_and_the_fitted_grid(group_size,
                                                          columns):
    g_idx = grid.contiguous_g_idx(group_size, columns)
    assert g_idx.dtype == np.int32 and g_idx.shape == (columns,)
    assert g_idx.max() + 1 == grid.num_groups(group_size, columns)
    size = columns if group_size == -1 else group_size
    np.testing.assert_array_equal(g_idx, [i // size for i in range(columns)])
    w = np.random.default_rng(0).normal(size=(3, columns)).astype(np.float32)
    _, scale, _, rtn_g_idx = grid.rtn_quantize(w, 4, group_size, False)
    np.testing.assert_array_equal(rtn_g_idx, g_idx)
    assert scale.shape == (3, grid.num_groups(group_size, columns))


def test_has_contiguous_groups_only_for_the_natural_order():
    natural = grid.contiguous_g_idx(4, 12)
    assert grid.has_contiguous_groups(natural, 4)
    assert grid.has_contiguous_groups(np.zeros(12, np.int32), -1)
    assert not grid.has_contiguous_groups(natural[::-1], 4)
    assert not grid.has_contiguous_groups(natural, 6)  # other group size
