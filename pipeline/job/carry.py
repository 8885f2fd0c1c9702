"""Results carried over by file: a folder chunk whose files changed generates only its new and
changed files.

Every folder chunk output records each row's file version (size and ETag, or mtime). When files
are added, rewritten or removed, the chunks they sort into get new names (pipeline.io.formats.folder),
and their old outputs are no longer current. Planning reads those old outputs' ids and versions:
a file of a new chunk whose result an old output holds at the same version is carried over (its
row is copied into the new chunk's output when that is written), every other file is generated.
An old output some of whose files are still in the input is *superseded* by the new chunks,
and deleted once a run has written all of them; one none of whose files remains is a *removed*
result, kept (and left out of the summary) until ``--prune`` sets it aside.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace

import pyarrow as pa

from ..columns import ID, ROW_INDEX, SOURCE_SHARD
from ..io.location import in_threads
from ..io.outputs import Outputs, Recorded, version_digest
from ..io.shard import Shard


@dataclass
class Carried:
    pending: list[Shard]  # the chunks to write, each with the rows it carries over
    superseded: list[str] = field(default_factory=list)  # old outputs whose files now sit in other chunks
    removed: list[str] = field(default_factory=list)  # not-current outputs none of whose files remains
    new_files: int = 0  # files of pending chunks that no output holds
    changed_files: int = 0  # files whose result was made from another version of them
    removed_files: int = 0  # files that old outputs hold and the input no longer does
    carried_rows: int = 0


def carry_results(outputs: Outputs, current: list[Shard], pending: list[Shard], not_current: list[Recorded],
                  settings: dict, threads: int) -> Carried:
    """Attach to each pending folder chunk the rows it can carry over from the ``not_current``
    outputs (those made from this folder, with these settings), and sort those outputs into
    superseded and removed."""
    folder = {shard.uri.rsplit("#", 1)[0] for shard in current}
    mine = [r for r in not_current if r.damaged is None and r.source.rsplit("#", 1)[0] in folder]
    others = sorted({r.name for r in not_current} - {r.name for r in mine})
    ids = in_threads(lambda r: outputs.read_rows(r.name, None, [ID]).column(ID).to_pylist(), mine, threads)
    members = {member for shard in current for member in shard.plan}
    result = Carried(pending=[])
    removed = set(others)
    gone: set[str] = set()  # files old outputs hold and the input no longer does
    # file -> {version digest: (output name, row)}: the results made from it, whichever version
    held: dict[str, dict[str, tuple[str, int]]] = defaultdict(dict)
    for recorded, names in zip(mine, ids):
        gone.update(name for name in names if name not in members)
        if not any(name in members for name in names):
            removed.add(recorded.name)
            continue
        result.superseded.append(recorded.name)
        versions = recorded.row_versions()
        if versions is None or len(versions) != len(names):
            continue  # made before per-file versions were recorded: nothing to carry
        outputs.check_settings(recorded, settings)  # results made otherwise are never mixed in
        for row, (name, version) in enumerate(zip(names, versions)):
            held[name].setdefault(version, (recorded.name, row))
    for shard in pending:
        carried = []
        for row, (member, version) in enumerate(zip(shard.plan, shard.versions)):
            made = held.get(member)
            found = made.get(version_digest(version)) if made else None
            if found is not None:
                carried.append((row, *found))
            elif made:
                result.changed_files += 1
            else:
                result.new_files += 1
        result.carried_rows += len(carried)
        result.pending.append(replace(shard, carried=tuple(carried)))
    result.removed, result.removed_files = sorted(removed), len(gone)
    return result


def carried_blocks(outputs: Outputs, shard: Shard) -> list[pa.Table]:
    """A chunk's carried rows, read from the outputs that hold them, as rows of this chunk."""
    by_file: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for row, name, old_row in shard.carried:
        by_file[name].append((row, old_row))
    blocks = []
    for name, pairs in by_file.items():
        table = outputs.read_rows(name, [old for _, old in pairs])
        table = table.set_column(table.schema.get_field_index(ROW_INDEX), ROW_INDEX,
                                 pa.array([row for row, _ in pairs], table.schema.field(ROW_INDEX).type))
        table = table.set_column(table.schema.get_field_index(SOURCE_SHARD), SOURCE_SHARD,
                                 pa.array([shard.uri] * len(pairs), pa.string()))
        blocks.append(table.replace_schema_metadata(None))
    return blocks
