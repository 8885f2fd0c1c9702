"""Why a row has no result: a kind from a closed set and a detail, rendered to text only when written.

Between stages a row's error travels as two columns, ``error_kind`` and ``error_detail``
(:mod:`pipeline.columns`); the output has ``error_kind`` and ``error`` (``"<kind>: <detail>"``).
The summary and the report count rows by kind, so a shard of a thousand dead links is one group,
not a thousand; the detail (a URI, an exception) stays in the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ErrorKind(str, Enum):
    MISSING_FIELD = "missing field"  # the row lacks its id, question or any image reference
    MISSING_IMAGE = "missing image"  # the image column is null, or a tar sample has no picture
    UNREADABLE_SHARD = "unreadable shard"  # the shard (a row group, a damaged tar) could not be read
    UNREADABLE_FILE = "unreadable file"  # a folder input's file could not be read
    CANNOT_FETCH_IMAGE = "cannot fetch image_uri"
    EMPTY_IMAGE = "empty image"
    IMAGE_TOO_LARGE = "image too large"  # over --max-image-pixels, checked before decoding
    UNDECODABLE_IMAGE = "undecodable image"
    NO_PIXELS = "image has no pixels"
    PREPROCESSING_FAILED = "preprocessing failed"  # the model's processor raised on this row
    PROMPT_TOO_LONG = "prompt too long"  # prompt + new tokens exceed the model's context
    OUT_OF_MEMORY = "out of memory"  # the item alone did not fit on its device
    GENERATION_FAILED = "generation failed"
    BAD_QUESTION = "bad question"  # a benchmark row its prompt cannot be built from (a null question, bad choices)
    BAD_GROUND_TRUTH = "bad ground truth"  # a benchmark row its metric cannot score (a null or malformed answer)
    BAD_SAMPLING = "bad sampling"  # the row's own sampling settings (--sampling-column) are not valid
    BAD_CHOICES = "bad choices"  # the row's choices cannot constrain decoding (empty, untokenizable, too long)
    INTERNAL = "internal"  # the pipeline lost track of the row: a bug, never the data


@dataclass(frozen=True)
class RowError:
    kind: ErrorKind
    detail: str

    @property
    def text(self) -> str:
        """What the output's ``error`` column holds."""
        return f"{self.kind.value}: {self.detail}"


class RowFailed(Exception):
    """Raised for one row inside a stage; the stage turns it into that row's error."""

    def __init__(self, kind: ErrorKind, detail: str):
        self.error = RowError(kind, detail)
        super().__init__(self.error.text)
