"""The HTTP service (``python -m src serve``): a real uvicorn server on a free loopback port, real HTTP requests.

Tiny real models (a transfer model with a small backbone, exported to TorchScript and ONNX) keep it fast.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
import torch
import uvicorn
from torch import nn

from bad_inputs import BAD, CORPUS, GOOD_PHOTO, encode, photo
from conftest import make_dataset
from src.__main__ import main as cli
from src.export import export_onnx, export_torchscript
from src.helpers import file_sha256
from src.predictor import make_predictor
from src.serve import ServeSettings, create_app, read_token
from src.transfer import TransferModel

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["00.Landmark_A", "01.Landmark_B", "02.Landmark_C"]
MEAN, STD = [0.5, 0.45, 0.4], [0.25, 0.24, 0.26]
TOKEN = "test-token-0123456789abcdef"


def tiny_transfer_model(seed: int = 0) -> TransferModel:
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten())
    return TransferModel(backbone, 8, len(CLASSES), MEAN, STD, "tiny").eval()


def export_pair(folder: Path, seed: int = 0) -> Path:
    """``model.pt`` and the ``model.onnx`` exported with it, as ``python -m src export --onnx`` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    predictor = make_predictor(tiny_transfer_model(seed), CLASSES, MEAN, STD, img_size=32, arch="tiny")
    model = folder / "model.pt"
    export_torchscript(predictor, model)
    export_onnx(predictor, model.with_suffix(".onnx"), metadata={"torchscript_sha256": file_sha256(model)})
    return model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, timeout: float = 60) -> None:
    """Return once ``url``'s ``/healthz`` answers 200; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url}: the server did not become healthy within {timeout:g} s")


@contextlib.contextmanager
def running(app):
    """``app`` served by uvicorn on a free 127.0.0.1 port (in a thread); yields its base URL once healthy."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return export_pair(tmp_path_factory.mktemp("serve_model"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Real photo files of the tiny data set (JPEG, PNG, WEBP; three classes)."""
    root = make_dataset(tmp_path_factory.mktemp("serve_photos"), n_train=2, n_test=4)
    return sorted(p for p in (root / "test").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def server(model):
    settings = ServeSettings(max_upload_bytes=2 * 2**20, max_photos=64, timeout_s=30)
    with running(create_app(model, settings, token=TOKEN)) as url:
        yield url


def upload(paths) -> list:
    return [("photos", (Path(p).name, Path(p).read_bytes())) for p in paths]


def essentials(record: dict) -> dict:
    """What must agree between two ways of answering: the verdict, the place and the guesses."""
    return {key: record[key] for key in ("status", "landmark", "class", "prob", "city", "country", "lat", "lon",
                                         "top_k", "threshold", "method")}


# ---- answers ---------------------------------------------------------------------------------------------------

def test_answers_equal_predict_json(server, model, photos, capsys):
    chosen = photos[:6]
    assert cli(["predict", *map(str, chosen), "--model", str(model), "--json", "-k", "3"]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    response = httpx.post(server + "/v1/recognize", files=upload(chosen), params={"k": 3}, timeout=30)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["file"] for r in results] == [p.name for p in chosen]  # in the order sent
    assert [essentials(r) for r in results] == [essentials(e) for e in expected]
    assert all(len(r["top_k"]) == 3 and r["error"] is None for r in results)


def test_k_and_min_prob_query_parameters(server, photos):
    files = upload(photos[:2])
    sure = httpx.post(server + "/v1/recognize", files=files, params={"min_prob": 0.0, "k": 1}).json()["results"]
    assert all(r["status"] == "ok" and r["class"] in CLASSES and len(r["top_k"]) == 1 for r in sure)
    unsure = httpx.post(server + "/v1/recognize", files=files, params={"min_prob": 1.0}).json()["results"]
    assert all(r["status"] == "no_known_landmark" and r["class"] is None and r["lat"] is None for r in unsure)
    assert httpx.post(server + "/v1/recognize", files=files, params={"k": 0}).status_code == 422
    assert httpx.post(server + "/v1/recognize", files=files, params={"min_prob": 2}).status_code == 422


def test_onnx_and_torchscript_backends_answer_alike(model, photos):
    answers = {}
    for backend in ("onnx", "torchscript"):
        with running(create_app(model, ServeSettings(), backend=backend)) as url:
            assert httpx.get(url + "/healthz").json()["backend"] == backend
            answers[backend] = httpx.post(url + "/v1/recognize", files=upload(photos), params={"k": 3}).json()
    for a, b in zip(answers["onnx"]["results"], answers["torchscript"]["results"]):
        assert a["status"] == b["status"] and [t["class"] for t in a["top_k"]] == [t["class"] for t in b["top_k"]]
        assert a["prob"] == pytest.approx(b["prob"], abs=1e-4)


def test_fifty_concurrent_requests_are_batched_and_all_answered_right(server, photos):
    alone = [httpx.post(server + "/v1/recognize", files=upload([p])).json()["results"][0] for p in photos]
    before = _metric(server, "landmark_batch_size_count")

    async def fire():
        async with httpx.AsyncClient(timeout=60) as client:
            jobs = [client.post(server + "/v1/recognize", files=upload([photos[i % len(photos)]])) for i in range(50)]
            return await asyncio.gather(*jobs)

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 50
    for i, response in enumerate(responses):
        (record,) = response.json()["results"]
        expected = alone[i % len(photos)]
        assert essentials(record) == essentials(expected)
    forward_passes = _metric(server, "landmark_batch_size_count") - before
    assert forward_passes < 50  # photos of different requests shared forward passes


def test_parallel_runners_answer_alike_and_model_calls_wait_for_batches_in_flight(model, photos):
    from src.batching import Batcher
    from src.pipeline import decode_for_batch
    from src.recognizer import Recognizer
    from src.backends import parallel_runners

    recognizer = Recognizer.load(model, backend="onnx")
    runners = parallel_runners(recognizer.backend, 2)
    assert len(runners) == 2 and all(r is not recognizer.backend for r in runners)
    in_flight, most, lock = [0], [0], threading.Lock()

    class Counted:  # a real runner, counting the forward passes running at once
        def __init__(self, runner):
            self.runner = runner

        def __call__(self, batch):
            with lock:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
            try:
                time.sleep(0.02)  # long enough for the other runner to start meanwhile
                return self.runner(batch)
            finally:
                with lock:
                    in_flight[0] -= 1

    images = [decode_for_batch(p, recognizer.resize_size, recognizer.img_size) for p in photos]
    expected = recognizer.records(torch.stack(images), [p.name for p in photos], k=3)
    batcher = Batcher(recognizer, max_batch=2, max_wait_s=0.0, runners=[Counted(r) for r in runners])
    try:
        futures = [batcher.submit(images[i % len(images)], photos[i % len(photos)].name, 3, None)
                   for i in range(40)]
        seen_by_call = batcher.call(lambda: in_flight[0])  # queued behind batches: runs when none is in flight
        futures += [batcher.submit(images[i % len(images)], photos[i % len(photos)].name, 3, None)
                    for i in range(40, 80)]
        got = [f.result(30) for f in futures]
        assert seen_by_call.result(30) == 0
    finally:
        batcher.close(30)
    assert most[0] == 2  # both runners were busy at once
    for i, record in enumerate(got):
        want = expected[i % len(photos)]
        assert record["class"] == want["class"] and record["status"] == want["status"]
        assert record["prob"] == pytest.approx(want["prob"], abs=1e-5)


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# ---- bad input -------------------------------------------------------------------------------------------------

def test_bad_input_corpus_gets_4xx_per_bad_file_and_answers_the_good(server):
    for sample in BAD:
        response = httpx.post(server + "/v1/recognize", files=[("photos", (sample.name, sample.make()))])
        assert response.status_code == 422, sample.name
        body = response.json()
        (record,) = body["results"]
        assert record["status"] == "error" and record["file"] == sample.name
        assert sample.name in record["error"] and sample.reason in record["error"].lower(), record["error"]
        assert "\n" not in record["error"] and sample.name in body["detail"]
    response = httpx.post(server + "/v1/recognize", files=[("photos", (s.name, s.make())) for s in CORPUS],
                          timeout=60)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["file"] for r in results] == [s.name for s in CORPUS]
    for sample, record in zip(CORPUS, results):
        if sample.ok:
            assert record["status"] in ("ok", "no_known_landmark") and record["top_k"], sample.name
        else:
            assert record["status"] == "error" and sample.reason in record["error"].lower(), sample.name
    assert httpx.get(server + "/healthz").status_code == 200  # still serving
    assert httpx.post(server + "/v1/recognize",
                      files=[("photos", (GOOD_PHOTO.name, GOOD_PHOTO.make()))]).status_code == 200


def test_requests_without_photos_or_with_too_many_are_4xx(server):
    assert httpx.post(server + "/v1/recognize").status_code == 422
    assert httpx.post(server + "/v1/recognize", data={"other": "x"}).status_code == 422
    many = [("photos", (f"p{i}.jpg", GOOD_PHOTO.make())) for i in range(65)]
    response = httpx.post(server + "/v1/recognize", files=many)
    assert response.status_code == 413 and "too many photos" in response.json()["detail"]


def test_service_pixel_limit_refuses_big_photos_on_their_header(model):
    big = encode(photo((400, 300)), "PNG")
    with running(create_app(model, ServeSettings(max_pixels=100_000))) as url:
        response = httpx.post(url + "/v1/recognize", files=[("photos", ("big.png", big))])
        assert response.status_code == 422
        assert "big.png: image too large" in response.json()["results"][0]["error"] or \
            "too large" in response.json()["results"][0]["error"]
        ok = httpx.post(url + "/v1/recognize", files=[("photos", ("small.jpg", GOOD_PHOTO.make()))])
        assert ok.status_code == 200


def _raw_request(url: str, head: bytes, body_parts, pause: float = 0.0, read_timeout: float = 10.0):
    """Send ``head`` then ``body_parts`` one by one on a plain socket; returns ``(status, response bytes, number of
    parts sent)``: sending stops as soon as the server answers (or closes)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=read_timeout)
    sent = 0
    try:
        sock.sendall(head)
        sock.setblocking(False)
        data = b""
        for part in body_parts:
            with contextlib.suppress(BlockingIOError):
                data += sock.recv(65536)
            if data:
                break
            try:
                sock.setblocking(True)
                sock.sendall(part)
                sock.setblocking(False)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            time.sleep(pause)
        sock.setblocking(True)
        sock.settimeout(read_timeout)
        with contextlib.suppress(ConnectionResetError, socket.timeout):
            while b"\r\n\r\n" not in data or not _complete(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    finally:
        sock.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data, sent


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"content-length: *(\d+)", head, re.I)
    return match is None or len(body) >= int(match.group(1))


def test_oversized_upload_is_refused_before_it_is_read_whole(server):
    declared = 50 * 2**20  # 50 MiB declared; the limit is 2 MiB
    head = (f"POST /v1/recognize HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    status, data, sent = _raw_request(server, head, [b"\0" * 65536] * 800, pause=0.001)
    assert status == 413 and b"upload too large" in data
    assert sent * 65536 < declared / 2  # answered long before the body was sent
    # without Content-Length (chunked): refused once the bytes read pass the limit
    head = (b"POST /v1/recognize HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    part_head = b'--b\r\nContent-Disposition: form-data; name="photos"; filename="a.jpg"\r\n\r\n'
    status, data, sent = _raw_request(server, head, [chunk(part_head)] + [chunk(b"\0" * 65536)] * 200, pause=0.001)
    assert status == 413 and sent < 100
    assert httpx.get(server + "/healthz").status_code == 200


# ---- load: bounded admission, timeouts -------------------------------------------------------------------------

def _slow_upload_head(length: int) -> bytes:
    return (f"POST /v1/recognize HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


PART_HEAD = b'--b\r\nContent-Disposition: form-data; name="photos"; filename="slow.jpg"\r\n\r\n'


def _trickle(n: int) -> list[bytes]:
    """The start of a valid multipart upload, then ``n`` single bytes of a photo that never ends."""
    return [PART_HEAD] + [b"x"] * n


def test_over_capacity_is_503_with_retry_after_at_once(model):
    with running(create_app(model, ServeSettings(max_requests=1))) as url:
        # one request inside (its body trickles in), so the service is at capacity
        holder = threading.Thread(target=_raw_request, args=(url, _slow_upload_head(1000), _trickle(15), 0.1, 0.5))
        holder.start()
        time.sleep(0.5)
        start = time.monotonic()
        response = httpx.post(url + "/v1/recognize", files=[("photos", (GOOD_PHOTO.name, GOOD_PHOTO.make()))])
        assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
        assert "capacity" in response.json()["detail"] and time.monotonic() - start < 1.0
        assert httpx.get(url + "/healthz").status_code == 200  # health is never refused
        holder.join()
        assert httpx.post(url + "/v1/recognize",
                          files=[("photos", (GOOD_PHOTO.name, GOOD_PHOTO.make()))]).status_code == 200
        assert 'landmark_errors_total{kind="overloaded"} 1.0' in httpx.get(url + "/metrics").text


def test_request_over_its_time_limit_is_504(model):
    with running(create_app(model, ServeSettings(timeout_s=0.5))) as url:
        status, data, _ = _raw_request(url, _slow_upload_head(1000), _trickle(30), pause=0.05)
        assert status == 504 and b"not answered within 0.5 s" in data
        assert httpx.post(url + "/v1/recognize",
                          files=[("photos", (GOOD_PHOTO.name, GOOD_PHOTO.make()))]).status_code == 200


# ---- landmarks, tokens, metrics, docs --------------------------------------------------------------------------

def test_landmarks_list(server):
    landmarks = httpx.get(server + "/v1/landmarks").json()["landmarks"]
    assert [entry["class"] for entry in landmarks] == CLASSES


def test_write_endpoints_refuse_a_missing_or_wrong_token(server):
    files = [("photos", (GOOD_PHOTO.name, GOOD_PHOTO.make()))]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        response = httpx.post(server + "/v1/landmarks", data={"name": "Mine"}, files=files, headers=headers)
        assert response.status_code in (401, 403), headers
        assert httpx.delete(server + "/v1/landmarks/Mine", headers=headers).status_code in (401, 403)
    # the right token gets through to the model, which has no index to add to: a clear 409
    response = httpx.post(server + "/v1/landmarks", data={"name": "Mine"}, files=files,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 409 and "index" in response.json()["detail"]


def test_write_endpoints_are_off_without_a_configured_token(model):
    with running(create_app(model, ServeSettings(), token=None)) as url:
        response = httpx.post(url + "/v1/landmarks", data={"name": "Mine"},
                              files=[("photos", (GOOD_PHOTO.name, GOOD_PHOTO.make()))],
                              headers={"Authorization": "Bearer anything"})
        assert response.status_code == 403 and "no API token" in response.json()["detail"]
        assert httpx.delete(url + "/v1/landmarks/x", headers={"Authorization": "Bearer x"}).status_code == 403


def test_token_from_environment_or_file(tmp_path):
    assert read_token({}) is None
    assert read_token({"LANDMARK_API_TOKEN": " abc \n"}) == "abc"
    (tmp_path / "token").write_text("from-file\n")
    assert read_token({"LANDMARK_API_TOKEN_FILE": str(tmp_path / "token")}) == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_token({"LANDMARK_API_TOKEN_FILE": str(tmp_path / "empty")})
    with pytest.raises(ValueError, match="cannot read"):
        read_token({"LANDMARK_API_TOKEN_FILE": str(tmp_path / "missing")})


def test_metrics_health_and_docs(server, photos):
    httpx.post(server + "/v1/recognize", files=upload(photos[:2]))
    text = httpx.get(server + "/metrics").text
    for name in ("landmark_requests_total", "landmark_errors_total", "landmark_request_seconds_bucket",
                 "landmark_batch_size_bucket", "landmark_queue_length", "landmark_photos_total"):
        assert name in text
    health = httpx.get(server + "/healthz").json()
    assert health["status"] == "ok" and health["landmarks"] == len(CLASSES) and health["backend"] == "onnx"
    assert httpx.get(server + "/docs").status_code == 200
    paths = httpx.get(server + "/openapi.json").json()["paths"]
    assert {"/v1/recognize", "/v1/landmarks", "/v1/landmarks/{landmark}", "/healthz", "/metrics"} <= set(paths)


def test_docs_pages_load_nothing_from_outside_the_service(server):
    """/docs (Swagger UI) and /redoc take their JavaScript and CSS from the service, not a CDN: on an offline
    machine a page whose scripts come from elsewhere is blank."""
    for page, wanted in (("/docs", {".js": 500_000, ".css": 50_000}), ("/redoc", {".js": 500_000})):
        response = httpx.get(server + page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        html = response.text
        outside = [url for url in re.findall(r"""https?://[^\s"'<>]+""", html) if not url.startswith(server + "/")]
        assert not outside, f"{page} refers to addresses outside the service: {outside}"
        refs = [urljoin(server + page, ref) for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)]
        assert all(ref.startswith(server + "/") for ref in refs), refs  # nor //host/... (scheme-relative)
        for suffix, least in wanted.items():
            assets = [ref for ref in refs if ref.endswith(suffix)]
            assert assets, f"{page} refers to no {suffix} file: {refs}"
            for asset in assets:
                served = httpx.get(asset)
                assert served.status_code == 200 and len(served.content) >= least, (asset, len(served.content))
                kind = "javascript" if suffix == ".js" else "text/css"
                assert kind in served.headers["content-type"], (asset, served.headers["content-type"])
    assert '"validatorUrl": null' in httpx.get(server + "/docs").text  # nor a badge from swagger.io's validator
    paths = httpx.get(server + "/openapi.json").json()["paths"]
    assert not any(path.startswith(("/docs", "/redoc")) for path in paths)


# ---- the command: starts with one command, finishes requests in flight on shutdown ------------------------------

def test_serve_command_finishes_requests_in_flight_on_sigterm(model, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("LANDMARK_API_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "src", "serve", "--model", str(model), "--port", str(port)],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        body = (b"--b\r\nContent-Disposition: form-data; name=\"photos\"; filename=\"g.jpg\"\r\n"
                b"Content-Type: image/jpeg\r\n\r\n" + GOOD_PHOTO.make() + b"\r\n--b--\r\n")
        parts = [body[i:i + 200] for i in range(0, len(body), 200)]
        result = {}
        sender = threading.Thread(target=lambda: result.update(zip(("status", "data", "sent"), _raw_request(
            url, _slow_upload_head(len(body)), parts, pause=1.5 / len(parts)))))
        sender.start()
        time.sleep(0.4)
        proc.send_signal(signal.SIGTERM)  # mid-upload
        sender.join(30)
        assert result["status"] == 200 and b'"status":"' in result["data"]
        # uvicorn stops by the signal it was given once it has finished (the exit status a service manager expects)
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read().decode()
    assert "Uvicorn running" in output and "Finished server process" in output


def test_adding_and_removing_a_landmark_through_the_api(tmp_path):
    """With a landmark index beside the model, the right token adds a landmark the next answers can give, and
    removes it again; the index file beside the model is what changes."""
    from src.calibrate import calibrate_model

    data = make_dataset(tmp_path / "data", n_train=4, n_test=1)
    model = export_pair(tmp_path / "model")
    index_path, _ = calibrate_model(model, data, negatives=None, progress=False)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    new_photos = [("photos", (f"new{i}.png", encode(photo((64, 48), seed=100 + i), "PNG"))) for i in range(3)]
    with running(create_app(model, ServeSettings(), token=TOKEN)) as url:
        before = index_path.read_bytes()
        response = httpx.post(url + "/v1/landmarks", headers=auth, files=new_photos,
                              data={"name": "Garden Gnome", "city": "Testville", "country": "Nowhere", "lat": "10.5",
                                    "lon": "-20.25"})
        assert response.status_code == 201, response.text
        added = response.json()
        assert added["references"] == 3 and added["city"] == "Testville"
        names = [entry["name"] for entry in httpx.get(url + "/v1/landmarks").json()["landmarks"]]
        assert "Garden Gnome" in names and index_path.read_bytes() != before
        bad = httpx.post(url + "/v1/landmarks", headers=auth, data={"name": "Broken"},
                         files=[("photos", ("text.jpg", b"not a photo"))])
        assert bad.status_code == 422 and "text.jpg" in bad.json()["detail"]
        assert httpx.delete(url + "/v1/landmarks/Garden Gnome", headers=auth).status_code == 200
        assert "Garden Gnome" not in [e["name"] for e in httpx.get(url + "/v1/landmarks").json()["landmarks"]]
        assert httpx.delete(url + "/v1/landmarks/Garden Gnome", headers=auth).status_code == 404
