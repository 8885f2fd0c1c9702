"""The pipeline's input and output columns."""

from __future__ import annotations

import pyarrow as pa

# Input: one row per image. `image` (encoded bytes) or `image_uri` (an fsspec URI) must be set.
ID, IMAGE, IMAGE_URI, PROMPT = "id", "image", "image_uri", "prompt"
QUESTION, ANSWERS = "question", "answers"  # VQA input
INPUT_COLUMNS = (ID, IMAGE, IMAGE_URI, PROMPT, QUESTION, ANSWERS)

# Output: one row per input row, in input order, one Parquet file per input shard.
OUTPUT_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string()),
        pa.field("text", pa.string()),  # the caption or answer; null on error
        pa.field("error", pa.string()),  # null when fine, else the reason
        pa.field("visual_tokens_full", pa.int32()),  # N: grid tokens the stock model would use
        pa.field("visual_tokens_kept", pa.int32()),  # grid tokens that reached the LLM
        pa.field("prompt_tokens", pa.int32()),  # the LLM's input length for this item
        pa.field("generated_tokens", pa.int32()),
        pa.field("ttft_ms", pa.float64()),  # batch start to first token: vision + HiRED + prefill
        pa.field("decode_ms", pa.float64()),  # first token to the batch's last token
        pa.field("tokens_per_s", pa.float64()),  # this item's generated tokens / (ttft + decode)
        pa.field("batch_size", pa.int32()),  # items generated together with this one
        pa.field("peak_gpu_mem_bytes", pa.int64()),  # the batch's peak allocated GPU memory; null on CPU
        pa.field("device", pa.string()),
        pa.field("model", pa.string()),
        pa.field("strategy", pa.string()),  # "hired", or "none" for the stock token count
        pa.field("budget", pa.float64()),  # fraction (<= 1) or token count (> 1); null without dropping
        pa.field("alpha", pa.float64()),
        pa.field("run_id", pa.string()),  # the run that produced the row
        pa.field("source_shard", pa.string()),  # the input shard's URI
        pa.field("row_index", pa.int64()),  # the row's position in its shard
    ]
)

VQA_FIELDS = [
    pa.field(QUESTION, pa.string()),
    pa.field(ANSWERS, pa.list_(pa.string())),
    pa.field("vqa_accuracy", pa.float64()),  # standard VQA accuracy; null on error or without references
    pa.field("exact_match", pa.bool_()),
]


def output_schema(task: str) -> pa.Schema:
    if task == "vqa":
        return pa.schema(list(OUTPUT_SCHEMA) + VQA_FIELDS)
    return OUTPUT_SCHEMA
