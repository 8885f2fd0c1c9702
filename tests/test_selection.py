import pytest
import torch

from hired.selection import top_tokens


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
