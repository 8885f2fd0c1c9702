"""WebDataset tar shards (img2dataset's default output): inspect a tar at plan time, read its samples.

A sample is the run of consecutive members sharing a key, WebDataset's rule: the key is the
member's path up to the first dot of its basename (``dir/000123.jpg`` -> ``dir/000123``, member
kind ``jpg``). The picture is the sample's ``jpg``, ``jpeg``, ``png`` or ``webp`` member; the id is
the key. A ``txt`` member is img2dataset's alt text, not an instruction, so the prompt is the job's
``--prompt``.

Every tar is read in one sequential streaming pass (``tarfile``'s ``r|`` mode): at plan time to
count the samples (the row count the driver waits for; skipped for a tar whose output records
its size and ETag or mtime as they are), and again by the read task to emit the rows. On S3
that pass is one GET stream of the whole object, fetched in READ_BLOCK_BYTES ranges: planning
costs one read of the input, shard by shard, so it parallelises with the shards. The
count cannot come cheaper: a tar has no index, and its headers sit between the members' bytes
(bench/bench_tar_inspect.py measures what it costs).

Both passes walk the same headers, so they find the same samples, damage included. A tar cut
short, or corrupt part-way, keeps the samples before the damage; the sample being read when it
is met becomes an error row and ends the shard. A tar that yields no sample at all before failing
is a failed shard (as an unreadable Parquet footer is). Fewer samples than planned (damage, or a
tar changed since) make the rest of the planned rows error rows (pipeline.stages.read).
"""

from __future__ import annotations

import logging
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...columns import ID, IMAGE
from ...errors import StorageUnavailable
from ...row_errors import ErrorKind, RowError
from ..location import Location, in_threads
from ..retry import is_transient
from ..shard import FailedShard, ReadTask, Shard
from .base import Format, Records, listing_version, shard_names

if TYPE_CHECKING:
    from ...settings import JobSettings

log = logging.getLogger("hired.pipeline")

TAR_SUFFIX = ".tar"
# The member kinds that hold the picture, in the order one is picked when a sample has several.
IMAGE_KINDS = ("jpg", "jpeg", "png", "webp")
# Sequential reads of a tar fetch this much at a time (one ranged GET on S3).
READ_BLOCK_BYTES = 8 * 2**20
# A read task hands on its rows in slices of at most this many samples or bytes of pictures,
# whatever the tar's size.
SLICE_ROWS = 256
SLICE_BYTES = 32 * 2**20


def split_member_name(name: str) -> tuple[str, str]:
    """(key, kind) of a member path, WebDataset's rule: the key ends at the basename's first dot."""
    folder, base = posixpath.split(name)
    stem, dot, kind = base.partition(".")
    return posixpath.join(folder, stem) if folder else stem, kind.lower() if dot else ""


@dataclass
class Sample:
    key: str
    members: dict[str, bytes | None] = field(default_factory=dict)  # kind -> bytes (None when not read)
    error: RowError | None = None  # set when the tar's damage was met inside this sample

    @property
    def image_kind(self) -> str | None:
        return next((kind for kind in IMAGE_KINDS if kind in self.members), None)


class UnreadableTar(ValueError):
    """The tar failed before its first sample: the shard cannot be read at all."""


def _header_reader(last_header: list):
    """A TarInfo class that notes how each header read ended. tarfile stops quietly both at the
    end-of-archive block and at a header it cannot read (a cut, or garbage) after the first
    member; only the first is a whole tar."""

    class NotingTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tar):
            try:
                info = super().fromtarfile(tar)
            except tarfile.HeaderError as e:
                last_header[0] = e
                raise
            last_header[0] = None
            return info

    return NotingTarInfo


def _end_problem(error: BaseException | None) -> str | None:
    """Why the walk stopped early, from the last header read; None at the end-of-archive block."""
    if isinstance(error, tarfile.EOFHeaderError):
        return None
    if isinstance(error, tarfile.EmptyHeaderError) or error is None:
        return "truncated tar: it ends without its end-of-archive block"
    return f"damaged tar: unreadable header ({type(error).__name__}: {error})"


def iter_samples(fileobj, with_data: bool) -> Iterator[Sample]:
    """The samples of a tar stream, in order; members' bytes only ``with_data``.

    Damage (a cut, a corrupt header) marks the sample it is met in and ends the walk; a tar
    that stops before its end-of-archive block is damage too, charged to the last sample (its
    later members may be among those lost)."""
    current: Sample | None = None
    last_header: list = [None]
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|", tarinfo=_header_reader(last_header))
    except tarfile.TarError as e:
        raise UnreadableTar(f"not a readable tar: {e}") from None
    try:
        for member in tar:
            if not member.isfile():
                continue
            key, kind = split_member_name(member.name)
            if current is None or key != current.key:
                if current is not None:
                    yield current
                current = Sample(key)
            data = None
            if with_data:
                extracted = tar.extractfile(member)
                data = extracted.read() if extracted is not None else None
            current.members[kind] = data
    except StorageUnavailable:
        raise
    except Exception as e:
        if is_transient(e):
            raise  # storage failing, not the tar: the caller retries or stops
        if current is None:
            raise UnreadableTar(f"corrupt tar before its first sample: {type(e).__name__}: {e}") from None
        current.error = RowError(ErrorKind.UNREADABLE_SHARD,
                                 f"damaged tar in sample {current.key!r}: {type(e).__name__}: {e}")
        yield current
        return
    problem = _end_problem(last_header[0])
    if current is None:
        if problem:
            raise UnreadableTar(f"no sample: {problem}")
        return
    if problem:
        current.error = RowError(ErrorKind.UNREADABLE_SHARD, f"{problem} after sample {current.key!r}; "
                                 "this sample's later members, and any samples after it, are lost")
    yield current


def claims(path: str) -> bool:
    return path.endswith(TAR_SUFFIX)


def count_samples(where: Location) -> int:
    """Samples in the tar at ``where``, headers only (one streaming pass); UnreadableTar if none can be read."""

    def count() -> int:
        with where.open("rb", block_size=READ_BLOCK_BYTES) as f:
            return sum(1 for _ in iter_samples(f, with_data=False))

    return where.retry.call(count, f"counting the samples of {where.uri}")


def inspect_tar(where: Location, name: str, info: dict | None = None, records: Records | None = None) -> Shard | FailedShard:
    """One tar shard at plan time: a Shard with its sample count, or a FailedShard. Its fingerprint
    is the listing's size and ETag (or mtime); when its output records that very fingerprint, the
    output's row count stands and the count pass is skipped."""
    fingerprint = listing_version(info or {})
    recorded = records(name) if records is not None else None
    if recorded is not None and recorded.describes(where.uri, fingerprint):
        rows = recorded.rows
    else:
        try:
            rows = count_samples(where)
        except StorageUnavailable:
            raise
        except Exception as e:
            return FailedShard(where.uri, f"unreadable tar: {type(e).__name__}: {e}", name)
    return Shard(uri=where.uri, name=name, num_rows=rows, format="webdataset", path=where.path, fingerprint=fingerprint)


def inspect(input: Location, files: dict[str, dict], settings: JobSettings, threads: int, records: Records | None = None):
    paths = list(files)
    inspected = in_threads(lambda job: inspect_tar(input.at(job[0]), job[1], files[job[0]], records),
                           list(zip(paths, shard_names(paths, input))), threads)
    return [s for s in inspected if isinstance(s, Shard)], [s for s in inspected if isinstance(s, FailedShard)]


def read_tasks(shard: Shard) -> list[ReadTask]:
    """One task a tar: it is read in one sequential pass."""
    return [ReadTask(shard.uri, shard.name, "webdataset", shard.path, 0, shard.num_rows)]


def sample_error(sample: Sample) -> RowError | None:
    if sample.error is None and sample.image_kind is None:
        present = ", ".join(sorted(k or "(no extension)" for k in sample.members)) or "none"
        return RowError(ErrorKind.MISSING_IMAGE, f"the sample has no {'/'.join(IMAGE_KINDS)} member (members: {present})")
    return sample.error


def _samples_after(where: Location, done: int) -> Iterator[Sample]:
    """The tar's samples from the ``done``-th on (a resumed pass re-reads and skips the first ones)."""
    with where.open("rb", block_size=READ_BLOCK_BYTES) as stream:
        for index, sample in enumerate(iter_samples(stream, with_data=True)):
            if index >= done:
                yield sample


def read(input: Location, task: ReadTask, settings: JobSettings) -> Iterator[dict[str, list]]:
    """A tar's rows, in order, in slices of at most SLICE_ROWS rows or SLICE_BYTES of pictures; at
    most the plan's count (a tar that grew since is cut there, with a warning). Storage failing
    part-way resumes the pass after the samples already handed on."""
    where = input.at(task.path)
    rows: dict[str, list] = {ID: [], IMAGE: [], "error": []}
    emitted = size = 0
    for sample in where.retry.resumable(lambda done: _samples_after(where, done), f"reading {where.uri}"):
        if emitted == task.num_rows:
            log.warning("%s holds more samples than when the run was planned; the extra ones are left out", where.uri)
            break
        image = sample.members[sample.image_kind] if sample.image_kind else None
        rows[ID].append(sample.key)
        rows[IMAGE].append(image)
        rows["error"].append(sample_error(sample))
        emitted += 1
        size += len(image or b"")
        if len(rows[ID]) >= SLICE_ROWS or size >= SLICE_BYTES:
            yield rows
            rows, size = {ID: [], IMAGE: [], "error": []}, 0
    if rows[ID]:
        yield rows


FORMAT = Format(name="webdataset", files=".tar files", claims=claims, inspect=inspect, read_tasks=read_tasks, read=read)
