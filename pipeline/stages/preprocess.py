"""The CPU stage: decode images and run the model's own processor.

A plain callable class on column batches (dicts of numpy arrays), so Ray Data runs it in
its actors and tests run it directly. A row that cannot be used becomes an error row with
its reason; nothing here raises for bad data.
"""

from __future__ import annotations

import os

import numpy as np

from ..columns import (
    ANSWERS, ERROR, ID, IMAGE, IMAGE_URI, MODEL_INPUTS, PROMPT, QUESTION,
    answer_lists, batch_column, encode_inputs, object_array, passthrough,
)
from ..errors import StorageUnavailable
from ..faults import failpoint
from ..io.images import BadImage, decode_image
from ..io.storage import Storage
from ..settings import JobSettings

VQA_INSTRUCTION = "Answer the question using a single word or phrase."  # LLaVA's VQAv2 evaluation prompt


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


def niceness_beside_cpu_generation() -> int:
    """How far a preprocessing actor lowers its priority when generation runs on the same CPUs:
    ``HIRED_PREPROCESS_NICENESS`` if set (0 keeps normal priority), else 19, the lowest.

    On a CPU the generation actor's threads fill every core and wait for each other at the end of
    every operator, so whatever takes a core from one of them stalls the rest: beside preprocessing
    at normal priority, the actor's rows took 1.20-1.33x the bare predictor's time, far more than
    the CPU preprocessing used (about a tenth of one core for a 672x672 picture). At the lowest
    priority preprocessing runs mostly in the gaps generation leaves (its single-threaded stretches
    between operators and decoding steps) and still keeps ahead: 1.10-1.14x, and over two runs the
    whole job went from 0.68-0.84 of the bare predictor to 0.91-0.99 on 2 cores (bench/bench_pipeline.py,
    README). On a GPU, generation leaves the cores free and preprocessing keeps normal priority."""
    configured = os.environ.get("HIRED_PREPROCESS_NICENESS")
    return 19 if configured is None else max(0, int(configured))


class Preprocessor:
    """Ray Data stage (callable class): decode, validate, and apply the model's own processor.

    ``beside_cpu_generation``: this process shares its CPUs with generation on a CPU (the job
    says so for its actors); it then yields to it (see :func:`niceness_beside_cpu_generation`)."""

    def __init__(self, settings: JobSettings, pixel_dtype: str = "float32", beside_cpu_generation: bool = False):
        from transformers import AutoProcessor

        if beside_cpu_generation:
            os.nice(niceness_beside_cpu_generation())  # this actor's process only: it ends with the job
        self.processor = AutoProcessor.from_pretrained(settings.model)
        self.task = settings.task
        self.default_prompt = settings.default_prompt
        self.max_image_pixels = settings.max_image_pixels
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
            try:
                return Storage.at(str(image_uri)).read_bytes()
            except StorageUnavailable:
                raise
            except Exception as e:
                raise BadImage(f"cannot fetch image_uri: {image_uri}: {type(e).__name__}: {e}") from None
        raise BadImage("missing field: neither image nor image_uri is set")

    def one(self, image, image_uri, prompt, question) -> dict:
        picture = decode_image(self.image_bytes(image, image_uri), self.max_image_pixels)
        text = build_prompt(self.processor, self.prompt_text(prompt, question))
        inputs = self.processor(images=[picture], text=[text], return_tensors="np")
        item = {
            "input_ids": inputs["input_ids"][0].astype(np.int32),
            "pixel_values": inputs["pixel_values"][0].astype(self.pixel_dtype, copy=False),  # no copy when already in that dtype
            "image_sizes": np.asarray(inputs.get("image_sizes", [[picture.height, picture.width]])[0], dtype=np.int64),
        }
        return item

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        failpoint("preprocess")  # tests hold a batch here, then lose the node it is on
        n = len(batch[ID])
        out = {c: batch_column(batch, c) for c in passthrough(self.task)}
        if self.task == "vqa":
            out[ANSWERS] = answer_lists(out[ANSWERS])
        images, uris, prompts = batch_column(batch, IMAGE), batch_column(batch, IMAGE_URI), batch_column(batch, PROMPT)
        questions = batch_column(batch, QUESTION)
        inputs = [None] * n
        for i in range(n):
            if out[ERROR][i] is not None:
                continue
            try:
                item = self.one(images[i], uris[i], prompts[i], questions[i])
            except BadImage as e:
                out[ERROR][i] = str(e)
                continue
            except StorageUnavailable:
                raise
            except Exception as e:  # the processor itself failed on this row: keep the reason, keep going
                out[ERROR][i] = f"preprocessing failed: {type(e).__name__}: {e}"
                continue
            inputs[i] = encode_inputs(item)
        out[MODEL_INPUTS] = inputs
        return {k: object_array(v) for k, v in out.items()}
