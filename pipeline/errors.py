"""How a job can end badly, and the exit status each way has.

Exit statuses (``jobs/caption.py --help`` lists them too):

* 0: every shard written (rows that could not be used are error rows, not failures);
* 2: the settings or the input cannot work (:class:`InputError`), found before anything heavy starts;
* 3: the run finished but some shards failed (unreadable or incomplete); a rerun retries them;
* 4: the run stopped part-way for a reason outside the data (:class:`StorageUnavailable`,
  :class:`RunAborted`); complete shards are written, a rerun of the same command finishes the rest.
"""

from __future__ import annotations

EXIT_OK, EXIT_BAD_INPUT, EXIT_FAILED_SHARDS, EXIT_STOPPED = 0, 2, 3, 4


class InputError(ValueError):
    """The settings or the input as a whole cannot be processed (no shards, wrong schema, no model);
    raised before any model loads. A rerun cannot fix it: the command must change."""


class StorageUnavailable(RuntimeError):
    """Storage stayed unreachable through every retry."""


class RunAborted(RuntimeError):
    """The run stopped part-way (storage down, the cluster lost): complete shards are written,
    a rerun of the same command finishes the rest."""

    def __init__(self, reason: str, summary: dict):
        super().__init__(reason)
        self.summary = summary
