"""The HTTP service under load: requests/s and p50/p95/p99 latency at 1, 8, 32 and 128 concurrent clients, for
``python -m src serve`` (dynamic batching) and a naive server (one forward pass per request, no batching), in
one run; then a long run (``--long`` requests, default 10,000) against the service; peak RSS; 503s.

    python benchmarks/bench_serve.py --model runs/serve_bench/transfer_exported.pt

Both servers run as their own processes on 127.0.0.1 with the same model file, backend (``--backend``) and
recognizer; the load generator is an async client in this process (``--client``: aiohttp, the default, or httpx,
whose async client needs over 20x the CPU per request and, at 128 clients, added seconds to the latencies it
measured: docs/serve.md). It runs on the same cores: its CPU time is taken from the servers', for both alike, so
each level also reports its CPU time and its event-loop lag (a starved load generator reads answers late). Each
client sends one real photo per request (the landmarks13 test photos, in turn) and sends its next request when
answered (closed loop; on a 503 it first waits Retry-After seconds; latencies of 200s only). The naive server is
FastAPI with a plain ``def`` endpoint: each request decodes its photo and runs its own forward pass in Starlette's
thread pool.

Model-only throughput (the forward pass alone on decoded photos, batches of the service's ``--max-batch``) is
the ceiling: the service's requests/s is reported as a fraction of it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from common import format_table, parallel_rate, save_results
from fastapi import FastAPI, File, UploadFile  # at module level: the endpoint's annotations are resolved here

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "landmarks13"


# ---- the naive server (run as: bench_serve.py --naive-server PORT) ----------------------------------------------

def naive_app(model: str, backend: str):
    from src.pipeline import decode_for_batch
    from src.recognizer import Recognizer

    rec = Recognizer.load(model, backend=backend)
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/v1/recognize")
    def recognize(photos: list[UploadFile] = File(...)):
        out = []
        for photo in photos:
            image = decode_for_batch(photo.file.read(), rec.resize_size, rec.img_size, name=photo.filename)
            record = rec.records(image[None], [photo.filename])[0]
            out.append({"file": record.pop("path"), **record})
        return {"results": out}

    return app


# ---- load generation -----------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


CLIENTS = ("aiohttp", "httpx")  # load generators (--client)


@asynccontextmanager
async def httpx_sender(url: str, clients: int, timeout: float):
    """``post(name, data) -> (code, parsed 200 body or None, Retry-After or None, error line or None)`` with one
    ``httpx.AsyncClient`` (connection pool of ``clients``)."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        async def post(name: str, data: bytes):
            try:
                response = await client.post(url, files=[("photos", (name, data))])
            except httpx.TimeoutException:
                return "timeout", None, None, None
            except httpx.HTTPError as exc:
                return type(exc).__name__, None, None, f"{type(exc).__name__}: {exc}"
            body = response.json() if response.status_code == 200 else None
            return response.status_code, body, response.headers.get("Retry-After"), None

        yield post


@asynccontextmanager
async def aiohttp_sender(url: str, clients: int, timeout: float):
    """The same with one ``aiohttp.ClientSession`` (``clients`` connections; httpx's timeouts: ``timeout`` to get a
    connection and between reads, none on the whole; the part's content type guessed from its name, as httpx
    does; every body read whole, as httpx does, so connections are kept)."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients)
    limits = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=limits) as session:
        async def post(name: str, data: bytes):
            form = aiohttp.FormData()
            form.add_field("photos", data, filename=name,
                           content_type=mimetypes.guess_type(name)[0] or "application/octet-stream")
            try:
                async with session.post(url, data=form) as response:
                    raw = await response.read()
                    body = json.loads(raw) if response.status == 200 else None
                    return response.status, body, response.headers.get("Retry-After"), None
            except TimeoutError:  # aiohttp's timeouts are TimeoutErrors too
                return "timeout", None, None, None
            except aiohttp.ClientError as exc:
                return type(exc).__name__, None, None, f"{type(exc).__name__}: {exc}"

        yield post


async def loop_lag(lags: list[float], period: float = 0.01) -> None:
    """Append how late the event loop wakes a coroutine that sleeps ``period`` (seconds), until cancelled: a
    load generator short of CPU is late by as much in reading every answer, which its latencies then include."""
    while True:
        start = time.perf_counter()
        await asyncio.sleep(period)
        lags.append(time.perf_counter() - start - period)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this process, all its threads
    return usage.ru_utime + usage.ru_stime


async def load(url: str, photos: list[tuple[str, bytes]], clients: int, requests: int, timeout: float,
               client: str = "aiohttp") -> dict:
    """``requests`` requests from ``clients`` closed-loop clients (each sends its next request when answered; on
    a 503 it first waits ``Retry-After`` seconds); latency counted for 200s only. Also the load generator's own
    CPU time and event-loop lag, to tell whether it was starved."""
    sender = {"aiohttp": aiohttp_sender, "httpx": httpx_sender}[client]
    latencies, lags, codes, errors = [], [], {}, []
    bad_records = 0
    counter = iter(range(requests))

    async with sender(url + "/v1/recognize", clients, timeout) as post:
        async def worker():
            nonlocal bad_records
            for i in counter:
                name, data = photos[i % len(photos)]
                start = time.perf_counter()
                code, body, retry_after, error = await post(name, data)
                elapsed = time.perf_counter() - start
                if error:
                    errors.append(error)
                if code == 200 and body["results"][0]["status"] == "error":
                    bad_records += 1
                    errors.append(body["results"][0]["error"])
                codes[code] = codes.get(code, 0) + 1
                if code == 200:
                    latencies.append(elapsed)
                elif code == 503:  # a refused client waits as it is told
                    await asyncio.sleep(float(retry_after or 1))

        monitor = asyncio.create_task(loop_lag(lags))
        cpu_start, start = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
        monitor.cancel()
    ok = codes.get(200, 0)
    quantiles = {f"p{q}_ms": round(1000 * percentile(latencies, q)) if latencies else None for q in (50, 95, 99)}
    failed = requests - ok - codes.get(503, 0)  # timeouts, connection errors, other statuses
    return {"clients": clients, "requests": requests, "ok": ok, "rps": round(ok / wall, 1), **quantiles,
            "n503": codes.get(503, 0), "errors": failed + bad_records, "codes": {str(k): v for k, v in codes.items()},
            "first_errors": errors[:3], "wall_s": round(wall, 1), "client": client,
            "client_cpu_s": round(cpu, 2), "client_cores": round(cpu / wall, 2),
            **{f"loop_lag_{name}_ms": round(1000 * value, 1) if lags else None
               for name, value in (("p50", percentile(lags, 50)), ("p99", percentile(lags, 99)),
                                   ("max", max(lags, default=0.0)))}}


class RssSampler:
    """Peak resident memory of a process (and its children), sampled every 0.2 s."""

    def __init__(self, pid: int):
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        import psutil

        try:
            return self.process.memory_info().rss + sum(c.memory_info().rss for c in self.process.children(True))
        except psutil.Error:
            return 0

    def _run(self):
        while not self._stop.wait(0.2):
            value = self.rss()
            self.samples.append(value)
            self.peak = max(self.peak, value)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def start_server(cmd: list[str], port: int, env: dict) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # not 2 minutes' wait for one that failed
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start (exit status {proc.wait()}; run it alone to see why): {' '.join(cmd)}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def server_histogram(url: str, metric: str = "landmark_request_seconds",
                     labels: str = 'endpoint="/v1/recognize",') -> dict[float, float]:
    """The service's own latency histogram for /v1/recognize (cumulative counts by upper bound, seconds): time
    from the parsed upload to the answer, without the client's or the connection's share."""
    import re

    import httpx

    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    pattern = rf'^{metric}_bucket\{{{re.escape(labels)}le="([^"]+)"\}} ([0-9.e+]+)$'
    return {float(le): float(n) for le, n in re.findall(pattern, text, re.M)}


def histogram_quantile(before: dict, after: dict, q: float) -> str:
    """The upper bound of the bucket holding quantile ``q`` of the requests between two snapshots."""
    counts = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = counts.get(float("inf"), 0)
    if not total:
        return ""
    for le in sorted(counts):
        if counts[le] >= q * total:
            return f"<= {le:g} s" if le != float("inf") else "> 30 s"
    return ""


def model_only_rate(model: str, backend: str, photos: list[tuple[str, bytes]], batch: int, threads: int,
                    workers: int = 1) -> float:
    """Photos/s of the forward pass alone on decoded batches: one backend using ``threads``, or (``workers`` > 1)
    the service's parallel runners (``src.backends.parallel_runners``), each fed batches by its own thread."""
    import torch

    from src.backends import load_backend, parallel_runners
    from src.pipeline import decode_for_batch

    torch.set_num_threads(threads)
    runner = load_backend(model, backend)
    runners = parallel_runners(runner, workers) if workers > 1 else [runner]
    images = [decode_for_batch(data, runner.resize_size, runner.img_size, name=name) for name, data in photos[:128]]
    batches = [torch.stack(images[i:i + batch]) for i in range(0, len(images) - batch + 1, batch)]
    for r in runners:
        for b in batches[:3]:
            r(b)
    return statistics.median(parallel_rate(runners, batches) for _ in range(3))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="runs/serve_bench/transfer_exported.pt")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--clients", default="1,8,32,128")
    parser.add_argument("--requests", default="200,600,1500,3000", help="requests per level (comma list)")
    parser.add_argument("--long", type=int, default=10000, help="requests of the long run (0: none)")
    parser.add_argument("--long-clients", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--with-one-worker", action="store_true",
                        help="also run the service with --model-workers 1, in the same run")
    parser.add_argument("--client", default="aiohttp",
                        help="load generator: aiohttp (default) or httpx; a comma list (aiohttp,httpx) runs each in "
                             "turn at every level, against the same server process")
    parser.add_argument("--naive-server", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--name", default="bench_serve")
    args = parser.parse_args(argv)
    if args.naive_server is not None:  # child process: the naive server
        import uvicorn

        uvicorn.run(naive_app(args.model, args.backend), host="127.0.0.1", port=args.naive_server,
                    log_level="warning", access_log=False)
        return 0
    load_before = os.getloadavg()
    photos = [(p.name, p.read_bytes()) for p in sorted((SHARED / "test").rglob("*")) if p.is_file()]
    if not photos:
        print(f"no photos at {SHARED}", file=sys.stderr)
        return 1
    clients = [int(c) for c in args.clients.split(",")]
    generators = args.client.split(",")
    if not set(generators) <= set(CLIENTS):
        parser.error(f"--client: {args.client!r} (choose from {', '.join(CLIENTS)})")
    counts = [int(c) for c in args.requests.split(",")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    single = model_only_rate(args.model, args.backend, photos, args.max_batch, args.threads)
    parallel = model_only_rate(args.model, args.backend, photos, args.max_batch, args.threads, workers=2)
    ceiling = max(single, parallel)
    print(f"model only: {single:.1f} photos/s (batch {args.max_batch}, one runner of {args.threads} threads), "
          f"{parallel:.1f} (the service's parallel runners)")
    serve = [sys.executable, "-m", "src", "serve", "--model", args.model, "--backend", args.backend,
             "--port", str(args.port), "--max-batch", str(args.max_batch)]
    servers = {"service": serve}
    if args.with_one_worker:  # the same service with one forward pass at a time (as before parallel runners)
        servers["service, 1 model worker"] = serve + ["--model-workers", "1"]
    if not args.no_naive:
        servers["naive"] = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--backend",
                            args.backend, "--naive-server", str(args.port + 1)]
    rows, memory = [], {}
    for name, cmd in servers.items():
        port = args.port + 1 if name == "naive" else args.port  # the servers run one after the other
        proc = start_server(cmd, port, env)
        sampler = RssSampler(proc.pid)
        idle_rss = sampler.rss()
        try:
            url = f"http://127.0.0.1:{port}"
            for generator in generators:
                asyncio.run(load(url, photos, 4, 40, args.timeout, generator))  # warm-up
            for n, count in zip(clients, counts):
                for generator in generators:
                    before = server_histogram(url)
                    before_all = server_histogram(url, "landmark_admitted_request_seconds", "")
                    result = asyncio.run(load(url, photos, n, count, args.timeout, generator))
                    after = server_histogram(url)
                    result["server_p99"] = histogram_quantile(before, after, 0.99)
                    result["admitted_p99"] = histogram_quantile(
                        before_all, server_histogram(url, "landmark_admitted_request_seconds", ""), 0.99)
                    result["load"] = round(os.getloadavg()[0], 1)
                    result.update(server=name, of_ceiling=f"{result['rps'] / ceiling:.2f}")
                    rows.append(result)
                    print(name, result, flush=True)
            for generator in generators if name == "service" and args.long else ():
                before = server_histogram(url)
                result = asyncio.run(load(url, photos, args.long_clients, args.long, args.timeout, generator))
                result["server_p99"] = histogram_quantile(before, server_histogram(url), 0.99)
                result["load"] = round(os.getloadavg()[0], 1)
                result.update(server="service (long run)", of_ceiling=f"{result['rps'] / ceiling:.2f}")
                rows.append(result)
                print(result, flush=True)
        finally:
            memory[name] = {"idle_mb": round(idle_rss / 2**20), "peak_mb": round(sampler.stop() / 2**20),
                            "end_mb": round(sampler.rss() / 2**20)}
            stop_server(proc)
    for row in rows:
        key = row["server"] if row["server"] in memory else "service"  # the long run is the service's
        row["peak_rss_mb"] = memory[key]["peak_mb"]
    by = {(r["server"], r["clients"], r["client"]): r for r in rows}
    for n, generator in ((n, g) for n in clients for g in generators):
        naive = by.get(("naive", n, generator))
        for name in servers:
            service = by.get((name, n, generator))
            if name != "naive" and service and naive and naive["rps"]:
                service["vs_naive"] = f"{service['rps'] / naive['rps']:.2f}x"
    table = format_table(rows, [("server", "server"), ("client", "load generator"), ("clients", "clients"),
                                ("requests", "requests"),
                                ("rps", "requests/s"), ("vs_naive", "vs naive"), ("of_ceiling", "of model-only"),
                                ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"),
                                ("server_p99", "in-server p99"), ("admitted_p99", "let-in p99"), ("n503", "503s"),
                                ("errors", "errors"), ("client_cores", "client CPU, cores"),
                                ("loop_lag_p99_ms", "client loop lag p99 ms"), ("peak_rss_mb", "peak RSS MB"),
                                ("load", "load avg")])
    save_results(args.name, "bench_serve.py", argv, rows, table, model=args.model, backend=args.backend,
                 client=args.client,
                 model_only_photos_s=round(ceiling, 1), model_only_one_runner_photos_s=round(single, 1),
                 model_only_parallel_runners_photos_s=round(parallel, 1), max_batch=args.max_batch,
                 threads=args.threads,
                 memory=memory, load_before=load_before, load_after=os.getloadavg(), photos=len(photos))
    return 0


if __name__ == "__main__":
    sys.exit(main())
