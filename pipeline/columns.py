"""Every column between the stages and in the output, named once, with what it holds.

Between Ray Data stages a batch is a dict of 1-D numpy object arrays, one per column. Each stage
declares the columns it needs (``NEEDS``, from the tables here) and a shared check refuses a batch
that lacks one (:mod:`pipeline.stages.base`); the columns a stage does not consume pass through.

    read -> READ_COLUMNS -> preprocess (+ MODEL_INPUTS, - the image and prompt)
         -> generate (+ GENERATED, - MODEL_INPUTS) -> [score] -> the driver writes OUTPUT_SCHEMA

With ``--benchmark``, the read stage also carries each of the benchmark's columns (its prompt's
and its metric's, :mod:`pipeline.benchmarks`) as the input holds it, under :func:`carried` names;
preprocessing builds the prompt from them, and scoring adds ``score`` and hands them to the output
under the benchmark's own names.
"""

from __future__ import annotations

import pyarrow as pa

from .benchmarks.base import SCORE

ID, IMAGE, IMAGE_URI, PROMPT = "id", "image", "image_uri", "prompt"
QUESTION, ANSWERS = "question", "answers"
SAMPLING, CHOICES = "sampling", "choices"
PROMPT_NAME, PROMPT_INDEX = "prompt_name", "prompt_index"
SOURCE_SHARD, ROW_INDEX = "source_shard", "row_index"
ERROR_KIND, ERROR_DETAIL, ERROR = "error_kind", "error_detail", "error"
MODEL_INPUTS = "model_inputs"
TEXT = "text"
VISUAL_TOKENS_FULL, VISUAL_TOKENS_KEPT = "visual_tokens_full", "visual_tokens_kept"
PROMPT_TOKENS, GENERATED_TOKENS = "prompt_tokens", "generated_tokens"
TTFT_MS, DECODE_MS, TOKENS_PER_S = "ttft_ms", "decode_ms", "tokens_per_s"
BATCH_SIZE, PEAK_GPU_MEM_BYTES, DEVICE, MODEL = "batch_size", "peak_gpu_mem_bytes", "device", "model"
STRATEGY, BUDGET_FRACTION, BUDGET_TOKENS, ALPHA, RUN_ID = "strategy", "budget_fraction", "budget_tokens", "alpha", "run_id"
VQA_ACCURACY, EXACT_MATCH = "vqa_accuracy", "exact_match"

# What the read stage emits for every row, whatever the input's format.
READ_COLUMNS = {
    ID: "the input's id as a string, or the row's place '<shard name>/<row index>'",
    IMAGE: "encoded image bytes, or null",
    IMAGE_URI: "a URI to fetch the image from where IMAGE is null (relative paths resolved)",
    PROMPT: "the row's own instruction, or null for the job's default",
    QUESTION: "the VQA question, or null",
    ANSWERS: "the VQA references as a list of strings, or null",
    SAMPLING: "the row's sampling overrides as a dict (--sampling-column), or null",
    CHOICES: "the row's allowed answers as a list of strings (--choices-column), or null",
    SOURCE_SHARD: "the input shard's URI",
    ROW_INDEX: "the row's position in its shard",
    ERROR_KIND: "null while the row is fine, else a pipeline.row_errors.ErrorKind value",
    ERROR_DETAIL: "what went wrong, beside ERROR_KIND",
}
CARRIED_PREFIX = "benchmark:"  # a carried benchmark column between stages: never an input or output name


def carried(name: str) -> str:
    """The name a benchmark column travels under between the stages."""
    return CARRIED_PREFIX + name


# One binary column carries a preprocessed row's model inputs to the GPU stage (pipeline.wire): Ray
# Data would otherwise guess tensor types for ragged arrays per block, and blocks with and without
# error rows (null) then fail to combine.
PREPROCESSED = {MODEL_INPUTS: "input_ids, pixel_values and image_sizes, encoded by pipeline.wire"}
# What generation adds to every row (null on an error row).
GENERATED = {
    PROMPT_NAME: "with --prompts: the prompt's name (the generation stage emits a row per prompt)",
    PROMPT_INDEX: "with --prompts: the prompt's place in the prompts file, from 0",
    TEXT: "the caption or answer",
    VISUAL_TOKENS_FULL: "N: grid tokens the stock model would use",
    VISUAL_TOKENS_KEPT: "grid tokens that reached the LLM",
    PROMPT_TOKENS: "the LLM's input length for this item",
    GENERATED_TOKENS: "new tokens, up to and including the first end-of-sequence",
    TTFT_MS: "batch start to first token: vision + HiRED + prefill",
    DECODE_MS: "first token to the batch's last token",
    TOKENS_PER_S: "this item's generated tokens / (ttft + decode)",
    BATCH_SIZE: "items generated together with this one",
    PEAK_GPU_MEM_BYTES: "the batch's peak allocated GPU memory; null on CPU",
    DEVICE: "where it ran",
    MODEL: "the checkpoint",
    STRATEGY: "the token-dropping strategy, or 'none' for every token",
    BUDGET_FRACTION: "the budget as a fraction of each image's tokens (else null)",
    BUDGET_TOKENS: "the budget as a token count (else null)",
    ALPHA: "HiRED's share of the budget for the full view",
    RUN_ID: "the run that produced the row",
}

# The output: one row per input row, in input order, one Parquet file per input shard.
OUTPUT_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string()),
        pa.field(TEXT, pa.string()),  # null on error
        pa.field(ERROR, pa.string()),  # null when fine, else "<kind>: <detail>"
        pa.field(ERROR_KIND, pa.string()),  # null when fine, else the kind alone (pipeline.row_errors)
        pa.field(VISUAL_TOKENS_FULL, pa.int32()),
        pa.field(VISUAL_TOKENS_KEPT, pa.int32()),
        pa.field(PROMPT_TOKENS, pa.int32()),
        pa.field(GENERATED_TOKENS, pa.int32()),
        pa.field(TTFT_MS, pa.float64()),
        pa.field(DECODE_MS, pa.float64()),
        pa.field(TOKENS_PER_S, pa.float64()),
        pa.field(BATCH_SIZE, pa.int32()),
        pa.field(PEAK_GPU_MEM_BYTES, pa.int64()),
        pa.field(DEVICE, pa.string()),
        pa.field(MODEL, pa.string()),
        pa.field(STRATEGY, pa.string()),
        # One of the two budget columns is set, the other null; both null without dropping.
        pa.field(BUDGET_FRACTION, pa.float64()),
        pa.field(BUDGET_TOKENS, pa.int32()),
        pa.field(ALPHA, pa.float64()),
        pa.field(RUN_ID, pa.string()),
        pa.field(SOURCE_SHARD, pa.string()),
        pa.field(ROW_INDEX, pa.int64()),
    ]
)

VQA_FIELDS = [
    pa.field(QUESTION, pa.string()),
    pa.field(ANSWERS, pa.list_(pa.string())),
    pa.field(VQA_ACCURACY, pa.float64()),  # standard VQA accuracy; null on error or without references
    pa.field(EXACT_MATCH, pa.bool_()),
]

# The output's id keeps the input's id type, so users can join results back to their source.
ID_TYPES = {"string": pa.string(), "int64": pa.int64()}


PROMPT_FIELDS = [pa.field(PROMPT_NAME, pa.string()), pa.field(PROMPT_INDEX, pa.int32())]


def output_schema(task: str, id_type: str = "string", benchmark: pa.Schema | None = None,
                  prompts: bool = False) -> pa.Schema:
    """The output's columns. ``benchmark``: the benchmark's columns as the input holds them (a
    ``--benchmark`` run), which the output keeps, with the per-row ``score``, in place of the
    VQAv2-style fields, so that ``pipeline.score`` reads the output as it reads the input.
    ``prompts``: a ``--prompts`` run, whose rows are one per (id, prompt), named after the id."""
    if benchmark is not None:
        extra = list(benchmark) + [pa.field(SCORE, pa.float64())]  # null where the ground truth cannot be scored
    else:
        extra = VQA_FIELDS if task == "vqa" else []
    fields = list(OUTPUT_SCHEMA) + extra
    if prompts:
        fields[1:1] = PROMPT_FIELDS
    return pa.schema([pa.field(ID, ID_TYPES[id_type]) if f.name == ID else f for f in fields])
