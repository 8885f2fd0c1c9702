"""Each benchmark against the second reading in ``tests/lmms_reference.py`` on 3,000 seeded rows
with adversarial predictions (case, punctuation, "Yes.", "A. cat", "(A)", numbers with commas,
"%" and units, number words, articles, whitespace and newlines, empty, null, fullwidth
characters, very long strings): the per-row scores, the prompts and the aggregates must agree
exactly, the aggregates folded from Arrow tables of 500 rows."""

import random

import pyarrow as pa
import pytest

from pipeline.benchmarks import BENCHMARKS, Aggregator, score_batch

from . import lmms_reference as ref

ROWS = 3000
FULLWIDTH = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})
WORDS = {"0": "zero", "1": "one", "2": "two", "3": "three", "10": "ten", "12": "twelve", "20": "twenty", "0.5": "half"}
JUNK = ["yes", "no", "Yes.", "No,", "A. cat", "(A)", "1,000", "50%", "3 kg", "$12", "twenty", "the", "an", "  ", "\n",
        "\t", "", "Ａ", "İ", "ß", "x^{2}", "N/A", "nan", "inf", "0", "1e3", "it's", "t-shirt", "...", "Yes, it is", "Not"]


def _number(rng, s):
    try:
        x = float(s)
    except ValueError:
        return s
    return rng.choice([f"{x * rng.choice([1.03, 0.96, 1.07, 0.5, 100]):g}", f"{x:,.0f}" if abs(x) < 1e12 else s,
                       f"{x:g}%", f"{x:g} kg", f"${x:g}", WORDS.get(s, s), f"{x:.2f}"])


def _ops(rng):
    return [
        lambda s: s, str.upper, str.lower, str.title, str.capitalize,
        lambda s: s + rng.choice([".", "!", "?", ",", "..", "%"]),
        lambda s: rng.choice(["A. ", "(A) ", "The answer is ", "the ", "a ", "An ", "I think "]) + s,
        lambda s: f"({s})",
        lambda s: rng.choice([" ", "\n", "\t", "  \n "]) + s + rng.choice(["", " ", "\n", "\r\n"]),
        lambda s: s.translate(FULLWIDTH),
        lambda s: _number(rng, s),
        lambda s: s.replace(" ", rng.choice(["  ", "\n", ""])),
        lambda s: s + " " + rng.choice(JUNK),
        lambda s: "",
    ]


def prediction(rng, truths):
    """An adversarial prediction: a variant of a right answer, junk, very long, or null."""
    roll = rng.random()
    if roll < 0.04:
        return None
    if roll < 0.06:  # very long
        return rng.choice(truths) + " " + " ".join(rng.choice(JUNK) for _ in range(rng.randint(150, 400)))
    if roll < 0.25:
        return "".join(rng.choice(JUNK) for _ in range(rng.randint(1, 3)))
    text, ops = rng.choice(truths), _ops(rng)
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        text = rng.choice(ops)(text)
    return text


def question(rng):
    pieces = ["what is", "IS THE", " the BMW ", "sign?", "\n", " Please answer yes or no.", "ß", "İ", "  ", "how many"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 5))) or "q"


VQA = ["yes", "no", "2", "two", "Two", "red", "the cat", "t-shirt", "it's", "1,000", "50%", "3.5", "Yes", "dog.", "a&w",
       "none", "10", " yes\n", "black and white"]
DOC = ["John Smith", "J. Smith", "$1,234.00", "12/05/1998", "ITC Ltd.", "  spaced  out ", "straße", "Dr. ß", "", "1998"]
CHART = ["12", "0", "0.5", "45%", "1,000", "1e3", "nan", "Blue", "Yes", "2019", "-3.2", "inf", "12%", "0.0"]
CHOICES = ["cat", "dog", "bird", "rock", "milk", "Paris", "a solid", "(A)"]
OCR = ["CAT", "hello world", "12", "x^{2}", "\\frac{1}{2}", "New York", "ab c", "Line\nBreak", ""]
GQA = ["yes", "no", "left", "right", "man", "t-shirt", "black and white", "Yes", "wooden", "a"]
MME_CATEGORIES = ref.MME_PERCEPTION + ["commonsense_reasoning", "numerical_calculation", "text_translation",
                                       "code_reasoning", "made_up"]


def _vqa_doc(rng, structs: bool):
    pool = rng.sample(VQA, rng.randint(1, 3))
    answers = [rng.choice(pool) for _ in range(rng.choice([2, 3, 10, 10, 10]))]
    if structs:
        answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]
    return {"question": question(rng), "answers": answers}, pool


def docs(name, rng):
    """(doc, the right answers a prediction may be a variant of) for one row."""
    if name == "vqav2":
        return _vqa_doc(rng, structs=rng.random() < 0.7)
    if name == "textvqa":
        return _vqa_doc(rng, structs=False)
    if name == "docvqa":
        answers = rng.sample(DOC, rng.randint(1, 3))
        return {"question": question(rng), "answers": answers}, answers
    if name == "chartqa":
        answer = rng.choice(CHART)
        kind = rng.choice(["human_test", "augmented_test", "augmented_test", "other", None])
        return {"question": question(rng), "answer": answer, "type": kind}, [answer]
    if name == "scienceqa_img":
        choices = rng.sample(CHOICES, rng.randint(2, 5))
        answer = rng.randrange(len(choices))
        letter = "ABCDE"[answer]
        hint = rng.choice(["", "", "Look at the map.", "  "])
        return ({"question": question(rng), "hint": hint, "choices": choices, "answer": answer},
                [letter, letter, f"{letter}.", f"({letter})", f"{letter}. {choices[answer]}", choices[answer], "ABCDE"[answer - 1]])
    if name == "pope":
        return {"question": question(rng), "answer": rng.choice(["yes", "no", "Yes", "No", " yes"])}, ["yes", "no", "Yes", "No"]
    if name == "ocrbench":
        answers = rng.sample(OCR, rng.randint(1, 3))
        dataset = rng.choice(["IIIT5K", "HME100k", "ChartQA", None])
        cell = answers[0] if rng.random() < 0.2 else answers
        return ({"question": question(rng), "answer": cell, "dataset": dataset},
                answers + [f"the text says {a}" for a in answers] + [a.replace(" ", "") for a in answers])
    if name == "gqa":
        answer = rng.choice(GQA)
        return {"question": question(rng), "answer": answer}, [answer, "yes", "no"]
    raise KeyError(name)


def mme_docs(rng):
    """MME rows come in pairs: two questions an image, one Yes and one No, in either order."""
    out, image = [], 0
    while len(out) < ROWS:
        category = rng.choice(MME_CATEGORIES)
        image += 1
        answers = ["Yes", "No"] if rng.random() < 0.5 else ["No", "Yes."]
        for answer in answers:
            doc = {"question_id": f"{category}/{image:04d}.png", "question": question(rng), "answer": answer, "category": category}
            out.append((doc, ["Yes", "No", "Nope", "None", "y", "n", "I think yes", "Yes, it is", "Not really"]))
    return out


PROMPT = {"vqav2": ref.vqav2_text, "textvqa": ref.textvqa_text, "docvqa": ref.docvqa_text, "chartqa": ref.chartqa_text,
          "scienceqa_img": ref.sqa_text, "pope": ref.pope_text, "mme": ref.mme_text, "ocrbench": ref.ocrbench_text,
          "gqa": ref.gqa_text}
RESULT = {"vqav2": (ref.vqav2_results, "exact_match"), "textvqa": (ref.textvqa_results, "exact_match"),
          "docvqa": (ref.docvqa_results, "anls"), "chartqa": (ref.chartqa_results, "relaxed_overall"),
          "scienceqa_img": (ref.sqa_results, "exact_match"), "pope": (ref.pope_results, "score"),
          "ocrbench": (ref.ocrbench_results, "ocrbench_accuracy"), "gqa": (ref.gqa_results, "exact_match")}


def reference_rows(name, doc, text):
    """lmms-eval strips the generation before the task sees it; a null one scores 0 (our rule)."""
    if name == "mme":
        out = ref.mme_results(doc, [None if text is None else text.strip()])
        return next(iter(out.values()))["score"], out
    if name == "pope":
        out = ref.pope_results(doc, [None if text is None else text.strip()])
        return out["score"], out
    process, key = RESULT[name]
    if text is None:
        split = "relaxed_human_split" if doc.get("type") == "human_test" else "relaxed_augmented_split"
        return 0.0, {key: 0.0, split: 0.0}  # a null prediction still counts in its ChartQA split
    out = process(doc, [text.strip()])
    return float(out[key]), out


def reference_aggregates(name, results):
    mean = lambda values: sum(values) / len(values)  # noqa: E731 - lmms-eval's mean
    if name == "pope":
        return ref.pope_aggregate(results)
    if name == "mme":
        parts = {"perception": [], "cognition": []}
        for r in results:
            (part, value), = r.items()
            parts[part].append(value)
        return {part: ref.mme_aggregate(rows) for part, rows in parts.items()}
    if name == "chartqa":
        return {key: mean([r[key] for r in results if key in r])
                for key in ("relaxed_overall", "relaxed_human_split", "relaxed_augmented_split")}
    process, key = RESULT[name]
    return {BENCHMARKS[name].keys[0]: mean([r[key] for r in results])}


def _batch(rows: list[dict], text: list) -> dict[str, list]:
    # A dict of lists: the cells mix layouts (hub structs and plain strings, strings and lists)
    # that no single Arrow type holds.
    return {**{name: [r.get(name) for r in rows] for name in rows[0]}, "text": text}


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_agrees_with_a_second_reading_on_adversarial_predictions(name):
    rng = random.Random(f"benchmarks-{name}")
    pairs = mme_docs(rng) if name == "mme" else [docs(name, rng) for _ in range(ROWS)]
    rows = [doc for doc, _ in pairs]
    text = [prediction(rng, truths) for _, truths in pairs]
    benchmark = BENCHMARKS[name]

    for doc in rows[:300]:
        assert benchmark.prompt(doc) == PROMPT[name](doc), doc

    expected, results = zip(*(reference_rows(name, doc, t) for doc, t in zip(rows, text)))
    batch = _batch(rows, text)
    scores = score_batch(benchmark, batch)
    mismatches = [(rows[i], text[i], scores[i], expected[i]) for i in range(ROWS) if scores[i] != expected[i]]
    assert not mismatches, mismatches[:3]
    right = sum(1 for s in scores if s > 0)
    assert 0.1 * ROWS < right < 0.9 * ROWS, right  # the cases exercise matches and misses alike

    aggregator = Aggregator(benchmark)
    scored = pa.table({**{c: batch[c] for c in aggregator.tally.columns}, "score": pa.array(scores, pa.float64())})
    for start in range(0, ROWS, 500):
        aggregator.add_table(scored.slice(start, 500))
    assert aggregator.result() == reference_aggregates(name, list(results))
