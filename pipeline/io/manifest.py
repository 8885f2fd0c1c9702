"""Which result files describe the current input: ``_manifest.json``, written by each run.

An output location can hold result files that no longer describe the input: those of shards gone
from it (kept until ``--prune`` sets them aside), and, after a run that stopped part-way, those of
shards that changed and are not redone yet. Each run records here every current shard's name,
source and fingerprint, as planned; the summary and the report count only the result files whose
footers match it, so they describe the input as it is. An output without a manifest is read whole.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass

from .location import Location
from .shard import Shard

MANIFEST = "_manifest.json"
GONE = "its input shard is no longer in the input"
STALE = "made before its input changed (the next run redoes it)"


@dataclass(frozen=True)
class Manifest:
    run_id: str
    input: str
    results: dict[str, tuple[str, str]]  # result name -> (source URI, fingerprint) of each current shard

    @classmethod
    def of(cls, run_id: str, input: str, shards: list[Shard]) -> Manifest:
        return cls(run_id, input, {s.name: (s.uri, s.fingerprint) for s in shards})

    def why_left_out(self, name: str, metadata: dict | None) -> str | None:
        """None when result file ``name``, whose footer key-value metadata is ``metadata``, describes
        the current input; else why it is left out."""
        from .outputs import META_FINGERPRINT, META_SOURCE

        if name not in self.results:
            return GONE
        meta = metadata or {}
        found = (meta.get(META_SOURCE, b"").decode(), meta.get(META_FINGERPRINT, b"").decode())
        return None if found == tuple(self.results[name]) else STALE

    def to_json(self) -> str:
        return json.dumps({"run_id": self.run_id, "input": self.input,
                           "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "results": {name: list(v) for name, v in self.results.items()}})

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(data["run_id"], data["input"], {name: tuple(v) for name, v in data["results"].items()})


def write_manifest(output: Location, manifest: Manifest) -> None:
    where = output.join(MANIFEST)
    text = manifest.to_json()

    def write() -> None:
        with where.fs.open(where.path, "w") as f:
            f.write(text)

    where.retry.call(write, f"writing {where.uri}")


def read_manifest(output: Location) -> Manifest | None:
    """The output's manifest, or None when it has none (an output of an older version, or a
    manifest that cannot be read: then every result file counts)."""
    path = posixpath.join(output.path, MANIFEST)
    try:
        text = output.retry.call(lambda: output.fs.cat_file(path), f"reading {output.uri}/{MANIFEST}")
        return Manifest.from_json(text.decode("utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
