"""A second reading of lmms-eval's nine tasks (commit c0c0a977), written apart from
``pipeline.benchmarks`` to check it: shaped like lmms-eval (``doc_to_text(doc)``,
``process_results(doc, [prediction])`` returning per-metric dicts, aggregations over the list of
every row's dicts), with its own string handling (regular expressions and character loops
where the library uses translation tables, a plain dynamic-programming edit distance, explicit
leave-one-out subsets). Only the EvalAI processor's word tables are shared: they are data.

The rules where the library documents its own choice (a null prediction scores 0 and is neither
yes nor no; GQA on Python strings, not numpy's fixed-width ones) are read the same way here.
"""

from __future__ import annotations

import re
import statistics
import string
from collections import defaultdict

from pipeline.benchmarks.vqa_answers import ARTICLES, CONTRACTIONS, NUMBER_WORDS

# ---------------------------------------------------------------- the EvalAI processor

PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d)(,)+(?=\d)")
LONE_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")


def punctuation(text: str) -> str:
    out = text
    for mark in PUNCT:
        if (mark + " " in text or " " + mark in text) or COMMA_BETWEEN_DIGITS.search(text):
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return LONE_PERIOD.sub("", out, 32)  # the published call passes re.UNICODE (32) as the count


def digits_and_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def evalai(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return digits_and_articles(punctuation(text))


def loo(answers: list, prediction: str) -> float:
    accs = []
    for i in range(len(answers)):
        others = [answers[j] for j in range(len(answers)) if j != i]
        accs.append(min(1, float(sum(1 for o in others if o == prediction)) / 3))
    return statistics.mean(accs)


# ---------------------------------------------------------------- per task: prompt and per-row result

SHORT = "\nAnswer the question using a single word or phrase."


def vqav2_text(doc):
    return f"{doc['question']}"


def vqav2_results(doc, results):
    pred = evalai(results[0])
    answers = [dict(a) if isinstance(a, dict) else {"answer": a} for a in doc["answers"]]
    for i, a in enumerate(answers):
        a["answer"] = a["answer"].replace("\n", " ").replace("\t", " ").strip()
        a.setdefault("answer_id", i)
    if len({a["answer"] for a in answers}) > 1:
        for a in answers:
            a["answer"] = digits_and_articles(punctuation(a["answer"]))
        pred = digits_and_articles(punctuation(pred))
    accs = []
    for a in answers:  # the others are told apart by inequality of the whole record, as published
        matching = [o for o in answers if o != a and o["answer"] == pred]
        accs.append(min(1, float(len(matching)) / 3))
    return {"exact_match": statistics.mean(accs)}


def textvqa_text(doc):
    return doc["question"].capitalize() + SHORT


def textvqa_results(doc, results):
    return {"exact_match": loo([evalai(a) for a in doc["answers"]], evalai(results[0]))}


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]))
        previous = current
    return previous[-1]


def docvqa_text(doc):
    return doc["question"] + SHORT


def docvqa_results(doc, results):
    pred = results[0]
    values = []
    for gt in doc["answers"]:
        length = max(len(gt.upper()), len(pred.upper()))
        dist = edit_distance(re.sub(r"\s+", " ", gt.lower()).strip(), re.sub(r"\s+", " ", pred.lower()).strip())
        values.append(0.0 if length == 0 else float(dist) / float(length))
    result = 1 - min(values)
    return {"anls": 0 if result < 0.5 else result}


def chartqa_text(doc):
    return doc["question"] + "\nAnswer the question with a single word."


def _chart_number(s: str):
    percent = re.fullmatch(r"(.*?)%+", s, re.S)
    try:
        return float(percent.group(1)) / 100.0 if percent else float(s)
    except ValueError:
        return None


def chartqa_results(doc, results):
    pred, target = results[0], doc["answer"]
    p, t = _chart_number(pred), _chart_number(target)
    if p is not None and t:
        correct = abs(p - t) / abs(t) <= 0.05
    else:
        correct = pred.lower() == target.lower()
    score = 1.0 if correct else 0.0
    out = {"relaxed_overall": score}
    out["relaxed_human_split" if doc["type"] == "human_test" else "relaxed_augmented_split"] = score
    return out


def sqa_text(doc):
    context = f"Context: {doc['hint']}\n" if doc.get("hint") else ""
    options = "\n".join(f"{'ABCDEFGHIJ'[i]}. {c}" for i, c in enumerate(doc["choices"]))
    return f"{context}{doc['question']}\n{options}\nAnswer with the option's letter from the given choices directly."


def sqa_results(doc, results):
    target = "ABCDEFGHIJ"[doc["answer"]].strip().lower()
    pred = results[0].strip().lower()
    if pred == target:
        return {"exact_match": 1.0}
    if len(pred) >= 2 and pred[0].isupper() and pred[1] == ".":
        return {"exact_match": 1.0 if pred[0] == target else 0.0}
    return {"exact_match": 0.0}


def pope_text(doc):
    return doc["question"].strip() + SHORT


def pope_results(doc, results):
    pred = None if results[0] is None else results[0].lower().strip()
    gt = doc["answer"].lower().strip()
    return {"score": 1.0 if pred == gt else 0.0, "prediction": pred, "ground_truth": gt}


def pope_aggregate(rows):
    tp = sum(1 for r in rows if r["ground_truth"] == "yes" and r["prediction"] == "yes")
    fp = sum(1 for r in rows if r["ground_truth"] == "no" and r["prediction"] == "yes")
    fn = sum(1 for r in rows if r["ground_truth"] == "yes" and r["prediction"] == "no")
    precision = tp / (tp + fp) if tp + fp > 0 else 0
    recall = tp / (tp + fn) if tp + fn > 0 else 0
    yes = sum(1 for r in rows if r["ground_truth"] == "yes")
    no = sum(1 for r in rows if r["ground_truth"] == "no")
    return {
        "accuracy": sum(r["score"] for r in rows) / len(rows),
        "precision": precision,
        "recall": recall,
        "f1": 2 * (precision * recall) / (precision + recall) if precision + recall > 0 else 0,
        "yes_ratio": yes / (yes + no) if yes + no > 0 else 0,
    }


MME_PERCEPTION = ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR"]


def mme_text(doc):
    return re.sub(re.escape(" Please answer yes or no."), "", doc["question"].strip()) + SHORT


def mme_parse(pred):
    p = re.sub(r"\.", "", pred.lower().strip())
    if p == "yes" or p == "no":
        return p
    if len(p) == 1:
        return "yes" if p == "y" else "no" if p == "n" else "other"
    if p[:4].find("yes") >= 0:
        return "yes"
    if p[:4].find("no") >= 0:
        return "no"
    return "other"


def mme_results(doc, results):
    pred = "(null)" if results[0] is None else mme_parse(results[0])
    gt = doc["answer"].lower().strip().replace(".", "")
    key = "perception" if doc["category"] in MME_PERCEPTION else "cognition"
    return {key: {"question_id": doc["question_id"], "category": doc["category"], "score": 1.0 if pred == gt else 0.0}}


def mme_aggregate(results):
    by_category = defaultdict(dict)
    for r in results:
        by_category[r["category"]].setdefault(r["question_id"], []).append(r["score"])
    averages = {}
    for category, images in by_category.items():
        total = 0
        for scores in images.values():
            assert len(scores) == 2
            total += (sum(scores) == 2) * 100.0 + sum(scores) / len(scores) * 100.0
        averages[category] = total / len(images)
    return sum(averages.values())


def ocrbench_text(doc):
    return doc["question"].strip()


def ocrbench_results(doc, results):
    pred = results[0].lower().strip()
    answers = doc["answer"] if type(doc["answer"]) == list else [doc["answer"]]
    score = 0
    for gt in answers:
        if doc["dataset"] == "HME100k":
            if re.sub(" ", "", gt.strip().replace("\n", " ")) in re.sub(" ", "", pred.strip().replace("\n", " ")):
                score = 1
        elif gt.lower().strip().replace("\n", " ") in pred.lower().strip().replace("\n", " "):
            score = 1
    return {"ocrbench_accuracy": score}


def gqa_text(doc):
    return doc["question"] + SHORT


def _no_ascii_punct(s: str) -> str:
    return "".join(ch for ch in s if ch not in string.punctuation)


def gqa_results(doc, results):
    return {"exact_match": float(_no_ascii_punct(results[0].lower()) == _no_ascii_punct(doc["answer"].lower()))}
