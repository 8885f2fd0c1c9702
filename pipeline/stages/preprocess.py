"""The CPU stage: decode images and run the model's own processor.

A plain callable class on column batches, so Ray Data runs it in its actors and tests run it
directly. A row that cannot be used becomes an error row with its reason; nothing here raises
for bad data.
"""

from __future__ import annotations

import os

import numpy as np

from ..benchmarks import BenchmarkDataError
from ..benchmarks.scoring import rows_of
from ..columns import IMAGE, IMAGE_URI, MODEL_INPUTS, PROMPT, QUESTION, READ_COLUMNS, carried
from ..errors import StorageUnavailable
from ..faults import failpoint
from ..io.images import decode_image
from ..io.location import Location
from ..row_errors import ErrorKind, RowError, RowFailed
from ..settings import JobSettings
from ..wire import encode_inputs
from .base import Rows

VQA_INSTRUCTION = "Answer the question using a single word or phrase."  # LLaVA's VQAv2 evaluation prompt
NEEDS = {name: READ_COLUMNS[name] for name in (IMAGE, IMAGE_URI, PROMPT, QUESTION)}


def chat_prompt(processor, text: str) -> str:
    """The model's chat format: one user turn of the image then ``text``, and the assistant's turn opened."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    return f"USER: {getattr(processor, 'image_token', '<image>')}\n{text} ASSISTANT:"


def build_prompt(processor, text: str) -> str:
    """:func:`chat_prompt` of a row's own instruction; a text already holding the image token is
    taken as the complete prompt."""
    if getattr(processor, "image_token", "<image>") in text:
        return text
    return chat_prompt(processor, text)


class Preprocessor:
    """Ray Data stage (callable class): decode, validate, and apply the model's own processor.

    ``beside_cpu_generation``: this process shares its CPUs with generation on a CPU (the job says
    so for its actors). It then runs at ``settings.preprocess_niceness``: generation's threads wait
    for each other at the end of every operator, so a core taken from one stalls them all, and at
    a low priority preprocessing runs in the gaps they leave (bench/README.md)."""

    def __init__(self, settings: JobSettings, pixel_dtype: str = "float32", beside_cpu_generation: bool = False):
        from transformers import AutoProcessor

        if beside_cpu_generation:
            os.nice(settings.preprocess_niceness)  # this actor's process only: it ends with the job
        self.processor = AutoProcessor.from_pretrained(settings.model)
        self.task = settings.task
        self.scoring = settings.scoring
        # With a benchmark, its columns build the prompt (each as the benchmark names it).
        self.prompt_columns = {} if self.scoring is None else {c.name: carried(c.name) for c in self.scoring.columns}
        self.needs = {**NEEDS, **{carried(c.name): c.holds for c in (self.scoring.columns if self.scoring else ())}}
        self.default_prompt = settings.default_prompt
        self.prompt_set = [text for _, text in settings.prompts]  # --prompts: every picture's prompts
        self.max_image_pixels = settings.max_image_pixels
        self.retry = settings.retry
        self.pixel_dtype = np.dtype(pixel_dtype)

    def prompt_text(self, prompt, question) -> str:
        if self.task == "vqa":
            if not question or not str(question).strip():
                raise RowFailed(ErrorKind.MISSING_FIELD, "the VQA row has no question")
            return f"{str(question).strip()}\n{VQA_INSTRUCTION}"
        return prompt if prompt and str(prompt).strip() else self.default_prompt

    def image_bytes(self, image, image_uri) -> bytes:
        if image is not None:
            return bytes(image)
        if image_uri:
            try:
                return Location.resolve(str(image_uri), self.retry).read_bytes()
            except StorageUnavailable:
                raise
            except Exception as e:
                raise RowFailed(ErrorKind.CANNOT_FETCH_IMAGE, f"{image_uri}: {type(e).__name__}: {e}") from None
        raise RowFailed(ErrorKind.MISSING_FIELD, "neither image nor image_uri is set")

    def benchmark_prompt(self, row: dict) -> str:
        """The benchmark's own user text for the row (lmms-eval's, for llava_hf), in the model's chat format."""
        try:
            return chat_prompt(self.processor, self.scoring.prompt(row))
        except BenchmarkDataError as error:
            raise RowFailed(ErrorKind.BAD_QUESTION, f"{self.scoring.name}: {error.reason}") from None

    def one(self, image, image_uri, prompt, question, benchmark_row: dict | None = None) -> dict[str, np.ndarray]:
        if benchmark_row is not None:
            texts = [self.benchmark_prompt(benchmark_row)]  # before decoding: a bad row costs no decode
        elif self.prompt_set:
            texts = [build_prompt(self.processor, text) for text in self.prompt_set]
        else:
            texts = [build_prompt(self.processor, self.prompt_text(prompt, question))]
        picture = decode_image(self.image_bytes(image, image_uri), self.max_image_pixels)
        inputs = self.processor(images=[picture], text=texts[:1], return_tensors="np")
        out = {
            "input_ids": inputs["input_ids"][0].astype(np.int32),
            "pixel_values": inputs["pixel_values"][0].astype(self.pixel_dtype, copy=False),  # no copy when already in that dtype
            "image_sizes": np.asarray(inputs.get("image_sizes", [[picture.height, picture.width]])[0], dtype=np.int64),
        }
        if self.prompt_set:  # the picture once; each prompt tokenized as the processor tokenizes the first
            ids = [out["input_ids"]] + [self.shared_picture_ids(out["input_ids"], text) for text in texts[1:]]
            out["input_ids"] = np.concatenate(ids)
            out["prompt_lengths"] = np.asarray([len(x) for x in ids], dtype=np.int32)
        return out

    def shared_picture_ids(self, first_ids: np.ndarray, text: str) -> np.ndarray:
        """``text``'s token ids with its image token expanded to the placeholders the processor gave the
        picture in the first prompt (what the processor itself does before tokenizing)."""
        token = getattr(self.processor, "image_token", "<image>")
        count = int((first_ids == self.processor.tokenizer.convert_tokens_to_ids(token)).sum())
        ids = self.processor.tokenizer(text.replace(token, token * count), return_tensors="np")["input_ids"][0]
        return ids.astype(np.int32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        failpoint("preprocess")  # tests hold a batch here, then lose the node it is on
        rows = Rows(batch, self.needs, "preprocess")
        images, uris, prompts, questions = (rows.column(c) for c in (IMAGE, IMAGE_URI, PROMPT, QUESTION))
        benchmark_rows = rows_of(batch, self.prompt_columns) if self.scoring else [None] * rows.size
        inputs = rows.add(MODEL_INPUTS)
        for i in rows.ok():
            try:
                inputs[i] = encode_inputs(self.one(images[i], uris[i], prompts[i], questions[i], benchmark_rows[i]))
            except RowFailed as failed:
                rows.fail(i, failed.error)
            except StorageUnavailable:
                raise
            except Exception as e:  # the processor itself failed on this row: keep the reason, keep going
                rows.fail(i, RowError(ErrorKind.PREPROCESSING_FAILED, f"{type(e).__name__}: {e}"))
        rows.drop(IMAGE, IMAGE_URI, PROMPT)
        return rows.result()
