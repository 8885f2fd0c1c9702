"""What planning a WebDataset tar costs on S3: counting its samples next to downloading it.

    python bench/bench_tar_inspect.py [--samples 1000] [--picture-kb 30] [--repeats 3]

Starts a SeaweedFS S3 server on loopback (tests/servers.py), writes an img2dataset-like tar
(``<key>.jpg`` of random bytes, ``.txt``, ``.json`` per sample) and times, round-robin:

* ``download``: the object's bytes fetched whole (``cat_file``): the floor for one pass;
* ``plan``: ``count_samples``, what planning does per tar (one streaming pass, headers parsed);
* ``read``: the read task's pass (``read_tar_rows``: members' bytes kept, rows built);
* ``plan-local``: ``count_samples`` on the same tar on local disk (parsing alone).

It counts the ranged GETs each pass issues (s3fs ``_fetch_range`` calls) and writes
``bench/results/tar-inspect.json``. The median of each is printed with its ratio to ``download``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import s3fs  # noqa: E402
import webdataset  # noqa: E402

from pipeline.io.formats import webdataset as wd  # noqa: E402
from pipeline.io.location import Location  # noqa: E402
from pipeline.io.shard import ReadTask  # noqa: E402
from tests.servers import start_s3  # noqa: E402


def write_tar(path: Path, samples: int, picture_bytes: int) -> None:
    with webdataset.TarWriter(str(path)) as writer:
        for i in range(samples):
            writer.write({"__key__": f"{i:09d}", "jpg": os.urandom(picture_bytes), "txt": f"alt text {i}",
                          "json": {"key": f"{i:09d}", "status": "success"}})


class GetCounter:
    """Counts ranged GETs of S3 files opened for reading."""

    def __init__(self):
        self.count = 0
        original = s3fs.core.S3File._fetch_range

        def counted(file, start, end):
            self.count += 1
            return original(file, start, end)

        s3fs.core.S3File._fetch_range = counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--picture-kb", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = start_s3(Path(tmp) / "s3")
        os.environ.update(server.env)
        try:
            local = Path(tmp) / "shard.tar"
            write_tar(local, args.samples, args.picture_kb * 1024)
            fs = s3fs.S3FileSystem(skip_instance_cache=True)
            fs.mkdir("bench-tars")
            fs.put_file(str(local), "bench-tars/shard.tar")
            uri = "s3://bench-tars/shard.tar"
            size = local.stat().st_size
            gets = GetCounter()

            def download():
                fs.cat_file("bench-tars/shard.tar")

            where = Location.resolve(uri)
            task = ReadTask(uri, "shard", "webdataset", where.path, 0, args.samples)

            def plan():
                assert wd.count_samples(where) == args.samples

            def read():
                assert sum(len(rows["id"]) for rows in wd.read(where, task, None)) == args.samples

            def plan_local():
                assert wd.count_samples(Location.resolve(str(local))) == args.samples

            passes = {"download": download, "plan": plan, "read": read, "plan-local": plan_local}
            times = {name: [] for name in passes}
            requests = {}
            for name, run in passes.items():  # warm-up, and the GET count of one pass
                before = gets.count
                run()
                requests[name] = gets.count - before
            for _ in range(args.repeats):
                for name, run in passes.items():
                    started = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - started)
        finally:
            server.stop()

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"tar of {args.samples} samples, {size / 2**20:.1f} MiB; loopback SeaweedFS; median of {args.repeats}")
    print(f"{'pass':<12}{'seconds':>10}{'x download':>12}{'MiB/s':>9}{'GETs':>7}")
    for name in passes:
        rate = size / 2**20 / median[name]
        print(f"{name:<12}{median[name]:>10.3f}{median[name] / median['download']:>12.2f}{rate:>9.0f}"
              f"{requests[name] if name != 'download' else 1:>7}")
    results = {
        "samples": args.samples, "tar_bytes": size, "read_block_bytes": wd.READ_BLOCK_BYTES,
        "repeats": args.repeats, "seconds": times, "median_s": median,
        "ratio_to_download": {name: median[name] / median["download"] for name in passes},
        "ranged_gets": requests, "machine": os.uname().nodename, "cpus": os.cpu_count(),
    }
    out = ROOT / "bench" / "results" / "tar-inspect.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
