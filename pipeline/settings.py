"""The job's settings: every knob in one place, each with its description, its flag or environment
variable, and whether it decides the results. Built once at the edge (the command line, or a
caller), checked before Ray starts, and handed whole to every stage.

The command lines' flags and ``--help`` come from the fields here (``pipeline.cli.base``);
environment variables are read once, by :func:`environment_settings`, never deep in the code.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Callable

import hired
from hired.loading import QUANTIZATIONS

from .benchmarks import BENCHMARKS, Benchmark, get_benchmark, named_columns
from .errors import InputError
from .io.images import DEFAULT_MAX_PIXELS
from .io.location import Location
from .io.retry import RetryPolicy
from .prompts import read_prompts

DEFAULT_CAPTION_PROMPT = "Write a short caption for this image."
TASKS = ("caption", "vqa")
SAMPLING_FIELDS = tuple(f.name for f in fields(hired.Sampling))  # job settings of the same names


@dataclass(frozen=True)
class Knob:
    """What a setting means and how it is set."""

    help: str
    flag: str | None = None  # the command-line flag
    env: str | None = None  # the environment variable (read once, at the edge)
    group: str = "resources"  # the --help section
    parse: Callable[[str], Any] | None = None  # text -> value, raising ValueError with the reason
    choices: tuple | None = None
    metavar: str | None = None
    tasks: tuple[str, ...] = TASKS  # the jobs (and other commands) that have it
    decides_results: bool = False  # recorded in every output; an output made otherwise is not resumed into
    repeatable: bool = False  # the flag may be given again; the value is the list of what each gave
    recorded_if_set: bool = False  # recorded only when not the default, so outputs made before it existed still resume


def knob(default=MISSING, *, default_factory=MISSING, **meaning) -> Any:
    return field(default=default, default_factory=default_factory, metadata={"knob": Knob(**meaning)})


def at_least(low: int | float, kind: type = int) -> Callable[[str], int | float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        if value < low:
            raise ValueError(f"must be at least {low}, got {text}")
        return value

    return parse


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"must be in (0, 1], got {text}")
    return value


def comma_list(text: str) -> tuple[str, ...]:
    """``--choices yes,no``: the non-empty items, each stripped."""
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if not items:
        raise ValueError(f"{text!r}: give comma-separated strings, e.g. yes,no")
    return items


def column_pair(text: str) -> tuple[str, str]:
    """``--column NAME=COLUMN``: (NAME, COLUMN)."""
    name, sep, source = (part.strip() for part in text.partition("="))
    if not sep or not name or not source:
        raise ValueError(f"{text!r}: give NAME=COLUMN, e.g. --column type=split")
    return name, source


@dataclass(frozen=True)
class ColumnMap:
    """Which input column plays which part. None means the default: ``id`` if the shard has one
    (else the row's place, ``<shard name>/<row index>``), ``image`` and/or ``image_uri``,
    ``prompt``, ``question``, ``answers``. A column named here must exist in every shard."""

    id: str | None = knob(None, flag="--id-column", group="data", metavar="NAME", help=(
        "the rows' ids, strings or integers (kept as they are in the output); default: 'id', or, without one, "
        "the row's place '<shard name>/<row index>'. E.g. img2dataset Parquet: --id-column key --image-column jpg; "
        "VQAv2 from the Hugging Face hub: --id-column question_id"))
    image: str | None = knob(None, flag="--image-column", group="data", metavar="NAME", help=(
        "the image: encoded bytes, a Hugging Face Image() struct, or a URI (absolute, file://, s3://, or a path "
        "relative to the shard's folder); default: 'image' and/or 'image_uri'"))
    prompt: str | None = knob(None, flag="--prompt-column", group="data", metavar="NAME", tasks=("caption",),
                              help="per-row instructions (default: 'prompt' if present)")
    question: str | None = knob(None, flag="--question-column", group="data", metavar="NAME", tasks=("vqa",),
                                help="the questions (default: 'question')")
    answers: str | None = knob(None, flag="--answers-column", group="data", metavar="NAME", tasks=("vqa",), help=(
        "reference answers: a list of strings, one string, or a list of {answer, ...} structs "
        "(default: 'answers' if present); with --benchmark, the benchmark's ground truth (docs/benchmarks.md)"))
    sampling: str | None = knob(None, flag="--sampling-column", group="data", metavar="NAME", help=(
        "per-row sampling overrides: a struct (or a JSON object string) with any of temperature, top_p, top_k, "
        "repetition_penalty, seed, stop; a null field keeps the job's setting (Parquet inputs)"))
    choices: str | None = knob(None, flag="--choices-column", group="data", metavar="NAME", help=(
        "per-row allowed answers: a list of strings; the row's text is exactly one of them (null: the job's "
        "--choices, if any; Parquet inputs)"))
    benchmark: tuple[tuple[str, str], ...] = knob(
        (), flag="--column", group="data", metavar="NAME=COLUMN", tasks=("vqa",), parse=column_pair, repeatable=True,
        help="with --benchmark: read the benchmark's column NAME from the input's COLUMN (repeatable), e.g. "
             "--column type=split; each benchmark column is read from the input column of its own name by default")

    def __post_init__(self) -> None:
        pairs = self.benchmark.items() if isinstance(self.benchmark, dict) else self.benchmark
        object.__setattr__(self, "benchmark", tuple((str(name), str(column)) for name, column in pairs))

    def flag(self, part: str) -> str:
        return next(f for f in fields(self) if f.name == part).metadata["knob"].flag

    def recorded(self) -> dict:
        """As an output's footer records it (JSON: the named benchmark columns as an object)."""
        return {**asdict(self), "benchmark": dict(self.benchmark)}


@dataclass(frozen=True)
class JobSettings:
    task: str = knob("caption", help="caption or vqa", decides_results=True)
    input: Location | None = knob(None, flag="--input", metavar="URI", group="data", help=(
        "the input: a file, folder or prefix (local path, file://, s3://) of Parquet shards, WebDataset .tar "
        "shards or image files"))
    output: Location | None = knob(None, flag="--output", metavar="URI", group="data",
                                   help="the output folder (local path, file://, s3://)")
    overwrite: bool = knob(False, flag="--overwrite", group="data",
                           help="redo every shard even if its output is complete (default: resume)")
    prune: bool = knob(False, flag="--prune", group="data", help=(
        "move result files whose input shard is no longer in the input under <output>/_removed/<run_id>/ "
        "at the end of the run (default: keep them; they are left out of the summary and report)"))
    columns: ColumnMap = field(default_factory=ColumnMap, metadata={"knob": Knob(
        help="which input column is the id, the image, ...", decides_results=True)})
    model: str = knob("", flag="--model", metavar="MODEL", group="model", decides_results=True, help=(
        "a LLaVA-Next (or LLaVA-1.5) checkpoint: hub id or local folder"))
    dtype: str = knob("auto", flag="--dtype", group="model", choices=("auto", "float16", "bfloat16", "float32"),
                      help="weights' precision; auto = bfloat16 (or float16) on GPU, float32 on CPU (float16 with "
                      "--quantization 8bit)")
    quantization: str | None = knob(None, flag="--quantization", group="model", choices=QUANTIZATIONS,
                                    decides_results=True, help=(
        "store the model's linear layers in 8 or 4 bits (bitsandbytes; 4bit: nf4 computing in the --dtype), "
        "for a model too large for the card in 16 bits: `hired plan` shows what fits (default: full precision)"))
    max_new_tokens: int | None = knob(None, flag="--max-new-tokens", metavar="N", group="model", parse=at_least(1),
                                      decides_results=True, help=(
        "most tokens generated per item (default: 64 for captions, 16 for VQA, the benchmark's own with --benchmark)"))
    benchmark: str | None = knob(None, flag="--benchmark", metavar="NAME", group="model", tasks=("vqa",),
                                 choices=tuple(BENCHMARKS), decides_results=True, help=(
        f"answer and score as lmms-eval does this benchmark ({', '.join(BENCHMARKS)}): its prompt, generation "
        "length, columns, per-row score and aggregates (docs/benchmarks.md); default: VQAv2-style accuracy "
        "against the 'answers' column"))
    default_prompt: str = knob(DEFAULT_CAPTION_PROMPT, flag="--prompt", metavar="TEXT", group="model", tasks=("caption",),
                               decides_results=True, help="instruction for rows whose prompt is null or missing")
    prompts: tuple[tuple[str, str], ...] = knob((), flag="--prompts", metavar="FILE", group="generation",
                                                tasks=("caption",), parse=read_prompts, decides_results=True,
                                                recorded_if_set=True, help=(
        "several prompts for every picture: a text file (one a line) or JSON (a list, or {name: prompt}); each "
        "picture is read, encoded and selected once and generated for each, one output row per (id, prompt) "
        "with its prompt_name (the prompt column and --prompt are not used)"))
    temperature: float = knob(0.0, flag="--temperature", metavar="T", group="generation", parse=at_least(0, float),
                              decides_results=True, recorded_if_set=True,
                              help="0 is greedy decoding (the default); above 0 samples from the softmax of logits / T")
    top_p: float | None = knob(None, flag="--top-p", metavar="P", group="generation", parse=fraction,
                               decides_results=True, recorded_if_set=True,
                               help="nucleus sampling: draw from the smallest set of tokens whose probability reaches P")
    top_k: int | None = knob(None, flag="--top-k", metavar="K", group="generation", parse=at_least(1),
                             decides_results=True, recorded_if_set=True,
                             help="draw from the K likeliest tokens")
    repetition_penalty: float = knob(1.0, flag="--repetition-penalty", metavar="R", group="generation",
                                     parse=at_least(0.01, float), decides_results=True, recorded_if_set=True,
                                     help="above 1 discourages tokens already in the row, prompt included (1: none)")
    seed: int | None = knob(None, flag="--seed", metavar="N", group="generation", parse=at_least(0),
                            decides_results=True, recorded_if_set=True, help=(
        "makes sampling reproducible: each row draws from its own generator, seeded from N, its id and its "
        "prompt, so it gives the same text in any batch and on any rerun (default: fresh randomness)"))
    stop: tuple[str, ...] = knob((), flag="--stop", metavar="TEXT", group="generation", repeatable=True,
                                 decides_results=True, recorded_if_set=True,
                                 help="end a row's generation where TEXT appears, cut from the text (repeatable)")
    choices: tuple[str, ...] = knob((), flag="--choices", metavar="A,B,...", group="generation", parse=comma_list,
                                    decides_results=True, recorded_if_set=True, help=(
        "constrain every answer to exactly one of these strings, e.g. yes,no (the model's probabilities pick "
        "which)"))
    decode_cache: str = knob("static", flag="--decode-cache", group="generation", choices=("static", "dynamic"), help=(
        "the KV cache: static (allocated once, written in place) or dynamic (transformers' DynamicCache, grown by "
        "concatenation); greedy output is the same"))
    compile: str = knob("auto", flag="--compile", group="generation", choices=("auto", "on", "off"), help=(
        "compile the decode step with torch.compile (CUDA graphs; batch sizes padded to a few buckets so each "
        "compiles once); auto: on CUDA, off on CPU"))
    sync_every: int | None = knob(None, flag="--sync-every", metavar="N", group="generation", parse=at_least(1), help=(
        "decode steps between the host's checks for finished rows and stop strings (default: 8 on CUDA, 1 on CPU)"))
    # None: every visual token (the stock model). Set from the token-dropping flags (pipeline.cli.jobs).
    config: hired.HiREDConfig | None = knob(hired.HiREDConfig(), help="HiRED's settings", decides_results=True)
    num_gpus: int | None = knob(None, flag="--num-gpus", metavar="N", parse=at_least(0), help=(
        "GPUs to generate on (one actor per --gpus-per-model of them); default: every GPU in the cluster; "
        "0 runs on CPU"))
    gpus_per_model: int = knob(1, flag="--gpus-per-model", metavar="N", parse=at_least(1), help=(
        "GPUs each copy of the model spreads over (its decoder layers split between them, weights balanced), "
        "for a model no one card holds; --num-gpus must be a multiple of it"))
    accelerator_type: str | None = knob(None, flag="--accelerator-type", metavar="TYPE", help=(
        "generate only on GPUs of this Ray accelerator type, e.g. A10G, T4, L4, A100-80G, H100 (Ray's "
        "accelerator_type resource; a cluster of several GPU kinds then starts only these); default: any"))
    batch_size: int | None = knob(None, flag="--batch-size", metavar="N", parse=at_least(1), help=(
        "items generated together; default: as many as fit in GPU memory, computed per batch from each "
        "item's token count (HiRED fixes it in advance); 4 on CPU"))
    gpu_memory_gb: float | None = knob(None, flag="--gpu-memory-gb", metavar="GIB", parse=at_least(0.5, float), help=(
        "use at most this much of each GPU, e.g. 22 to size batches like an A10G on a larger card"))
    preprocess_workers: int | None = knob(None, flag="--preprocess-workers", metavar="N", parse=at_least(1), help=(
        "CPU actors decoding and preprocessing; default: half the cluster's CPUs, at most 32"))
    max_image_pixels: int = knob(DEFAULT_MAX_PIXELS, flag="--max-image-pixels", metavar="N", parse=at_least(1),
                                 help="larger images become error rows (decompression-bomb guard)")
    ray_address: str | None = knob(None, flag="--ray-address", metavar="ADDRESS", env="RAY_ADDRESS", help=(
        "the Ray cluster to join (ray job submit sets RAY_ADDRESS); default: a private local Ray"))
    run_id: str = knob("", flag="--run-id", metavar="NAME", help="a name for this run (default: a timestamp); stored in every row")
    progress_s: float = knob(30.0, env="HIRED_PROGRESS_SECONDS", parse=at_least(1, float), help=(
        "how often the job logs its progress line (shards and rows done, images/s, ETA), in seconds"))
    io_retry_s: float = knob(120.0, env="HIRED_IO_RETRY_SECONDS", parse=at_least(0, float), tasks=(*TASKS, "score"), help=(
        "how long one stall of storage is retried before the run stops (exit 4; a rerun finishes it)"))
    cpu_threads: int | None = knob(None, env="HIRED_CPU_THREADS", parse=at_least(1), help=(
        "threads for generating on a CPU; default: every core the process may use (1 on a machine shared "
        "with other work)"))
    preprocess_niceness: int = knob(19, env="HIRED_PREPROCESS_NICENESS", parse=at_least(0), help=(
        "how far preprocessing lowers its priority when generation runs on the same CPUs (0: normal); "
        "GPU runs keep normal priority"))

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise InputError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if self.compile == "on" and self.decode_cache == "dynamic":
            raise InputError("--compile on needs --decode-cache static (a dynamic cache changes shape every step)")
        if self.gpus_per_model < 1:
            raise InputError(f"--gpus-per-model must be at least 1, got {self.gpus_per_model}")
        if self.gpus_per_model > 1 and self.num_gpus == 0:
            raise InputError(f"--gpus-per-model {self.gpus_per_model} needs GPUs, and --num-gpus 0 runs on CPU")
        if self.num_gpus and self.num_gpus % self.gpus_per_model:
            raise InputError(f"--num-gpus {self.num_gpus} is not a multiple of --gpus-per-model {self.gpus_per_model}: "
                             f"each copy of the model takes {self.gpus_per_model} GPUs")
        retry = RetryPolicy(window_s=self.io_retry_s)
        for name in ("input", "output"):  # resolved once, here; handed on as Location objects
            value = getattr(self, name)
            if value is not None and not isinstance(value, Location):
                object.__setattr__(self, name, Location.resolve(str(value), retry))
        scoring = self.scoring  # an unknown benchmark is refused here
        if scoring is not None and self.task != "vqa":
            raise InputError(f"--benchmark {scoring.name}: a benchmark scores answers; run it with the vqa job")
        if self.columns.benchmark:
            if scoring is None:
                raise InputError(f"--column {'='.join(self.columns.benchmark[0])}: --column names a benchmark's "
                                 "columns; give --benchmark NAME too")
            self.benchmark_columns  # an unknown benchmark column is refused here, before the input is read
        if self.max_new_tokens is None:
            default = scoring.generation.max_new_tokens if scoring else 64 if self.task == "caption" else 16
            object.__setattr__(self, "max_new_tokens", default)
        for name in ("stop", "choices", "prompts"):  # given as lists by flags and callers
            object.__setattr__(self, name, tuple(tuple(v) if isinstance(v, list) else v for v in getattr(self, name)))
        self.sampling  # a contradictory combination is refused here, naming the flags
        if self.prompts and self.columns.prompt:
            raise InputError(f"--prompts and --prompt-column {self.columns.prompt}: give one; --prompts sets "
                             "every picture's prompts")
        if len(set(self.choices)) != len(self.choices):
            raise InputError(f"--choices {','.join(self.choices)}: a choice is repeated")

    @property
    def sampling(self) -> hired.Sampling:
        """The job's :class:`hired.Sampling` (each row's own start from it)."""
        try:
            return hired.Sampling(**{name: getattr(self, name) for name in SAMPLING_FIELDS})
        except ValueError as error:  # hired.Sampling names its fields; the user set them as flags
            flags = {f.name: f.metadata["knob"].flag for f in fields(self) if f.name in SAMPLING_FIELDS}
            raise InputError(re.sub(r"\w+", lambda m: flags.get(m[0], m[0]), str(error))) from None

    @property
    def decode_options(self) -> hired.DecodeOptions:
        """How the generation actors' decode loop runs (:class:`hired.DecodeOptions`)."""
        return hired.DecodeOptions(cache=self.decode_cache, compile={"auto": None, "on": True, "off": False}[self.compile],
                                   sync_every=self.sync_every)

    @property
    def outputs_per_row(self) -> int:
        """Output rows per input row: one per prompt of ``--prompts``, else one."""
        return max(1, len(self.prompts))

    @property
    def scoring(self) -> Benchmark | None:
        """The benchmark the answers are scored as (``--benchmark``), or None."""
        return None if self.benchmark is None else get_benchmark(self.benchmark)

    @property
    def benchmark_columns(self) -> dict[str, str]:
        """The input column named for each benchmark column the flags name (the rest keep their own names)."""
        if self.scoring is None:
            return {}
        return named_columns(self.scoring, question=self.columns.question, answers=self.columns.answers,
                             others=self.columns.benchmark)

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(window_s=self.io_retry_s)

    def result_settings(self) -> dict:
        """What decides the results: an output made with other values is not resumed into."""
        recorded = {}
        for f in fields(self):
            meaning = f.metadata["knob"]
            if not meaning.decides_results:
                continue
            value = getattr(self, f.name)
            if meaning.recorded_if_set and value == f.default:
                continue
            if f.name == "config":
                recorded["hired"] = None if value is None else asdict(value)
            elif f.name == "columns":
                recorded["columns"] = value.recorded()
            elif self.task in f.metadata["knob"].tasks:
                recorded[f.name] = value
            else:
                recorded[f.name] = None
        for name in ("sampling", "choices"):
            if getattr(self.columns, name) is None:
                del recorded["columns"][name]  # as recorded before the per-row columns existed
        return json.loads(json.dumps(recorded))  # tuples as JSON keeps them, so a record compares equal


def knobs(settings_class: type = JobSettings) -> list[tuple[str, Knob]]:
    """Every knob of ``settings_class``, nested ones (ColumnMap's) included, in declaration order."""
    out = []
    for f in fields(settings_class):
        if f.name == "columns":
            out += [(f"columns.{c.name}", c.metadata["knob"]) for c in fields(ColumnMap)]
        else:
            out.append((f.name, f.metadata["knob"]))
    return out


def environment_settings(environ: dict[str, str]) -> dict[str, Any]:
    """The settings the environment sets (``HIRED_*``, ``RAY_ADDRESS``), parsed; InputError naming
    the variable for a value that does not parse."""
    values = {}
    for name, meaning in knobs():
        if meaning.env is None or not environ.get(meaning.env):
            continue
        text = environ[meaning.env]
        try:
            values[name] = meaning.parse(text) if meaning.parse else text
        except ValueError as e:
            raise InputError(f"{meaning.env}={text}: {e}") from None
    return values


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def with_run_id(settings: JobSettings) -> JobSettings:
    return settings if settings.run_id else replace(settings, run_id=new_run_id())
