"""Where each part of a row comes from in a Parquet shard: the shard's schema matched to the task
and to the column flags (--id-column and friends), every problem named before any model loads."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from ...benchmarks import Benchmark, ColumnError, check_columns, named_columns
from ...errors import InputError
from ...settings import ColumnMap


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_bytes(t: pa.DataType) -> bool:
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t))


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t)


def _struct_field(t: pa.DataType, name: str) -> pa.DataType | None:
    if not pa.types.is_struct(t) or t.get_field_index(name) < 0:
        return None
    return t.field(name).type


def image_kind(t: pa.DataType) -> str | None:
    """'bytes' (encoded image), 'struct' (Hugging Face ``Image()``: {bytes, path}), 'uri', or None."""
    if _is_bytes(t):
        return "bytes"
    if _is_text(t):
        return "uri"
    data, path = _struct_field(t, "bytes"), _struct_field(t, "path")
    if data is None and path is None:
        return None
    fits = (data is None or _is_bytes(data)) and (path is None or _is_text(path))
    return "struct" if fits else None


def answers_kind(t: pa.DataType) -> str | None:
    """'list' (of strings), 'string' (one reference), 'structs' (a list of {answer, ...}: VQAv2 on the hub)."""
    if pa.types.is_null(t):
        return "list"
    if _is_text(t):
        return "string"
    if _is_list(t):
        item = t.value_type
        if _is_text(item) or pa.types.is_null(item):
            return "list"
        answer = _struct_field(item, "answer")
        if answer is not None and _is_text(answer):
            return "structs"
    return None


def id_type(t: pa.DataType) -> str | None:
    if _is_text(t) or pa.types.is_null(t):
        return "string"
    if pa.types.is_integer(t) and not (pa.types.is_uint64(t)):
        return "int64"
    return None


@dataclass(frozen=True)
class ParquetLayout:
    """Where each part of a row comes from in one Parquet shard (None: not in this shard)."""

    id: str | None  # None: the id is the row's place, '<shard name>/<row index>'
    id_type: str  # "string" or "int64"
    image: str | None
    image_kind: str | None  # see image_kind()
    image_uri: str | None  # a URI column used where `image` is null (the default layout's image_uri)
    prompt: str | None
    question: str | None
    answers: str | None
    answers_kind: str | None  # see answers_kind()
    carried: tuple[tuple[str, str], ...] = ()  # with --benchmark: (the benchmark's column, the shard's column)
    sampling: str | None = None  # per-row sampling overrides (--sampling-column)
    sampling_kind: str | None = None  # "struct" or "json"
    choices: str | None = None  # per-row allowed answers (--choices-column)

    def columns(self) -> list[str]:
        """The shard's columns to read, each once."""
        named = [self.id, self.image, self.image_uri, self.prompt, self.question, self.answers, self.sampling,
                 self.choices]
        named += [source for _, source in self.carried]
        return list(dict.fromkeys(c for c in named if c is not None))


IMAGE_TYPES = "encoded bytes (binary), a Hugging Face Image() struct {bytes, path}, or a URI string"
ANSWER_TYPES = "a list of strings, one string, or a list of structs with an 'answer' string (VQAv2 on the hub)"


def resolve_layout(schema: pa.Schema, columns: ColumnMap, task: str, uri: str,
                   benchmark: Benchmark | None = None) -> ParquetLayout:
    """Match a shard's schema to the task and the column mapping; refuse it with every problem
    named (column, type, and the flag that picks another column) before any model loads. With a
    ``benchmark``, the VQA job reads the benchmark's columns as lmms-eval reads them instead of a
    question and references."""
    names = set(schema.names)
    problems: list[str] = []

    def pick(part: str, default: str | None, required: bool, why: str = "") -> str | None:
        """The column for ``part``: the one named on the command line (which must exist), else the default if present."""
        named = getattr(columns, part)
        if named is not None:
            if named not in names:
                problems.append(f"no column '{named}' (given with {columns.flag(part)})")
                return None
            return named
        if default in names:
            return default
        if required:
            problems.append(f"no '{default}' column{why}; name yours with {columns.flag(part)}")
        return None

    def typed(part: str, column: str | None, check, expected: str):
        if column is None:
            return None
        kind = check(schema.field(column).type)
        if kind is None:
            problems.append(f"column '{column}' has type {schema.field(column).type}; the {part} column "
                            f"({columns.flag(part)}) must hold {expected}")
        return kind

    ident = pick("id", "id", required=False)
    identity = typed("id", ident, id_type, "strings or integers")

    image_uri = None
    if columns.image is not None:
        image = pick("image", None, required=True)
    elif "image" in names:
        image = "image"
        image_uri = "image_uri" if "image_uri" in names else None
    elif "image_uri" in names:
        image = "image_uri"
    else:
        image = None
        problems.append(f"neither 'image' nor 'image_uri' column; name your image column with "
                        f"{columns.flag('image')} (e.g. --image-column jpg)")
    shape = typed("image", image, image_kind, IMAGE_TYPES)
    if image_uri is not None and typed("image", image_uri, lambda t: "uri" if _is_text(t) else None,
                                       "a URI string") is None:
        image_uri = None
    if shape == "uri":
        image_uri = None  # one URI column is enough

    text = lambda t: "text" if _is_text(t) or pa.types.is_null(t) else None  # noqa: E731
    prompt = question = answers = None
    answers_shape = None
    carried: tuple[tuple[str, str], ...] = ()
    if task == "vqa" and benchmark is not None:
        try:
            named = named_columns(benchmark, question=columns.question, answers=columns.answers, others=columns.benchmark)
            carried = tuple(check_columns(benchmark, schema, named, for_prompt=True).items())
        except ColumnError as error:
            problems.append(str(error))
    elif task == "vqa":
        question = pick("question", "question", required=True, why=" (the VQA job needs questions)")
        typed("question", question, text, "strings")
        answers = pick("answers", "answers", required=False)
        answers_shape = typed("answers", answers, answers_kind, ANSWER_TYPES)
    else:
        prompt = pick("prompt", "prompt", required=False)
        typed("prompt", prompt, text, "strings")
    sampling = pick("sampling", None, required=False)
    sampling_kind = typed("sampling", sampling, sampling_kind_of, "structs or JSON object strings")
    choices = pick("choices", None, required=False)
    typed("choices", choices, lambda t: "list" if _is_text_list(t) or pa.types.is_null(t) else None, "lists of strings")
    if problems:
        raise InputError(f"shard {uri} does not match the input schema: " + "; ".join(problems))
    return ParquetLayout(id=ident, id_type=identity or "string", image=image, image_kind=shape, image_uri=image_uri,
                         prompt=prompt, question=question, answers=answers, answers_kind=answers_shape, carried=carried,
                         sampling=sampling, sampling_kind=sampling_kind, choices=choices)


def sampling_kind_of(t: pa.DataType) -> str | None:
    if pa.types.is_struct(t):
        return "struct"
    if _is_text(t) or pa.types.is_null(t):
        return "json"
    return None


def _is_text_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_text(t.value_type)
