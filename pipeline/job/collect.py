"""The driver's books: result rows gathered per shard, each shard written the moment it is complete."""

from __future__ import annotations

import logging

import pyarrow as pa

from ..columns import missing, output_schema
from ..faults import failpoint
from ..io.inputs import FailedShard, Shard
from ..io.outputs import write_output
from ..settings import JobSettings

log = logging.getLogger("hired.pipeline")


class ShardCollector:
    """Gathers result rows per shard; writes a shard's output the moment it is complete."""

    def __init__(self, shards: list[Shard], settings: JobSettings):
        self.shards = {s.uri: s for s in shards}
        self.rows: dict[str, dict[int, dict]] = {s.uri: {} for s in shards}
        self.settings = settings
        self.written: list[str] = []
        self.generated_tokens = 0
        self.processed = 0

    def add(self, table: pa.Table) -> None:
        for row in table.to_pylist():
            row = {k: None if missing(v) else v for k, v in row.items()}
            if row["error"] is None and row["text"] is None:  # never a silently empty row
                row["error"] = "internal: no result came back for this row"
            uri = row["source_shard"]
            if row["id"] is not None and self.shards[uri].id_type == "int64":
                row["id"] = int(row["id"])  # ids travel between stages as strings; the output keeps the input's type
            # Keyed by position: a batch Ray retried after a worker died cannot duplicate a row.
            if row["row_index"] not in self.rows[uri]:
                self.processed += 1
                self.generated_tokens += row.get("generated_tokens") or 0
            self.rows[uri][row["row_index"]] = row
            if len(self.rows[uri]) == self.shards[uri].num_rows:
                self.flush(uri)

    def flush(self, uri: str) -> None:
        shard = self.shards[uri]
        rows = [self.rows[uri][i] for i in sorted(self.rows[uri])]
        table = pa.Table.from_pylist(rows, schema=output_schema(self.settings.task, shard.id_type))
        self.written.append(write_output(self.settings.output, shard, table, self.settings.result_settings()))
        log.info("wrote %s (%d rows)", self.written[-1], shard.num_rows)
        failpoint("shard_written")  # tests kill the driver here, between two shards
        self.rows[uri] = {}
        self.shards[uri] = None  # done

    def incomplete(self) -> list[FailedShard]:
        return [
            FailedShard(uri, f"incomplete: {len(self.rows[uri])} of {shard.num_rows} rows came back")
            for uri, shard in self.shards.items()
            if shard is not None
        ]
