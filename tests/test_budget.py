"""The budget arithmetic: exact totals, caps, overflow, rounding."""

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hired

from hired.budget import largest_remainder, round_half_up, split_budget, token_budget


@pytest.mark.parametrize(
    "budget, n, expected",
    [
        (0.2, 2880, 576),
        (0.1, 2880, 288),
        (0.4, 2880, 1152),
        (1.0, 2340, 2340),
        (0.29, 100, 29),  # binary 0.29 * 100 is 28.999..., the user meant 29
        (0.5, 1, 0),
        (0.2, 577, 115),
        (640, 2880, 640),
        (320, 576, 320),
        (5000, 2880, 2880),
        (1, 576, 1),
    ],
)
def test_token_budget(budget, n, expected):
    assert token_budget(budget, n) == expected


def test_token_budget_rejects_bool():
    with pytest.raises(TypeError):
        token_budget(True, 100)


def test_round_half_up():
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.4999, 287.5)] == [1, 2, 3, 2, 288]


def test_largest_remainder_hand_computed():
    # 10 over weights 1:2:3:4 -> quotas 1, 2, 3, 4 exactly.
    assert largest_remainder(10, [1, 2, 3, 4], [10, 10, 10, 10]) == [1, 2, 3, 4]
    # 7 over 1:1:1 -> 2.33 each: floors 2,2,2 and one extra to the first (ties to the lower index).
    assert largest_remainder(7, [1, 1, 1], [9, 9, 9]) == [3, 2, 2]
    # 10 over 0.5:0.3:0.2 -> quotas 5, 3, 2.
    assert largest_remainder(10, [0.5, 0.3, 0.2], [9, 9, 9]) == [5, 3, 2]
    # 5 over 0.46:0.27:0.27 -> 2.3, 1.35, 1.35: floors 2,1,1, extra to the largest remainder (second, lower index).
    assert largest_remainder(5, [0.46, 0.27, 0.27], [9, 9, 9]) == [2, 2, 1]


def test_largest_remainder_caps_and_hands_on_overflow():
    # The first part wants 90 but holds 20; its overflow goes to the others 1:1.
    assert largest_remainder(100, [9, 0.5, 0.5], [20, 100, 100]) == [20, 40, 40]
    # Capacities smaller than the total: everything fills up.
    assert largest_remainder(100, [1, 1], [10, 20]) == [10, 20]
    # A zero-capacity part gets nothing whatever its weight.
    assert largest_remainder(6, [100, 1, 1], [0, 10, 10]) == [0, 3, 3]


def test_largest_remainder_zero_weights_fall_back_to_capacity():
    assert largest_remainder(9, [0, 0, 0], [10, 20, 0]) == [3, 6, 0]
    # Zero-weight parts get nothing while a weighted part can still take tokens...
    assert largest_remainder(5, [1, 0], [10, 10]) == [5, 0]
    # ...and take the overflow once it is full.
    assert largest_remainder(15, [1, 0], [10, 10]) == [10, 5]


@given(
    total=st.integers(0, 3000),
    parts=st.lists(st.tuples(st.floats(0, 10, allow_nan=False), st.integers(0, 600)), min_size=1, max_size=9),
)
def test_largest_remainder_properties(total, parts):
    weights, capacities = zip(*parts)
    shares = largest_remainder(total, weights, capacities)
    assert sum(shares) == min(total, sum(capacities))
    assert all(0 <= s <= c for s, c in zip(shares, capacities))


def test_split_budget_paper_setting():
    # HiRED-20% on a 2x2 grid: B = 576, alpha 0.5 -> 288 to the full view, 288 over the sub-images.
    full, subs = split_budget(576, 0.5, 576, [4, 2, 1, 1], [576] * 4)
    assert full == 288
    assert subs == [144, 72, 36, 36]


def test_split_budget_full_view_cap_overflows_to_subimages():
    full, subs = split_budget(1000, 1.0, 576, [1, 1], [576, 576])
    assert (full, subs) == (576, [212, 212])


def test_split_budget_subimages_without_tokens_give_back():
    # A 1x4000 picture keeps no sub-image token after unpadding: the whole budget is the full view's.
    full, subs = split_budget(115, 0.5, 576, [0.3, 0.7], [0, 0])
    assert (full, subs) == (115, [0, 0])
    # Small sub-images fill up and return the rest to the full view.
    full, subs = split_budget(400, 0.1, 576, [1, 1], [24, 24])
    assert (full, subs) == (352, [24, 24])


def test_split_budget_refuses_more_than_the_image_holds():
    with pytest.raises(ValueError):
        split_budget(700, 0.5, 576, [1], [100])


@given(
    alpha=st.floats(0, 1),
    budget=st.floats(0.01, 1.0),
    subs=st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.integers(0, 576)), min_size=1, max_size=6),
)
def test_split_budget_always_sums_to_the_budget(alpha, budget, subs):
    scores, capacities = zip(*subs)
    n = 576 + sum(capacities)
    total = math.floor(Fraction(repr(budget)) * n)
    full, shares = split_budget(total, alpha, 576, scores, capacities)
    assert full + sum(shares) == total
    assert 0 <= full <= 576
    assert all(0 <= s <= c for s, c in zip(shares, capacities))


# -- the one budget parser ---------------------------------------------------------------

PARSED = [
    ("0.2", 0.2, float), (".5", 0.5, float), ("1.0", 1.0, float), ("20%", 0.2, float), ("29%", 0.29, float),
    ("100%", 1.0, float), (" 0.1 ", 0.1, float), ("640", 640, int), ("2", 2, int), ("+640", 640, int),
]
REFUSED = [
    ("1", "ambiguous"), ("0", "keeps no token"), ("-3", "must be positive"), ("0.0", "must be positive"),
    ("640.0", "without a decimal point"), ("2.5", "without a decimal point"), ("101%", "out of range"),
    ("abc", "not a number"), ("", "not a number"), ("nan", "not a number"), ("inf", "not a number"),
]


@pytest.mark.parametrize("text, value, kind", PARSED)
def test_parse_budget_reads_fractions_and_counts(text, value, kind):
    parsed = hired.parse_budget(text)
    assert parsed == value and type(parsed) is kind


@pytest.mark.parametrize("text, message", REFUSED)
def test_parse_budget_refuses_what_it_cannot_read_unambiguously(text, message):
    with pytest.raises(ValueError, match=message):
        hired.parse_budget(text)


def test_a_budget_text_means_the_same_everywhere():
    """The jobs' --budget, hired viz's --budget and HiREDConfig(budget=<text>) agree on every text."""
    import argparse

    from pipeline.cli import build_parser

    def command(name):
        return next(a for a in build_parser()._actions if a.dest == "command").choices[name]

    def viz_parser():
        return command("viz")

    def job_parser(task):
        return command(task)

    for text, value, kind in PARSED:
        config = hired.HiREDConfig(budget=text)
        viz = viz_parser().parse_args(["x.jpg", "--budget", text]).budget
        (job,) = job_parser("caption").parse_args(["--budget", text]).budget
        assert config.budget == viz == job == value
        assert type(config.budget) is type(viz) is type(job) is kind
    for text, message in REFUSED:
        if not text:
            continue
        with pytest.raises(ValueError, match=message):
            hired.HiREDConfig(budget=text)
        for parser, argv in ((viz_parser(), ["x.jpg", "--budget", text]), (job_parser("caption"), ["--budget", text])):
            parser.error = lambda message: (_ for _ in ()).throw(argparse.ArgumentTypeError(message))
            with pytest.raises(argparse.ArgumentTypeError, match=message):
                parser.parse_args(argv)


def test_budget_kind_keeps_fraction_and_count_apart():
    assert hired.budget_kind(0.2) == (0.2, None) and hired.budget_kind(640) == (None, 640)
    assert hired.budget_kind(1.0) == (1.0, None)
    assert hired.describe_budget(0.2) == "20%" and hired.describe_budget(640) == "640 tokens"
