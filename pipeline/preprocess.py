"""The CPU stages: read shard row groups, then decode images and run the model's processor.

Both are plain callables on column batches (dicts of numpy arrays), so Ray Data runs
them in its workers and tests run them directly. A row that cannot be used becomes
an error row with its reason; nothing here raises for bad data.
"""

from __future__ import annotations

import io

import numpy as np

from .images import DEFAULT_MAX_PIXELS, BadImage, decode_image
from .schema import ANSWERS, ID, IMAGE, IMAGE_URI, PROMPT, QUESTION
from .retry import StorageUnavailable, with_retries
from .shards import filesystem, read_row_group

DEFAULT_CAPTION_PROMPT = "Write a short caption for this image."
VQA_INSTRUCTION = "Answer the question using a single word or phrase."  # LLaVA's VQAv2 evaluation prompt

# A preprocessed row carries its model inputs to the GPU stage in one binary column (an
# uncompressed .npz): Ray Data would otherwise guess tensor types for ragged arrays per block,
# and blocks with and without error rows (None) then fail to combine.
MODEL_INPUTS = "model_inputs"
PASSTHROUGH = (ID, "source_shard", "row_index", "error", QUESTION, ANSWERS)


def encode_inputs(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def decode_inputs(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data)) as archive:
        return {name: archive[name] for name in archive.files}


def _column(table, name, n):
    return table.column(name).to_pylist() if name in table.column_names else [None] * n


def read_rows(task: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data stage: one (shard, row group) task in, its rows out.

    A row group that cannot be read still yields one error row per row (its row
    count is known from the footer), so the shard completes and reports why.
    """
    uri, group = str(task["shard"][0]), int(task["row_group"][0])
    first, count = int(task["first_row"][0]), int(task["num_rows"][0])
    try:
        table = read_row_group(uri, group)
        if table.num_rows != count:
            raise ValueError(f"row group {group} has {table.num_rows} rows, the footer says {count}")
        n = table.num_rows
        rows = {c: _column(table, c, n) for c in (ID, IMAGE, IMAGE_URI, PROMPT, QUESTION, ANSWERS)}
        errors = [None if i is not None else "missing field: id is null" for i in rows[ID]]
    except StorageUnavailable:
        raise  # storage is down, the data may be fine: fail the run (a rerun finishes it), no error rows
    except Exception as e:
        n = count
        rows = {c: [None] * n for c in (ID, IMAGE, IMAGE_URI, PROMPT, QUESTION, ANSWERS)}
        errors = [f"unreadable shard: row group {group}: {type(e).__name__}: {e}"] * n
    rows["error"] = errors
    rows["source_shard"] = [uri] * n
    rows["row_index"] = list(range(first, first + n))
    return {k: object_array(v) for k, v in rows.items()}


def object_array(values) -> np.ndarray:
    """A 1-D object array of ``values`` (numpy would make a 2-D array of equal-length lists)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def missing(value) -> bool:
    """Null in a column batch. A column that was all nulls in one block travels through Ray as
    Arrow's null type and comes back as float NaN (np.float32, not a Python float), so NaN counts
    as missing too."""
    return value is None or (isinstance(value, (float, np.floating)) and value != value)


def column(batch: dict[str, np.ndarray], name: str) -> list:
    """A column of a batch as a list with nulls as None (absent columns are all None)."""
    n = len(batch["id"])
    if name not in batch:
        return [None] * n
    return [None if missing(v) else v for v in batch[name]]


def build_prompt(processor, text: str) -> str:
    """The model's chat format around one image and ``text``; a text already holding the
    image token is taken as the complete prompt."""
    image_token = getattr(processor, "image_token", "<image>")
    if image_token in text:
        return text
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    return f"USER: {image_token}\n{text} ASSISTANT:"


class Preprocessor:
    """Ray Data stage (callable class): decode, validate, and apply the model's own processor."""

    def __init__(
        self,
        model: str,
        task: str = "caption",
        default_prompt: str = DEFAULT_CAPTION_PROMPT,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        pixel_dtype: str = "float32",
    ):
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model)
        self.task = task
        self.default_prompt = default_prompt
        self.max_image_pixels = max_image_pixels
        # Pixel values are the bulk of what crosses to the GPU actors: ship them in the model's precision.
        self.pixel_dtype = np.dtype(pixel_dtype)

    def prompt_text(self, prompt, question) -> str:
        if self.task == "vqa":
            if not question or not str(question).strip():
                raise BadImage("missing field: the VQA row has no question")
            return f"{str(question).strip()}\n{VQA_INSTRUCTION}"
        return prompt if prompt and str(prompt).strip() else self.default_prompt

    def image_bytes(self, image, image_uri) -> bytes:
        if image is not None:
            return bytes(image)
        if image_uri:
            def fetch() -> bytes:
                fs, path = filesystem(str(image_uri))
                with fs.open(path, "rb") as f:
                    return f.read()

            try:
                return with_retries(fetch, f"fetching {image_uri}")
            except StorageUnavailable:
                raise
            except Exception as e:
                raise BadImage(f"cannot fetch image_uri {image_uri}: {type(e).__name__}: {e}") from None
        raise BadImage("missing field: neither image nor image_uri is set")

    def one(self, image, image_uri, prompt, question) -> dict:
        picture = decode_image(self.image_bytes(image, image_uri), self.max_image_pixels)
        text = build_prompt(self.processor, self.prompt_text(prompt, question))
        inputs = self.processor(images=[picture], text=[text], return_tensors="np")
        item = {
            "input_ids": inputs["input_ids"][0].astype(np.int32),
            "pixel_values": inputs["pixel_values"][0].astype(self.pixel_dtype),
            "image_sizes": np.asarray(inputs.get("image_sizes", [[picture.height, picture.width]])[0], dtype=np.int64),
        }
        return item

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[ID])
        passthrough = PASSTHROUGH if self.task == "vqa" else PASSTHROUGH[:4]  # captions carry no VQA columns
        out = {c: column(batch, c) for c in passthrough}
        if self.task == "vqa":  # plain lists of strings: numpy string arrays do not convert back to Arrow
            out[ANSWERS] = [None if a is None else [str(x) for x in a] for a in out[ANSWERS]]
        images, uris, prompts = column(batch, IMAGE), column(batch, IMAGE_URI), column(batch, PROMPT)
        questions = column(batch, QUESTION)
        inputs = [None] * n
        for i in range(n):
            if out["error"][i] is not None:
                continue
            try:
                item = self.one(images[i], uris[i], prompts[i], questions[i])
            except BadImage as e:
                out["error"][i] = str(e)
                continue
            except StorageUnavailable:
                raise
            except Exception as e:  # the processor itself failed on this row: keep the reason, keep going
                out["error"][i] = f"preprocessing failed: {type(e).__name__}: {e}"
                continue
            inputs[i] = encode_inputs(item)
        out[MODEL_INPUTS] = inputs
        return {k: object_array(v) for k, v in out.items()}
