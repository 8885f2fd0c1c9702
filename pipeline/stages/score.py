"""Scoring generated answers the way the VQA benchmark (VQAv2) does.

Two pieces, both described on the VQA evaluation page (visualqa.org/evaluation):

* **Answer normalisation**, applied to the prediction and to every human reference
  before they are compared, so that "Two dogs." and "2 dogs" count as the same answer.
* **VQA accuracy**, a soft score that is robust to the ten annotators disagreeing:
  an answer is fully right once at least three humans gave it, and partly right if
  one or two did, averaged over the ten ways of leaving one annotator out.

Nothing here knows about models or Ray: plain strings in, numbers out.
"""

from __future__ import annotations

import re
import string
from typing import Sequence

import numpy as np

from ..columns import ANSWERS, ERROR, ID, answer_lists, batch_column

# Number words become digits so that "two" and "2" agree. The evaluation stops at ten;
# "none" counts as zero because annotators answer "how many ...?" with it.
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

ARTICLES = frozenset({"a", "an", "the"})

# Contractions typed without their apostrophe, mapped to the spelled-out form so that
# "dont" and "don't" agree. Only tokens that are not English words in their own right:
# "its", "lets", "ill", "id", "well", "were", "wed", "shell" and "hell" are left alone.
MISSING_APOSTROPHE = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "couldve": "could've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hes": "he's",
    "heres": "here's",
    "hows": "how's",
    "im": "i'm",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "ive": "i've",
    "mightnt": "mightn't",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "oclock": "o'clock",
    "shes": "she's",
    "shouldnt": "shouldn't",
    "shouldve": "should've",
    "thats": "that's",
    "theres": "there's",
    "theyd": "they'd",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "wasnt": "wasn't",
    "werent": "weren't",
    "weve": "we've",
    "whats": "what's",
    "wheres": "where's",
    "whos": "who's",
    "wont": "won't",
    "wouldnt": "wouldn't",
    "wouldve": "would've",
    "yall": "y'all",
    "youd": "you'd",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

# A comma with a digit on both sides is a thousands separator: "1,000" -> "1000".
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d)")
# A period is kept only as a decimal point, i.e. with a digit on both sides: "3.5" stays,
# "dog." and "a.m." lose theirs.
_NON_DECIMAL_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
# Every other ASCII punctuation mark becomes a space, so words it glued together
# ("black-and-white", "yes/no") split into words. The apostrophe is kept because it tells a
# possessive from a plural ("girl's" vs "girls"), the colon because it writes times ("2:50").
# Periods and digit commas were handled by the two rules above; a comma anywhere else
# ("yes, there is") falls under this rule.
_SPACED_MARKS = "".join(mark for mark in string.punctuation if mark not in "'.:")
_SPACED_PUNCTUATION = re.compile("[" + re.escape(_SPACED_MARKS) + "]")


def _strip_punctuation(text: str) -> str:
    text = _THOUSANDS_COMMA.sub("", text)
    text = _NON_DECIMAL_PERIOD.sub("", text)
    return _SPACED_PUNCTUATION.sub(" ", text)


def _normalize_word(word: str) -> str:
    word = NUMBER_WORDS.get(word, word)
    return MISSING_APOSTROPHE.get(word, word)


def normalize_answer(text: str) -> str:
    """The VQA evaluation's canonical form of an answer.

    Lowercase; newlines and tabs become spaces; punctuation handled as described at the
    patterns above (digit commas and non-decimal periods vanish, the apostrophe and the colon
    stay, other marks become spaces); number words up to ten become digits; the articles
    a/an/the are dropped; contractions missing their apostrophe get it back; runs of
    whitespace collapse to one space, none at the ends.

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    """
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    text = _strip_punctuation(text)
    words = [_normalize_word(word) for word in text.split() if word not in ARTICLES]
    return " ".join(words)


def prepare_prediction(generated: str | None) -> str:
    """A model's generated text, reduced to what is compared with the references.

    LLaVA tends to answer in a sentence ("Yes, there is a dog."). The text is scored as
    written, after the same normalisation as the references: no guessing at which word is
    "the answer". A missing generation (``None``, e.g. an error row) becomes the empty answer,
    which matches no real reference.
    """
    if generated is None:
        return ""
    return normalize_answer(generated.strip())


def _matches(prediction: str | None, references: Sequence[str]) -> list[bool]:
    answer = prepare_prediction(prediction)
    return [normalize_answer(reference) == answer for reference in references]


def vqa_accuracy(prediction: str | None, references: Sequence[str] | None) -> float | None:
    """The official VQA accuracy of ``prediction`` against human ``references``.

    With n references, of which m equal the prediction after normalisation, leave each
    reference i out in turn and score the prediction against the other n - 1:

        acc_i = min(1, (number of references other than i that match) / 3)
        accuracy = (acc_1 + ... + acc_n) / n

    With 10 references that gives m = 0 -> 0, m = 1 -> 0.3, m = 2 -> 0.6, m = 3 -> 0.9 and
    m >= 4 -> 1.0. This is the published "min(#humans that said ans / 3, 1), averaged over all
    10 choose 9 sets of human annotators", written for any number of references.

    A single reference leaves nobody to compare with once it is left out, so it scores 1.0 on
    a match and 0.0 otherwise. No references (empty or ``None``): ``None``, not scorable.
    """
    if not references:
        return None
    matched = _matches(prediction, references)
    if len(matched) == 1:
        return 1.0 if matched[0] else 0.0
    total_matches = sum(matched)
    # For each left-out reference, the matches among the others, capped at 3. Summing the
    # integer numerators and dividing once keeps e.g. 0.9 exact rather than 2/3 + 2/3 + ....
    capped = [min(3, total_matches - left_out) for left_out in matched]
    return sum(capped) / (3 * len(matched))


def exact_match(prediction: str | None, references: Sequence[str] | None) -> bool:
    """Whether the normalised prediction equals any normalised reference (False for none)."""
    if not references:
        return False
    return any(_matches(prediction, references))


def score_vqa(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data stage: the standard VQA accuracy and exact match of each answer."""
    n = len(batch[ID])
    texts, answers, errors = batch_column(batch, "text"), batch_column(batch, ANSWERS), batch_column(batch, ERROR)
    accuracy, exact = np.empty(n, dtype=object), np.empty(n, dtype=object)
    for i in range(n):
        text, references = texts[i], answers[i]
        references = [] if references is None else [str(a) for a in references]
        if errors[i] is not None or text is None or not references:
            accuracy[i], exact[i] = None, None
        else:
            accuracy[i], exact[i] = vqa_accuracy(text, references), exact_match(text, references)
    references = np.empty(n, dtype=object)
    references[:] = answer_lists(answers)  # Arrow-convertible
    return {**batch, ANSWERS: references, "vqa_accuracy": accuracy, "exact_match": exact}
