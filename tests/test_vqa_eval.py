"""VQA answer normalisation and accuracy, checked against hand-worked cases."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.stages.score import exact_match, normalize_answer, prepare_prediction, vqa_accuracy


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("Two dogs.", "2 dogs"),
        ("2 dogs", "2 dogs"),
        ("the cat", "cat"),
        ("An apple", "apple"),
        ("1,000", "1000"),
        ("dont", "don't"),
        ("don't", "don't"),
        ("Whats that", "what's that"),
        ("isnt", "isn't"),
        ("3.5", "3.5"),
        ("yes!", "yes"),
        ("YES", "yes"),
        ("  yes\n", "yes"),
        ("black-and-white", "black and white"),
        ("yes/no", "yes no"),
        ("yes, there is a dog.", "yes there is dog"),
        ("girl's", "girl's"),  # the apostrophe tells a possessive from a plural
        ("2:50 p.m.", "2:50 pm"),  # the colon writes times; abbreviation periods go
        ("ten", "10"),
        ("eleven", "eleven"),  # number words stop at ten
        ("red\tand   blue", "red and blue"),
        ("its", "its"),  # a word in its own right, not a missing apostrophe
        ("", ""),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_normalized_pairs_agree():
    assert normalize_answer("Two dogs.") == normalize_answer("2 dogs")
    assert normalize_answer("the cat") == normalize_answer("cat")
    assert normalize_answer("1,000") == normalize_answer("1000")
    assert normalize_answer("dont") == normalize_answer("don't")
    assert normalize_answer("yes!") == normalize_answer("yes")


@given(st.text(max_size=40))
def test_normalize_is_idempotent(text):
    once = normalize_answer(text)
    assert normalize_answer(once) == once


def refs(matching: int, total: int = 10, answer: str = "red", other: str = "blue") -> list[str]:
    return [answer] * matching + [other] * (total - matching)


def leave_one_out_by_hand(matching: int, total: int = 10) -> float:
    # A matching reference left out leaves matching - 1 matches among the others;
    # a non-matching one leaves all `matching` of them. Each counts min(1, k / 3).
    left_out_matching = matching * min(1, (matching - 1) / 3)
    left_out_other = (total - matching) * min(1, matching / 3)
    return (left_out_matching + left_out_other) / total


@pytest.mark.parametrize(
    "matching, expected",
    [
        (0, 0.0),
        # 1 match: the matching ref left out -> 0; the 9 others -> 1/3 each. 3/10.
        (1, 0.3),
        # 2 matches: each matching ref left out -> 1/3 (2 refs); the 8 others -> 2/3 each.
        # (2/3 + 16/3) / 10 = 6/10.
        (2, 0.6),
        # 3 matches: each matching ref left out -> 2/3 (3 refs); the 7 others -> 1 each.
        # (2 + 7) / 10 = 0.9.
        (3, 0.9),
        # 4 or more: every leave-one-out subset still holds 3 matches.
        (4, 1.0),
        (7, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_accuracy_ten_references(matching, expected):
    assert vqa_accuracy("red", refs(matching)) == pytest.approx(expected)
    assert vqa_accuracy("red", refs(matching)) == pytest.approx(leave_one_out_by_hand(matching))


def test_vqa_accuracy_normalises_both_sides():
    references = ["Two", "2", "two.", "3", "three", "3", "4", "four", "4", "4"]
    # "2 " matches three references after normalisation -> 0.9 as above.
    assert vqa_accuracy("2 ", references) == pytest.approx(0.9)
    assert vqa_accuracy("Four!", references) == 1.0


def test_vqa_accuracy_scores_a_sentence_as_written():
    # A sentence answer is not cut down to its first word: it only matches identical answers.
    assert vqa_accuracy("Yes, there is a dog.", ["yes"] * 10) == 0.0
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 1.0


def test_vqa_accuracy_single_and_empty_references():
    assert vqa_accuracy("cat", ["The cat"]) == 1.0
    assert vqa_accuracy("dog", ["cat"]) == 0.0
    assert vqa_accuracy("cat", []) is None
    assert vqa_accuracy("cat", None) is None


def test_vqa_accuracy_other_reference_counts():
    # 3 references, 1 matching: left out -> 0; each of the 2 others -> 1/3. (2/3) / 3 = 2/9.
    assert vqa_accuracy("cat", ["cat", "dog", "dog"]) == pytest.approx(2 / 9)
    # 2 references, both matching: each left out leaves 1 match -> 1/3.
    assert vqa_accuracy("cat", ["cat", "cat"]) == pytest.approx(1 / 3)


def test_missing_prediction_scores_zero():
    assert prepare_prediction(None) == ""
    assert vqa_accuracy(None, ["yes"] * 10) == 0.0
    assert not exact_match(None, ["yes"])


def test_prepare_prediction():
    assert prepare_prediction("  Yes, there is a dog.\n") == "yes there is dog"
    assert prepare_prediction("Two.") == "2"


def test_exact_match():
    assert exact_match("Two dogs.", ["cat", "2 dogs"])
    assert exact_match("dont know", ["don't know"])
    assert not exact_match("dog", ["cat", "dogs"])
    assert not exact_match("dog", [])
