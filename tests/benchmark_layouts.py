"""Small tables in the layouts of the benchmarks' hub copies (the Arrow types lmms-eval loads,
an image column included), each with predictions in ``text`` and the scores and aggregates
worked out by hand from lmms-eval's rules."""

from __future__ import annotations

import pyarrow as pa

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
S, LS = pa.string(), pa.list_(pa.string())


def _images(n: int) -> pa.Array:
    return pa.array([{"bytes": b"\x89PNG-not-decoded-%d" % i, "path": f"{i}.png"} for i in range(n)], type=IMAGE)


def _table(fields: list[tuple[str, pa.DataType]], rows: list[dict], text: list) -> pa.Table:
    columns = {name: pa.array([r.get(name) for r in rows], type=t) for name, t in fields}
    columns["image"] = _images(len(rows))
    columns["text"] = pa.array(text, type=pa.string())
    return pa.table(columns)


def vqav2():
    answer = pa.struct([("answer", S), ("answer_confidence", S), ("answer_id", pa.int64())])
    fields = [("question_id", pa.int64()), ("question", S), ("question_type", S), ("answer_type", S),
              ("multiple_choice_answer", S), ("answers", pa.list_(answer)), ("image_id", pa.int64())]

    def answers(*words):
        return [{"answer": w, "answer_confidence": "yes", "answer_id": i + 1} for i, w in enumerate(words)]

    rows = [
        {"question_id": 1, "question": "How many dogs?", "answers": answers(*["2"] * 3 + ["3"] * 7)},
        {"question_id": 2, "question": "Is it sunny?", "answers": answers(*["yes"] * 10)},
        {"question_id": 3, "question": "Is it sunny?", "answers": answers(*["Yes"] * 10)},
        {"question_id": 4, "question": "What color?", "answers": answers(*["red"] * 10)},
    ]
    for r in rows:
        r.update(question_type="how many", answer_type="other", multiple_choice_answer="x", image_id=r["question_id"] * 10)
    # "Two" -> "2": 3 of 10 match -> 0.9; " yes." -> "yes" = unanimous "yes" -> 1; "yes" vs unanimous
    # "Yes" (left as written) -> 0; null -> 0.
    return _table(fields, rows, ["Two", " yes.", "yes", None]), [0.9, 1.0, 0.0, 0.0], {"accuracy": 1.9 / 4}


def textvqa():
    fields = [("question_id", pa.int32()), ("question", S), ("image_id", S), ("answers", LS), ("ocr_tokens", LS),
              ("question_tokens", LS), ("image_classes", LS), ("set_name", S), ("image_width", pa.int32()),
              ("image_height", pa.int32()), ("flickr_original_url", S), ("flickr_300k_url", S)]
    rows = [
        {"question_id": 1, "question": "what brand?", "answers": ["Coca-Cola"] * 3 + ["coke"] * 7},
        {"question_id": 2, "question": "what is it?", "answers": ["Yes"] * 10},
        {"question_id": 3, "question": "how many?", "answers": ["2"] * 2 + ["two"] * 8},
    ]
    for r in rows:
        r.update(image_id="i", ocr_tokens=["a"], question_tokens=["q"], image_classes=["c"], set_name="val",
                 image_width=8, image_height=8, flickr_original_url="u", flickr_300k_url="u")
    # "coca cola" = processed "Coca-Cola" (3 of 10) -> 0.9; "yes" = processed "Yes" -> 1; "3" -> 0.
    return _table(fields, rows, ["coca cola", "yes", "3"]), [0.9, 1.0, 0.0], {"accuracy": 1.9 / 3}


def docvqa():
    fields = [("questionId", S), ("question", S), ("question_types", LS), ("docId", pa.int64()), ("ucsf_document_id", S),
              ("ucsf_document_page_no", S), ("data_split", S), ("answers", LS)]
    rows = [
        {"questionId": "1", "question": "Who signed?", "answers": ["John Smith", "J. Smith"]},
        {"questionId": "2", "question": "Name?", "answers": ["Smith"]},
        {"questionId": "3", "question": "Code?", "answers": ["abcdefg"]},
    ]
    for r in rows:
        r.update(question_types=["form"], docId=7, ucsf_document_id="x", ucsf_document_page_no="1", data_split="val")
    # "john smith" equals "John Smith" normalised -> 1; "Smth": 1 edit / 5 -> 0.8; "abc": 4 / 7 -> below 0.5 -> 0.
    return _table(fields, rows, ["john smith", "Smth", "abc"]), [1.0, 0.8, 0.0], {"anls": 1.8 / 3}


def chartqa():
    fields = [("type", S), ("question", S), ("answer", S)]
    rows = [
        {"type": "human_test", "question": "Value?", "answer": "12"},
        {"type": "human_test", "question": "Value?", "answer": "12"},
        {"type": "augmented_test", "question": "Share?", "answer": "0.5"},
        {"type": "augmented_test", "question": "Color?", "answer": "Blue"},
    ]
    # 12.5 is within 5% of 12 -> 1; 13 is not -> 0; "50%" = 0.5 -> 1; "blue" = "Blue" ignoring case -> 1.
    return (_table(fields, rows, ["12.5", "13", "50%", "blue"]), [1.0, 0.0, 1.0, 1.0],
            {"relaxed_overall": 0.75, "relaxed_human_split": 0.5, "relaxed_augmented_split": 1.0})


def scienceqa_img():
    fields = [("question", S), ("choices", LS), ("answer", pa.int8())] + [
        (name, S) for name in ("hint", "task", "grade", "subject", "topic", "category", "skill", "lecture", "solution")]
    base = {"question": "Which animal?", "choices": ["cat", "dog", "bird"], "answer": 1, "hint": "", "task": "closed choice",
            "grade": "grade2", "subject": "natural science", "topic": "biology", "category": "animals", "skill": "s",
            "lecture": "l", "solution": "s"}
    rows = [dict(base) for _ in range(4)]
    # "B" -> 1; " b" -> 1; "B." -> 0 (lower-cased before the "A." rule); "(B)" -> 0.
    return _table(fields, rows, ["B", " b", "B.", "(B)"]), [1.0, 1.0, 0.0, 0.0], {"accuracy": 0.5}


def pope():
    fields = [(name, S) for name in ("id", "question_id", "question", "answer", "image_source", "category")]
    truth = ["yes", "yes", "yes", "no", "no", "no"]
    rows = [{"id": str(i), "question_id": str(i), "question": "Is there a dog?", "answer": a, "image_source": "coco",
             "category": "random"} for i, a in enumerate(truth)]
    # TP 1 (yes/"Yes"), FN 1 (yes/"no"), yes/"Yes." neither; FP 1 (no/"yes"), TN 1, no/null neither.
    aggregates = {"accuracy": 2 / 6, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5}
    return _table(fields, rows, ["Yes", "no", "Yes.", "yes", "No", None]), [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], aggregates


def mme():
    fields = [(name, S) for name in ("question_id", "question", "answer", "category")]
    pairs = [("color", "a.png", "Yes, it is", "No"), ("color", "b.png", "Yes", "Yes"), ("OCR", "c.png", "no", "yes"),
             ("code_reasoning", "d.png", "y", "Nope")]
    rows, text = [], []
    for category, image, first, second in pairs:
        rows += [{"question_id": f"{category}/{image}", "question": "Q? Please answer yes or no.", "answer": "Yes",
                  "category": category},
                 {"question_id": f"{category}/{image}", "question": "Q? Please answer yes or no.", "answer": "No",
                  "category": category}]
        text += [first, second]
    # color: a both right (100 + 100), b one right (50) -> 125; OCR: c none right -> 0; perception 125.
    # code_reasoning: d both right -> 200 = cognition.
    return (_table(fields, rows, text), [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0],
            {"perception": 125.0, "cognition": 200.0})


def ocrbench():
    fields = [("dataset", S), ("question", S), ("question_type", S), ("answer", LS)]
    rows = [
        {"dataset": "IIIT5K", "question": "what is written?", "question_type": "Regular Text Recognition", "answer": ["CAT"]},
        {"dataset": "IIIT5K", "question": "what is written?", "question_type": "Regular Text Recognition", "answer": ["12"]},
        {"dataset": "HME100k", "question": "formula?", "question_type": "Handwritten Mathematical Expression Recognition",
         "answer": ["x^{2}"]},
        {"dataset": "HME100k", "question": "formula?", "question_type": "Handwritten Mathematical Expression Recognition",
         "answer": ["X^{2}"]},
    ]
    # "The word is cat" holds "cat"; "1 2" does not hold "12"; "x ^ { 2 }" without spaces holds
    # "x^{2}"; "X^{2}" is lower-cased on the prediction side only -> 0.
    return _table(fields, rows, ["The word is cat", "1 2", "x ^ { 2 }", "X^{2}"]), [1.0, 0.0, 1.0, 0.0], {"accuracy": 0.5}


def gqa():
    semantic = pa.list_(pa.struct([("operation", S), ("argument", S), ("dependencies", pa.list_(pa.int32()))]))
    fields = [("id", S), ("imageId", S), ("question", S), ("answer", S), ("fullAnswer", S), ("isBalanced", pa.bool_()),
              ("groups", pa.struct([("global", S), ("local", S)])), ("equivalent", LS), ("semantic", semantic),
              ("semanticStr", S)]
    rows = [{"id": str(i), "imageId": "n1", "question": "Which side?", "answer": a, "fullAnswer": f"It is {a}.",
             "isBalanced": True, "groups": {"global": None, "local": "l"}, "equivalent": [str(i)],
             "semantic": [{"operation": "select", "argument": "x", "dependencies": []}], "semanticStr": "s"}
            for i, a in enumerate(["left", "t-shirt", "cat"])]
    # "Left." -> "left" = 1; "tshirt" = "t-shirt" without punctuation -> 1; "a cat" != "cat" -> 0.
    return _table(fields, rows, ["Left.", "tshirt", "a cat"]), [1.0, 1.0, 0.0], {"accuracy": 2 / 3}


LAYOUTS = {f.__name__: f for f in (vqav2, textvqa, docvqa, chartqa, scienceqa_img, pope, mme, ocrbench, gqa)}


# ---------------------------------------------------------------- inputs for the VQA job

# A value each benchmark cannot score, in the column that holds its ground truth (pipeline.benchmarks).
BAD_GROUND_TRUTH = {
    "vqav2": ("answers", []), "textvqa": ("answers", None), "docvqa": ("answers", []), "chartqa": ("answer", None),
    "scienceqa_img": ("answer", 7), "pope": ("answer", "maybe"), "mme": ("answer", "maybe"), "ocrbench": ("answer", None),
    "gqa": ("answer", None),
}


def job_input(name: str, truncated: int = 0) -> tuple[pa.Table, pa.Table]:
    """(rows to answer, rows whose ground truth cannot be scored) in the benchmark's hub layout,
    with real pictures instead of placeholders, the predictions dropped; row ``truncated`` of the
    first holds a truncated JPEG. MME's bad rows are a pair, so they leave no half-scored image."""
    from .data import encoded, truncated_jpeg

    table, _, _ = LAYOUTS[name]()
    pictures = [{"bytes": truncated_jpeg(i) if i == truncated else encoded(40 + 6 * i, 56, "PNG", seed=i), "path": None}
                for i in range(table.num_rows)]
    table = table.set_column(table.column_names.index("image"), "image", pa.array(pictures, type=IMAGE))
    table = table.drop_columns(["text"])
    column, value = BAD_GROUND_TRUTH[name]
    bad = table.slice(0, 2 if name == "mme" else 1)
    bad = bad.set_column(bad.column_names.index(column), column,
                         pa.array([value] * bad.num_rows, type=bad.schema.field(column).type))
    good_pictures = pa.array([{"bytes": encoded(60, 60, seed=99), "path": None}] * bad.num_rows, type=IMAGE)
    bad = bad.set_column(bad.column_names.index("image"), "image", good_pictures)
    for ident in ("id", "question_id"):  # ids of their own (MME's question_id names the image: kept)
        if ident in bad.column_names and name != "mme":
            field = bad.schema.field(ident)
            fresh = [f"bad-{i}" if pa.types.is_string(field.type) else 1000 + i for i in range(bad.num_rows)]
            bad = bad.set_column(bad.column_names.index(ident), field, pa.array(fresh, type=field.type))
    return table, bad
