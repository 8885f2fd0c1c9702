"""VQA accuracy as behind LLaVA's published VQAv2 numbers, checked against hand-worked cases and
against a literal second reading of the published rule on thousands of random cases.

The published rule (lmms-eval's ``vqav2_process_results``, January 2024 - July 2025, with the
EvalAI answer processor):

  prediction P = processor(prediction): lower-case; delete "," and "?"; "'s" -> " 's"; newline
  and tab -> space; strip; spacing marks ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! deleted where
  one of that mark's occurrences touches a space (or the text holds a digit comma), else spaced;
  up to 32 periods not followed by a digit removed; split; number words -> digits; articles
  dropped; contraction table.
  references: newline/tab -> space, strip. Unanimous -> compared as they are. Otherwise each
  reference gets the punctuation and word steps (not lower-casing first, no "," / "?" deletion,
  no "'s" split), and P gets them again.
  score: mean over i of min(1, matches among the references other than i / 3). With 10
  references and m matches: m=0 -> 0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, >=4 -> 1.0 (one matching
  reference left out leaves m-1, any other leaves m: (m*min(3,m-1) + (10-m)*min(3,m)) / 30).
"""

import random
import statistics

import numpy as np
import pytest

from pipeline.benchmarks.vqa_answers import (
    ARTICLES,
    CONTRACTIONS,
    NUMBER_WORDS,
    exact_match,
    normalize_answer,
    prepare_prediction,
    vqa_accuracy,
)
from pipeline.stages.score import score_vqa


def ten(answer: str, matching: int, other: str = "other") -> list[str]:
    """Ten references: `matching` of `answer`, the rest `other` (so never unanimous below 10)."""
    return [answer] * matching + [other] * (10 - matching)


# (prediction, references, expected accuracy, how the expected value follows from the rule)
CASES = [
    # --- symbols the processor keeps inside a word (our old normaliser turned them into spaces)
    ("A&W", ten("a&w", 3, "root beer"), 0.9, "'&' is no spacing mark: P='a&w'; 3 refs match"),
    ("a&w", ["w"] * 10, 0.0, "P='a&w', not 'w' (the article 'a' is no word of its own)"),
    ("50%", ten("50%", 2, "50"), 0.6, "'%' kept: P='50%' matches 2 of 10"),
    ("$5", ["5"] * 3 + ["$5"] * 7, 1.0, "'$' kept: P='$5' matches 7"),
    ("#1", ["1"] * 10, 0.0, "'#' kept: '#1' != '1'"),
    # --- contractions from the EvalAI table that our old table lacked, and the "'s" split
    ("maam", ten("ma'am", 3, "lady"), 0.9, "table: maam -> ma'am; refs unchanged; 3 match"),
    ("hed", ten("he'd", 1, "he would"), 0.3, "table: hed -> he'd; 1 match"),
    ("twas", ten("'twas", 2, "it was"), 0.6, "table: twas -> 'twas; 2 match"),
    ("it's", ten("it's", 3, "it is"), 0.0, "P='it 's' (the \"'s\" split); refs stay \"it's\""),
    ("its", ten("its", 7, "it's"), 1.0, "'its' is not in the table: 7 refs 'its' match"),
    ("dont", ten("don't", 3, "no"), 0.9, "table: dont -> don't; 3 match"),
    ("Im", ten("i'm", 5, "me"), 0.0, "key 'Im' is capitalised, looked up after lower-casing: 'im' stays"),
    # --- spacing marks next to spaces are deleted (everywhere in the text), otherwise spaced
    ("t - shirt", ten("t shirt", 3, "shirt"), 0.9, "'-' touches a space -> deleted: 't shirt'"),
    ("black-white", ten("black white", 3, "grey"), 0.9, "'-' touches no space -> space"),
    ("black-white - grey", ten("blackwhite grey", 3, "black white grey"), 0.9,
     "one '-' touches a space, so both are deleted: P='blackwhite grey'; 3 match"),
    ("red white", ten("red,white", 3, "red"), 0.9, "ref comma touches no space -> space"),
    ("red white blue", ten("red,white, blue", 4, "red"), 0.0,
     "ref: one ',' touches a space, so both go: 'redwhite blue' != P"),
    ("redwhite blue", ten("red,white, blue", 4, "red"), 1.0, "same refs, P equal: 4 match"),
    ("red,white", ["red white"] * 10, 0.0, "P: commas deleted before the punctuation step: 'redwhite'"),
    ("1000", ["1,000"] * 3 + ["1000"] + ["thousand"] * 6, 1.0, "ref digit comma -> deleted: 4 match"),
    ("10002000", ten("1,000-2,000", 3, "many"), 0.9, "a digit comma deletes every spacing mark: '10002000'"),
    ("1000 2000", ten("1,000-2,000", 3, "many"), 0.0, "P has no digit comma left, so its '-' is spaced"),
    # --- periods: removed unless a digit follows, at most 32 per pass
    (".5", ten(".5", 3, "half"), 0.9, "'.' before a digit stays: P='.5'; 3 match"),
    (".5", ["5"] * 10, 0.0, "'.5' != '5'"),
    ("3.5", ten("3.5", 3, "3"), 0.9, "decimal point kept"),
    ("Dog.", ["dog"] * 10, 1.0, "final period removed: P='dog' equals the unanimous 'dog'"),
    ("2:30 P.M.", ten("2:30 pm", 3, "afternoon"), 0.9, "':' kept; periods before letters/end go"),
    ("yes" + "." * 40, ["yes"] * 10, 0.0, "one pass removes 32 periods: 'yes' + 8 periods != 'yes'"),
    ("yes" + "." * 40, ten("yes", 9, "no"), 1.0, "refs differ: the second pass removes the last 8"),
    # --- unanimous references are compared unprocessed; differing ones are processed
    ("two", ["2"] * 10, 1.0, "P='2' equals the unanimous '2'"),
    ("2", ["Two"] * 10, 0.0, "unanimous 'Two' is not lower-cased or mapped"),
    ("2", ["Two"] * 9 + ["2"], 1.0, "not unanimous: every ref -> '2': 10 match"),
    ("yes", ["Yes"] * 10, 0.0, "unanimous 'Yes' stays capitalised"),
    ("yes", ["yes."] * 10, 0.0, "unanimous 'yes.' keeps its period"),
    ("yes", ["yes."] * 9 + ["yes"], 1.0, "not unanimous: 'yes.' -> 'yes': 10 match"),
    ("yes", [" yes\n"] * 3 + ["yes"] * 7, 1.0, "stripped before the unanimity test: unanimous 'yes'"),
    # --- number words (up to ten, 'none' is zero)
    ("None", ten("0", 3, "no"), 0.9, "none -> 0; 3 match"),
    ("ten", ten("10", 2, "many"), 0.6, "ten -> 10; 2 match"),
    ("eleven", ["11"] * 10, 0.0, "the map stops at ten"),
    # --- articles
    ("the dog", ["dog"] * 2 + ["a dog"] * 2 + ["puppy"] * 6, 1.0, "articles dropped on both sides: 4 match"),
    ("An apple", ["apple"] * 10, 1.0, "P='apple' equals the unanimous 'apple'"),
    ("a", ["a"] * 10, 0.0, "P='' (only an article) vs unanimous 'a'"),
    # --- the leave-one-out count
    ("red", ten("red", 0, "blue"), 0.0, "m=0"),
    ("red", ten("red", 1, "blue"), 0.3, "m=1: (1*0 + 9*1) / 30"),
    ("red", ten("red", 2, "blue"), 0.6, "m=2: (2*1 + 8*2) / 30"),
    ("red", ten("red", 3, "blue"), 0.9, "m=3: (3*2 + 7*3) / 30"),
    ("red", ten("red", 4, "blue"), 1.0, "m=4: (4*3 + 6*3) / 30"),
    ("cat", ["cat", "dog", "dog"], 2 / 9, "n=3, m=1: (0 + 1/3 + 1/3) / 3"),
    ("cat", ["cat", "cat"], 1 / 3, "n=2, unanimous: each left out leaves 1 match -> 1/3"),
    # --- a single reference: our rule, exact match of the processed strings (leave-one-out would give 0)
    ("Cat", ["the cat"], 1.0, "single ref processed like P: 'cat' == 'cat'"),
    ("dog", ["cat"], 0.0, "single ref, no match"),
    ("yes", ["Yes"], 1.0, "single ref is processed, unlike a unanimous set"),
    ("it's", ["it's"], 1.0, "single ref: both sides 'it 's'"),
    # --- a sentence is scored as written
    ("Yes, there is a dog.", ["yes"] * 10, 0.0, "P='yes there is dog'"),
]


@pytest.mark.parametrize("prediction, references, expected, how", CASES, ids=[f"{c[0]!r}-{c[2]:.3f}" for c in CASES])
def test_vqa_accuracy_hand_cases(prediction, references, expected, how):
    assert vqa_accuracy(prediction, references) == pytest.approx(expected, abs=1e-12), how


def test_ten_reference_scores_are_exact_decimals():
    # With ten references the published float mean comes out as exactly 0.3, 0.6 and 0.9.
    assert [vqa_accuracy("red", ten("red", m, "blue")) for m in range(11)] == [0.0, 0.3, 0.6, 0.9] + [1.0] * 7


def test_no_references_and_no_prediction():
    assert vqa_accuracy("cat", []) is None
    assert vqa_accuracy("cat", None) is None
    assert vqa_accuracy(None, ["yes"] * 10) == 0.0
    assert vqa_accuracy(None, ["yes"]) == 0.0
    assert prepare_prediction(None) == ""


@pytest.mark.parametrize(
    "raw, processed",
    [
        ("Two dogs.", "2 dogs"),
        ("A&W", "a&w"),
        ("it's", "it 's"),
        ("girl's", "girl 's"),
        ("1,000", "1000"),
        ("yes, there is a dog.", "yes there is dog"),
        ("what?", "what"),
        ("t - shirt", "t shirt"),
        ("black-white - grey", "blackwhite grey"),
        ("-\tyes", "yes"),  # the tab becomes a space first, so '-' touches a space and is deleted
        ("yes/no", "yes no"),
        ("2:30 P.M.", "2:30 pm"),
        (".5", ".5"),
        ("maam", "ma'am"),
        ("somebody'd", "somebodyd"),  # the table's own entry
        ("Ive", "ive"),  # capitalised keys never apply
        ("  None  ", "0"),
        ("", ""),
    ],
)
def test_normalize_answer_is_the_evalai_processor(raw, processed):
    assert normalize_answer(raw) == processed


def test_tables_are_the_evalai_tables():
    # Sizes and the odd entries of the published tables (120 contractions, 12 number words).
    assert len(CONTRACTIONS) == 120 and len(NUMBER_WORDS) == 12
    assert ARTICLES == {"a", "an", "the"}
    assert NUMBER_WORDS["none"] == "0" and NUMBER_WORDS["ten"] == "10" and "eleven" not in NUMBER_WORDS
    assert CONTRACTIONS["somebody'd"] == "somebodyd" and CONTRACTIONS["let's"] == "let's"
    assert CONTRACTIONS["twas"] == "'twas" and CONTRACTIONS["'ows'at"] == "'ow's'at"
    assert {"Id've", "I'dve", "Im", "Ive"} <= CONTRACTIONS.keys()
    assert not {"its", "well", "were", "hell", "id", "ill"} & CONTRACTIONS.keys()


def test_exact_match():
    assert exact_match("Two dogs.", ["cat", "2 dogs"])
    assert exact_match("dont know", ["don't know"])
    assert exact_match("it's", ["it's"] * 10)  # both sides processed, though the accuracy is 0
    assert vqa_accuracy("it's", ["it's"] * 10) == 0.0
    assert exact_match("yes", ["Yes"])
    assert not exact_match("a&w", ["w"])
    assert not exact_match("dog", ["cat", "dogs"])
    assert not exact_match("dog", [])
    assert not exact_match(None, ["yes"])
    assert not exact_match(None, [""])


def test_score_vqa_stage_rows():
    batch = {
        "id": np.array(["q0", "q1", "q2", "q3"], dtype=object),
        "text": np.array(["Two", "yes", None, "a&w"], dtype=object),
        "error": np.array([None, None, "undecodable image: x", None], dtype=object),
        "answers": np.array([ten("2", 3), None, ["cat"] * 10, ["w"] * 10], dtype=object),
    }
    out = score_vqa(batch)
    assert list(out["vqa_accuracy"]) == [0.9, None, None, 0.0]
    assert list(out["exact_match"]) == [True, None, None, False]
    assert list(out["answers"]) == [ten("2", 3), None, ["cat"] * 10, ["w"] * 10]


# --- A second, literal reading of the published rule, written independently of the module
# (character scans instead of translation tables, explicit leave-one-out subsets), used to check
# the module on random cases built from the pieces where the rule has corners.

SPACING = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def has_digit_comma(text: str) -> bool:
    for start, char in enumerate(text):
        if char.isdecimal():
            end = start + 1
            while end < len(text) and text[end] == ",":
                end += 1
            if end > start + 1 and end < len(text) and text[end].isdecimal():
                return True
    return False


def punctuation_by_hand(text: str) -> str:
    out = text
    for mark in SPACING:
        touches_space = (mark + " ") in text or (" " + mark) in text
        out = out.replace(mark, "" if touches_space or has_digit_comma(text) else " ")
    kept, removed = [], 0
    for i, char in enumerate(out):
        before_digit = i + 1 < len(out) and out[i + 1].isdecimal()
        if char == "." and not before_digit and removed < 32:
            removed += 1
            continue
        kept.append(char)
    return "".join(kept)


def words_by_hand(text: str) -> str:
    out = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            out.append(word)
    return " ".join(CONTRACTIONS.get(word, word) for word in out)


def processor_by_hand(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return words_by_hand(punctuation_by_hand(text))


def published_accuracy_by_hand(prediction: str, references: list[str]) -> float:
    answer = processor_by_hand(prediction)
    references = [r.replace("\n", " ").replace("\t", " ").strip() for r in references]
    if len(set(references)) > 1:
        references = [words_by_hand(punctuation_by_hand(r)) for r in references]
        answer = words_by_hand(punctuation_by_hand(answer))
    per_subset = []
    for left_out in range(len(references)):
        others = references[:left_out] + references[left_out + 1:]
        per_subset.append(min(1, sum(other == answer for other in others) / 3))
    return statistics.mean(per_subset)


PIECES = (
    list(CONTRACTIONS) + list(NUMBER_WORDS) + sorted(ARTICLES)
    + ["yes", "No", "red", "it's", "'s", "Two", "a&w", "1,000", ".5", "3.5", "50%", "t-shirt", "2:30", "P.M."]
    + SPACING + list(".'&%$#*:") + [" ", " ", " ", "\n", "\t", "\r", "0", "7", "x", ".", "." * 35, "İ"]
)


def random_answer(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6)))


def random_case(rng: random.Random) -> tuple[str, list[str]]:
    prediction = random_answer(rng)
    # References drawn from a small pool holding the prediction and its processed form, so
    # matches, partial matches and unanimous sets all occur.
    pool = [random_answer(rng) for _ in range(rng.randint(1, 3))] + [prediction, processor_by_hand(prediction)]
    return prediction, [rng.choice(pool) for _ in range(rng.choice([2, 3, 5, 10, 10, 10]))]


def test_matches_a_literal_reading_on_random_cases():
    rng = random.Random(20240127)
    scored = 0
    for _ in range(3000):
        prediction, references = random_case(rng)
        assert normalize_answer(prediction) == processor_by_hand(prediction), prediction
        expected = published_accuracy_by_hand(prediction, references)
        assert vqa_accuracy(prediction, references) == expected, (prediction, references)
        scored += expected > 0
    assert scored > 1000  # the cases exercise matches, not just misses

