"""The columns that travel between stages: the input's, the wire format to the GPU stage, the output's.

Between Ray Data stages a batch is a dict of 1-D numpy object arrays, one per column.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass

import numpy as np
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
        # The budget is a fraction of each image's tokens or a token count (hired.parse_budget): one of
        # these two is set, the other null; both null without dropping.
        pa.field("budget_fraction", pa.float64()),
        pa.field("budget_tokens", pa.int32()),
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


# The output's id keeps the input's id type, so users can join results back to their source.
ID_TYPES = {"string": pa.string(), "int64": pa.int64()}


def output_schema(task: str, id_type: str = "string") -> pa.Schema:
    fields = list(OUTPUT_SCHEMA) + (VQA_FIELDS if task == "vqa" else [])
    return pa.schema([pa.field(ID, ID_TYPES[id_type]) if f.name == ID else f for f in fields])


@dataclass(frozen=True)
class ColumnMap:
    """Which input column plays which part (--id-column, --image-column, ...).

    None means the default: ``id`` if the shard has one (else the row's place,
    ``<shard name>/<row index>``), ``image`` and/or ``image_uri``, ``prompt``, ``question``,
    ``answers``. A column named here must exist in every shard; a default one may be absent."""

    id: str | None = None
    image: str | None = None
    prompt: str | None = None
    question: str | None = None
    answers: str | None = None

    FLAGS = {"id": "--id-column", "image": "--image-column", "prompt": "--prompt-column",
             "question": "--question-column", "answers": "--answers-column"}

    def flag(self, part: str) -> str:
        return self.FLAGS[part]


# Every reason written to the `error` column starts with one of these fixed phrases, then ": "
# and the detail (a URI, an exception). The summary groups error rows by the phrase, so a shard
# of a thousand dead links is one group, not a thousand; the detail stays in the row.
ERROR_KINDS = (
    "missing field", "missing image", "unreadable shard", "unreadable file", "cannot fetch image_uri",
    "empty image", "image too large",
    "undecodable image", "image has no pixels", "preprocessing failed", "prompt too long", "out of memory",
    "generation failed", "internal",
)
# A reason from elsewhere (an older version, a hand-edited file) is grouped by its text before the
# first colon only if that is a short phrase: anything that could hold a path or URI is "other".
_PHRASE = re.compile(r"[\w][\w \-]{0,47}")


def error_kind(reason: str) -> str:
    """The group an error reason is counted under: its fixed kind phrase."""
    for kind in ERROR_KINDS:
        if reason.startswith(kind):
            return kind
    head, _, rest = reason.partition(":")
    if rest.startswith(("/", "\\")):  # the colon was a URI's scheme ("s3://...") or a drive letter
        return "other"
    head = head.strip()
    return head if _PHRASE.fullmatch(head) else "other"


# Between the stages, besides the input columns: where a row came from, and why it failed.
SOURCE_SHARD, ROW_INDEX, ERROR = "source_shard", "row_index", "error"
# Columns every stage hands on unchanged; the VQA ones only in VQA runs.
PASSTHROUGH = (ID, SOURCE_SHARD, ROW_INDEX, ERROR)
VQA_PASSTHROUGH = (QUESTION, ANSWERS)

# A preprocessed row carries its model inputs to the GPU stage in one binary column (see
# encode_inputs): Ray Data would otherwise guess tensor types for ragged arrays per block,
# and blocks with and without error rows (None) then fail to combine.
MODEL_INPUTS = "model_inputs"


def passthrough(task: str) -> tuple[str, ...]:
    return PASSTHROUGH + VQA_PASSTHROUGH if task == "vqa" else PASSTHROUGH


# The model-inputs encoding: a little-endian uint32 header length, a JSON header naming each
# array's dtype, shape and offset, then the arrays' raw bytes, each at a 64-byte boundary.
# An .npz (a zip) took three copies and a CRC of a row's pixel values (6.5 MiB at 672x672)
# to write and two copies and a CRC to read; this takes one copy each way.
_HEADER_LENGTH = struct.Struct("<I")
_ALIGN = 64


def encode_inputs(arrays: dict[str, np.ndarray]) -> bytes:
    """One row's model inputs (name -> array) as bytes; ``decode_inputs`` reverses it."""
    arrays = {name: np.asarray(a, order="C") for name, a in arrays.items()}  # (ascontiguousarray makes 0-d arrays 1-d)
    layout, offset = [], 0
    for name, a in arrays.items():
        layout.append([name, a.dtype.str, list(a.shape), offset])
        offset += _aligned(a.nbytes)
    header = json.dumps(layout).encode()
    header_end = _HEADER_LENGTH.size + len(header)
    parts = [_HEADER_LENGTH.pack(len(header)), header, bytes(_aligned(header_end) - header_end)]
    for a in arrays.values():
        parts += [memoryview(a.reshape(-1)).cast("B"), bytes(_aligned(a.nbytes) - a.nbytes)]
    return b"".join(parts)  # the one copy


def _aligned(size: int) -> int:
    return size + -size % _ALIGN


def decode_inputs(data: bytes) -> dict[str, np.ndarray]:
    """The arrays ``encode_inputs`` wrote, writable, backed by one copy of ``data``."""
    buffer = bytearray(data)  # bytes are read-only, and torch warns on tensors over read-only memory
    (length,) = _HEADER_LENGTH.unpack_from(buffer, 0)
    layout = json.loads(bytes(buffer[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length]))
    start = _aligned(_HEADER_LENGTH.size + length)
    out = {}
    for name, dtype, shape, at in layout:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        out[name] = np.frombuffer(buffer, dtype=dtype, count=count, offset=start + at).reshape(shape)
    return out


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


def batch_column(batch: dict[str, np.ndarray], name: str) -> list:
    """A column of a batch as a list with nulls as None (absent columns are all None)."""
    n = len(batch[ID])
    if name not in batch:
        return [None] * n
    return [None if missing(v) else v for v in batch[name]]


def answer_lists(values: list) -> list:
    """VQA references as plain lists of strings (numpy string arrays do not convert back to Arrow)."""
    return [None if a is None else [str(x) for x in a] for a in values]
