import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hired.selection import even_positions, random_tokens, spread_tokens, top_tokens


def test_keeps_top_k_in_spatial_order():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2])
    assert top_tokens(scores, 3).tolist() == [1, 2, 3]


def test_ties_go_to_the_lower_index():
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert top_tokens(scores, 2).tolist() == [0, 1]


def test_never_picks_invalid_tokens():
    scores = torch.tensor([9.0, 8.0, 0.1, 0.2, 7.0])
    valid = torch.tensor([False, True, True, True, False])
    assert top_tokens(scores, 2, valid).tolist() == [1, 3]
    assert top_tokens(scores, 3, valid).tolist() == [1, 2, 3]


def test_more_than_the_valid_tokens_is_an_error():
    with pytest.raises(ValueError, match="2 valid"):
        top_tokens(torch.ones(4), 3, torch.tensor([True, False, True, False]))


def test_zero_is_allowed():
    assert top_tokens(torch.ones(4), 0).tolist() == []


# Spreading and random draws: the building blocks of the "uniform", "random" and "prumerge+" strategies.


def grid_coords(tokens, side=24):
    return [(t // side, t % side) for t in tokens.tolist()]


def test_even_positions_are_cell_centres():
    assert even_positions(12, 24).tolist() == list(range(1, 24, 2))
    assert even_positions(1, 24).tolist() == [12]
    assert even_positions(3, 10).tolist() == [1, 5, 8]  # floor(10/6), floor(30/6), floor(50/6)
    assert even_positions(24, 24).tolist() == list(range(24))
    assert even_positions(0, 24).tolist() == []
    with pytest.raises(ValueError):
        even_positions(25, 24)


def test_spread_144_of_a_full_24x24_partition_is_the_odd_lattice():
    kept = spread_tokens(torch.ones(576, dtype=torch.bool), 144)
    odd = range(1, 24, 2)
    assert grid_coords(kept) == [(y, x) for y in odd for x in odd]


def test_spread_is_not_raster_striding():
    # Every 4th token in raster order would be 6 whole columns; the spread covers 12 distinct columns.
    kept = spread_tokens(torch.ones(576, dtype=torch.bool), 144)
    assert len({x for _, x in grid_coords(kept)}) == 12 and len({y for y, _ in grid_coords(kept)}) == 12


def test_spread_over_a_rectangle_of_valid_rows():
    # A sub-image whose top 6 and bottom 6 token rows are padding: 12 x 24 valid tokens.
    valid = torch.zeros(24, 24, dtype=torch.bool)
    valid[6:18] = True
    kept = spread_tokens(valid.flatten(), 72)
    # 6 rows (72 * 12 / 24 = 36 -> 6 rows of 12), at the centres of 2-row cells, 12 columns at odd positions.
    assert grid_coords(kept) == [(y, x) for y in range(7, 18, 2) for x in range(1, 24, 2)]


def test_spread_shares_rows_evenly_when_they_do_not_divide():
    kept = spread_tokens(torch.ones(576, dtype=torch.bool), 115)
    per_row = torch.bincount(kept // 24, minlength=24)
    used = per_row[per_row > 0]
    assert int(used.sum()) == 115 and int(used.max() - used.min()) <= 1
    rows = (per_row > 0).nonzero().flatten()
    gaps = rows[1:] - rows[:-1]
    assert int(gaps.max() - gaps.min()) <= 1  # rows evenly spaced


def test_spread_extremes():
    full = torch.ones(576, dtype=torch.bool)
    assert spread_tokens(full, 576).tolist() == list(range(576))
    assert spread_tokens(full, 1).tolist() == [12 * 24 + 12]
    assert spread_tokens(full, 0).tolist() == []
    with pytest.raises(ValueError, match="free valid"):
        spread_tokens(torch.tensor([True] * 3 + [False] * 6), 4)
    with pytest.raises(ValueError, match="square"):
        spread_tokens(torch.ones(10, dtype=torch.bool), 2)


def test_spread_moves_an_excluded_lattice_point_to_its_nearest_free_token():
    full = torch.ones(576, dtype=torch.bool)
    exclude = torch.zeros(576, dtype=torch.bool)
    exclude[1 * 24 + 1] = True  # the lattice point (1, 1)
    kept = spread_tokens(full, 144, exclude)
    expected = {(y, x) for y in range(1, 24, 2) for x in range(1, 24, 2)} - {(1, 1)} | {(0, 1)}
    assert set(grid_coords(kept)) == expected  # (0, 1), (1, 0), (1, 2), (2, 1) tie: the lowest index wins


@settings(max_examples=60, deadline=None)
@given(
    box=st.tuples(st.integers(0, 23), st.integers(1, 24), st.integers(0, 23), st.integers(1, 24)),
    excluded=st.lists(st.integers(0, 575), max_size=40),
    fraction=st.floats(0, 1),
)
def test_spread_always_gives_k_distinct_free_tokens_in_order(box, excluded, fraction):
    top, height, left, width = box
    valid = torch.zeros(24, 24, dtype=torch.bool)
    valid[top : top + height, left : left + width] = True
    valid = valid.flatten()
    exclude = torch.zeros(576, dtype=torch.bool)
    exclude[excluded] = True
    free = valid & ~exclude
    k = int(fraction * int(free.sum()))
    kept = spread_tokens(valid, k, exclude)
    assert len(kept) == k
    assert free[kept].all()
    assert (kept[1:] > kept[:-1]).all()


def test_random_tokens_are_valid_sorted_and_follow_the_generator():
    valid = torch.zeros(576, dtype=torch.bool)
    valid[100:400] = True
    a = random_tokens(valid, 50, torch.Generator().manual_seed(1))
    b = random_tokens(valid, 50, torch.Generator().manual_seed(1))
    c = random_tokens(valid, 50, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a) == 50 and valid[a].all() and (a[1:] > a[:-1]).all()
    assert random_tokens(valid, 300, torch.Generator()).tolist() == list(range(100, 400))
    with pytest.raises(ValueError, match="300 valid"):
        random_tokens(valid, 301, torch.Generator())
