"""VQA answers as the EvalAI processor puts them, and VQA accuracy as published numbers score it.

Two pieces, both read from lmms-eval (``lmms_eval/tasks/_task_utils/vqa_eval_metric.py`` and the
``vqav2``/``textvqa`` tasks, as at its commit c0c0a977 of 2025-06-28):

* **The EvalAI answer processor** (mmf's processor, shipped as ``m4c_evaluator`` in LLaVA and
  as ``EvalAIAnswerProcessor`` in lmms-eval), which puts a model's answer into the form the
  evaluation server compares. It is not the processor described on visualqa.org: it knows more
  contractions, keeps symbols such as ``& % $ # :`` and the apostrophe, and treats a mark next
  to a space differently from one inside a word. :func:`normalize_answer` is it, step for step.
* **VQA accuracy**: min(1, matches / 3) averaged over the leave-one-out subsets of the
  references. VQAv2 (:func:`vqav2_accuracy`) compares the processed prediction with the
  references as written when all references agree, and with punctuation- and word-normalised
  references otherwise (lmms-eval's rule from January 2024 to July 2025, behind LLaVA's tables);
  TextVQA (:func:`textvqa_accuracy`) puts every reference through the whole processor.

The contraction and number tables are the processor's data, entry for entry. Nothing here knows
about models or Ray: plain strings in, numbers out.
"""

from __future__ import annotations

import functools
import re
import statistics
from typing import Sequence

# Number words the processor turns into digits; it stops at ten, and "none" is zero because
# annotators answer "how many ...?" with it.
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES = frozenset({"a", "an", "the"})

# The EvalAI processor's contraction table, exactly as it ships, oddities included: it is looked
# up after lower-casing, so the capitalised keys ("Im", "Ive", ...) never apply; "somebody'd"
# maps to "somebodyd"; "let's" and "she's" map to themselves. "its", "well", "were" and "hell"
# are absent, being words in their own right.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}

# The marks the processor either deletes or turns into a space. Every other character, including
# "&", "%", "$", "#", "*", ":", "'" and non-ASCII symbols, stays part of its word; the period has a
# rule of its own.
SPACING_MARKS = ';/[]"{}()=+\\_-><@`,?!'
# A digit, one or more commas, a digit: a number written with thousands separators. Its presence
# anywhere makes the processor delete every spacing mark in the text, so that "1,000" -> "1000".
_DIGIT_COMMA = re.compile(r"\d,+\d")
# A period not followed by a digit goes ("dog." -> "dog", "a.m." -> "am"); one before a digit
# stays, so "3.5" and ".5" keep theirs.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The processor passes re.UNICODE where `re.sub` expects its count, so at most this many periods
# are removed in one pass. Matters only for runaway generations such as "yes" + 40 periods.
_PERIODS_REMOVED_PER_PASS = int(re.UNICODE)


def _marks_to_delete(text: str) -> str:
    """The spacing marks that vanish from ``text`` instead of becoming spaces.

    A mark vanishes wherever it occurs once any occurrence of it touches a space ("t - shirt" ->
    "t  shirt", but also "black-white - grey" -> "blackwhite  grey"); all of them vanish once the
    text holds a digit comma. The decision is made on the text as given, for each mark alone.
    """
    if _DIGIT_COMMA.search(text):
        return SPACING_MARKS
    return "".join(mark for mark in SPACING_MARKS if mark + " " in text or " " + mark in text)


# The two common outcomes of the punctuation step, built once.
_SPACE_EVERY_MARK = str.maketrans(SPACING_MARKS, " " * len(SPACING_MARKS))
_DELETE_EVERY_MARK = str.maketrans("", "", SPACING_MARKS)


def _mark_replacements(deleted: str) -> dict[int, str | None]:
    if not deleted:
        return _SPACE_EVERY_MARK
    if deleted == SPACING_MARKS:
        return _DELETE_EVERY_MARK
    return {ord(mark): ("" if mark in deleted else " ") for mark in SPACING_MARKS}


def strip_punctuation(text: str) -> str:
    """The processor's punctuation step: spacing marks deleted or spaced, then periods removed."""
    text = text.translate(_mark_replacements(_marks_to_delete(text)))
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", text, count=_PERIODS_REMOVED_PER_PASS)


def _canonical_word(word: str) -> str | None:
    """One lower-cased word as the processor leaves it: None for an article."""
    word = NUMBER_WORDS.get(word, word)
    if word in ARTICLES:
        return None
    return CONTRACTIONS.get(word, word)


def canonical_words(text: str) -> str:
    """The processor's word step: lower-case, split on whitespace, number words to digits,
    articles dropped, contractions looked up, words joined by single spaces."""
    words = (_canonical_word(word) for word in text.lower().split())
    return " ".join(word for word in words if word is not None)


def _clean_whitespace(text: str) -> str:
    # Only newline and tab count as spaces; this runs before the punctuation step, so
    # "-\tyes" is a mark next to a space.
    return text.replace("\n", " ").replace("\t", " ").strip()


def _tidy(text: str) -> str:
    """Punctuation then word step: what the scorer applies to references that disagree (and, a
    second time, to the prediction)."""
    return canonical_words(strip_punctuation(text))


def normalize_answer(text: str) -> str:
    """The EvalAI answer processor (LLaVA's ``m4c_evaluator``, lmms-eval's processor).

    In order: lower-case; delete every "," and "?"; split off a possessive or contracted "'s"
    ("it's" -> "it 's", so it never equals "it's" or "its"); newline and tab become spaces;
    strip; the punctuation step (:func:`strip_punctuation`: each of ``; / [ ] " { } ( ) = + \\
    _ - > < @ ` , ? !`` is deleted if one of its occurrences touches a space, or if the text holds
    a digit comma, and becomes a space otherwise; then periods not followed by a digit are
    removed); the word step (:func:`canonical_words`).

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    >>> normalize_answer("A&W")
    'a&w'
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return _tidy(_clean_whitespace(text))


def prepare_prediction(generated: str | None) -> str:
    """A model's generated text, processed as the evaluation processes a submitted answer.

    LLaVA tends to answer in a sentence ("Yes, there is a dog."). The text is scored as written,
    after the processor: no guessing at which word is "the answer". A missing generation
    (``None``, e.g. an error row) becomes the empty answer.
    """
    if generated is None:
        return ""
    return normalize_answer(generated)


@functools.lru_cache(maxsize=1024)
def leave_one_out_mean(references: int, matches: int) -> float:
    """Mean over the leave-one-out subsets of min(1, matches among the others / 3).

    Leaving out a matching reference leaves matches - 1 among the others, any other leaves all.
    statistics.mean sums the per-subset floats exactly and rounds once, as the published code
    does, so scores agree to the last bit for any number of references (a plain sum / n can be
    one unit in the last place off, e.g. 5 references with 3 matches). It depends only on the
    two counts, hence the cache.
    """
    per_subset = [min(1.0, (matches - 1) / 3)] * matches + [min(1.0, matches / 3)] * (references - matches)
    return float(statistics.mean(per_subset))


def vqav2_accuracy(prediction: str, references: Sequence[str]) -> float:
    """VQA accuracy of ``prediction`` by lmms-eval's ``vqav2`` rule (behind LLaVA's VQAv2 numbers).

    1. The prediction goes through the EvalAI processor (:func:`normalize_answer`).
    2. Newlines and tabs in each reference become spaces and its ends are stripped.
    3. If the references are then unanimous (all the same string), they are compared as they
       stand, unprocessed: ten references "Yes" do not match the prediction "yes". Otherwise
       each reference gets the punctuation and word steps (not the lower-casing, comma/question
       mark deletion or "'s" split that the prediction got), and so does the prediction again.
    4. With n references of which m equal the prediction, leave each out in turn:
       acc_i = min(1, (matches among the other n - 1) / 3), and the score is their mean. With
       10 references: m = 0, 1, 2, 3, >= 4 give 0, 0.3, 0.6, 0.9, 1.0. One reference scores 0
       whatever the answer (nothing is left to match once it is left out).

    Leave-one-out is by position: the published code tells references apart by their answer
    ids, which are distinct in VQAv2.
    """
    if not references:
        raise ValueError("VQA accuracy needs at least one reference")
    answer = prepare_prediction(prediction)
    cleaned = [_clean_whitespace(reference) for reference in references]
    distinct = set(cleaned)
    if len(distinct) > 1:
        tidied = {reference: _tidy(reference) for reference in distinct}  # each distinct one once
        cleaned = [tidied[reference] for reference in cleaned]
        answer = _tidy(answer)
    return leave_one_out_mean(len(cleaned), cleaned.count(answer))


def textvqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """VQA accuracy of ``prediction`` by lmms-eval's ``textvqa`` rule: the prediction and every
    reference go through the whole EvalAI processor (no unanimity test, unlike VQAv2), then the
    leave-one-out mean of min(1, matches / 3)."""
    if not references:
        raise ValueError("VQA accuracy needs at least one reference")
    answer = normalize_answer(prediction)
    processed = [normalize_answer(reference) for reference in references]
    return leave_one_out_mean(len(processed), processed.count(answer))


def vqa_accuracy(prediction: str | None, references: Sequence[str] | None) -> float | None:
    """VQA accuracy for any VQA set: :func:`vqav2_accuracy`, with our own rules where the
    published code has none.

    A single reference would score 0 under leave-one-out whatever the answer, so it scores as
    :func:`exact_match` instead (1.0 when the processed prediction equals the processed
    reference, else 0.0). No references (empty or ``None``): ``None``, not scorable. A missing
    prediction (``None``) scores 0.0.
    """
    if not references:
        return None
    if prediction is None:
        return 0.0
    if len(references) == 1:
        return 1.0 if exact_match(prediction, references) else 0.0
    return vqav2_accuracy(prediction, references)


def exact_match(prediction: str | None, references: Sequence[str] | None) -> bool:
    """Whether the processed prediction equals any reference put through the same processor.

    Both sides get the full :func:`normalize_answer`, so this can be True where
    :func:`vqa_accuracy` is 0 (the prediction "it's" against ten references "it's", which that
    rule leaves as written). False without references or without a prediction.
    """
    if not references or prediction is None:
        return False
    answer = prepare_prediction(prediction)
    return any(normalize_answer(reference) == answer for reference in references)
