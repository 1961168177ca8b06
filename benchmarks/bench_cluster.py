"""The backlog job on Ray Data against plain ``tag``, on the same photos, in one run: photos/s end to end and once
running, time to first result, 1 -> 2 model replicas.

    python benchmarks/bench_cluster.py --model runs/base/transfer_exported.pt --photos 1200

The benchmark starts its own Ray cluster on this machine: a head and one extra worker node (``ray start --head
--port P`` and ``ray start --address 127.0.0.1:P``, 2 logical CPUs each, token authentication with a token of its
own, temporary folders), runs the jobs as a driver joined to it, and stops exactly those processes at the end.
The photos: ``--photos`` files of ../shared/data (landmarks13 train + test, everyday, everyday2; repeated under
other names when there are fewer), linked into one temporary folder.

* **tag**: :func:`src.tagging.tag_folder` on the folder (decoding threads + 2 ONNX Runtime sessions; the library
  pass that reads the photos' EXIF with ExifTool switched off: the cluster job decides pixels and camera GPS only).
* **Ray Data alone**: a job of as many rows, joined the same way, with a trivial map and Parquet writes: the floor
  of any Ray job here (start-up included).
* **ray N**: :func:`src.cluster.tag_on_ray` with N model replicas (1 thread each) into a new results folder.
  *end to end*: from the call (listing, driver's model load, actors' start, decoding, inference, Parquet, merge into
  ``tags.csv``) to its return; *running*: photos after the first shard / time after it (what a backlog of millions
  sees); *first result*: the call to the first shard on disk.

The machine is shared: ``uptime`` load is recorded before and after; the runs alternate tag and Ray.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED_DATA, format_table, save_results

import pyarrow.parquet as pq  # noqa: E402 - after common (sys.path)

from src.cluster import connect, tag_on_ray  # noqa: E402
from src.cluster_io import PARTS, RowFormat  # noqa: E402
from src.tagging import CSV_COLUMNS, read_existing_rows, record_to_row, rows_to_csv, tag_folder  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))
FMT = RowFormat(tuple(CSV_COLUMNS), record_to_row, rows_to_csv, read_existing_rows)


def load() -> str:
    """``uptime``'s load averages (1, 5, 15 min)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def link_photos(folder: Path, n: int) -> int:
    sources = []
    for sub in ("landmarks13/train", "landmarks13/test", "everyday", "everyday2"):
        sources += sorted(p for p in (SHARED_DATA / sub).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not sources:
        raise SystemExit(f"no photos under {SHARED_DATA}")
    for i in range(n):
        source = sources[i % len(sources)]
        target = folder / f"{i // 250:02d}" / f"{i:05d}_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    return n


class LoopbackCluster:
    """A head and a worker node on this machine; stopped by the PIDs of the processes under its temp folder."""

    def __init__(self, port: int, cpus: int):
        self.temp = Path(tempfile.mkdtemp(prefix="bench-ray."))
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.env["RAY_AUTH_TOKEN"])  # for the driver
        self.address = f"127.0.0.1:{port}"
        common = ["--num-cpus", str(cpus), "--disable-usage-stats"]
        started = time.perf_counter()
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard=false",
                        "--temp-dir", str(self.temp), *common], env=self.env, check=True, capture_output=True)
        subprocess.run([RAY, "start", "--address", self.address, *common], env=self.env, check=True,
                       capture_output=True)
        self.start_s = time.perf_counter() - started

    def stop(self) -> None:
        import psutil  # noqa: PLC0415 - Ray's dependency

        mine = []
        for process in psutil.process_iter(["cmdline"]):
            if any(str(self.temp) in part for part in process.info["cmdline"] or []):
                mine.append(process)
        for process in list(mine):
            try:
                mine += process.children(recursive=True)
            except psutil.Error:
                pass
        for process in mine:
            try:
                process.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(mine, timeout=20)
        for process in alive:
            try:
                process.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)


def time_tag(folder: Path, model: str, out: Path) -> dict:
    kwargs = {}
    try:
        from src.placing import PlacingOptions  # noqa: PLC0415 - the library pass, where tag has one

        kwargs["placing"] = PlacingOptions(enabled=False)
    except ImportError:
        pass
    started = time.perf_counter()
    summary = tag_folder(folder, model, out, progress=False, **kwargs)
    seconds = time.perf_counter() - started
    return {"run": "tag", "photos": summary.total, "seconds": round(seconds, 1),
            "photos_s": round(summary.total / seconds, 1), "running_photos_s": "", "first_result_s": ""}


def time_ray(folder: Path, model: str, results: Path, address: str, actors: int, batch_size: int) -> dict:
    started = time.perf_counter()
    summary = tag_on_ray(folder, model, results, FMT, address=address, actors=actors, batch_size=batch_size,
                         progress=False)
    seconds = time.perf_counter() - started
    shards = sorted((results / PARTS).glob("*/*.parquet"), key=lambda p: p.stat().st_mtime)
    first_rows = pq.read_metadata(shards[0]).num_rows if shards else 0
    after = seconds - (summary.first_result_s or 0)
    return {"run": f"ray, {actors} replica{'s' if actors > 1 else ''}", "photos": summary.total,
            "seconds": round(seconds, 1), "photos_s": round(summary.total / seconds, 1),
            "running_photos_s": round((summary.total - first_rows) / after, 1) if after > 0 else "",
            "first_result_s": round(summary.first_result_s, 1) if summary.first_result_s else "",
            "errors": summary.errors}


def _identity(batch: dict) -> dict:
    return batch


def time_floor(address: str, n: int, out: Path) -> dict:
    """What Ray Data alone costs a job of ``n`` rows on this cluster: joining it (with the job's runtime
    environment), worker processes starting, a trivial map and Parquet writes; no photo, no model."""
    import ray  # noqa: PLC0415 - the cluster extra
    import ray.data  # noqa: PLC0415 - idem

    started = time.perf_counter()
    connect(address)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray.data.range(n).map_batches(_identity, batch_size=8, num_cpus=1).write_parquet(str(out))
    finally:
        ray.shutdown()
    seconds = time.perf_counter() - started
    return {"run": "Ray Data alone (no photos, no model)", "photos": n, "seconds": round(seconds, 1),
            "photos_s": round(n / seconds, 1), "running_photos_s": "", "first_result_s": ""}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="runs/base/transfer_exported.pt")
    parser.add_argument("--photos", type=int, default=1200)
    parser.add_argument("--port", type=int, default=6397)
    parser.add_argument("--cpus-per-node", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--name", default="bench_cluster", help="results/NAME.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-cluster."))
    rows = []
    load_before = load()
    cluster = None
    try:
        folder = work / "photos"
        link_photos(folder, args.photos)
        cluster = LoopbackCluster(args.port, args.cpus_per_node)
        print(f"cluster of 2 nodes on {cluster.address} started in {cluster.start_s:.1f} s; load {load()}",
              flush=True)
        plan = [("tag", None), ("floor", None), ("ray", 1), ("ray", 2)] * 2
        for i, (kind, actors) in enumerate(plan):
            if kind == "tag":
                row = time_tag(folder, args.model, work / f"tag{i}.csv")
            elif kind == "floor":
                row = time_floor(cluster.address, args.photos, work / f"floor{i}")
            else:
                row = time_ray(folder, args.model, work / f"results{i}", cluster.address, actors, args.batch_size)
            row["round"] = i // 4 + 1
            row["load"] = load()
            rows.append(row)
            print(row, flush=True)
    finally:
        import ray  # noqa: PLC0415 - disconnect before the cluster goes

        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    tag_rate = [r["photos_s"] for r in rows if r["run"] == "tag"]
    for row in rows:
        base = tag_rate[row["round"] - 1]
        row["vs_tag"] = f"{row['photos_s'] / base:.2f}x"
        row["running_vs_tag"] = f"{row['running_photos_s'] / base:.2f}x" if row["running_photos_s"] != "" else ""
    table = format_table(rows, [("round", "round"), ("run", "run"), ("photos", "photos"), ("seconds", "s"),
                                ("photos_s", "photos/s"), ("vs_tag", "vs tag"),
                                ("running_photos_s", "running photos/s"), ("running_vs_tag", "running vs tag"),
                                ("first_result_s", "first result s"),
                                ("load", "load after")])
    save_results(args.name, "bench_cluster.py", argv, rows, table, load_before=load_before,
                 load_after=load(), cluster={"nodes": 2, "cpus_per_node": args.cpus_per_node,
                                             "start_s": round(cluster.start_s, 1) if cluster else None},
                 note="head + 1 worker node on one 2-core machine (loopback); no GPU node was available")


if __name__ == "__main__":
    main()
