"""The README's "Use it" block, run as a user runs it: each line as printed, in bash, with ``.venv`` activated, in
the project folder, on files a user would have (``photo.jpg``, ``~/Pictures``, ``my_new_landmarks/``).

Shared by ``tests/test_firstrun.py`` (a copy of the project around a tiny model) and ``.ci/fresh_clone.py`` (a
fresh clone after ``run.sh --quick``). The two lines that run until stopped are started, checked while they run
and stopped: ``serve`` (``/healthz`` and ``/v1/model``; on a free port instead of the printed 8000, which another
program may hold) and ``bash scripts/app.sh`` (the page renders; ``PORT`` set to a free port).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

LONG_RUNNING = ("python -m src serve", "landmark-tagger serve", "bash scripts/app.sh")


def use_it_lines(readme: str) -> list[str]:
    """The command lines of the first ```bash block under the README's "## Use it" heading."""
    section = readme.split("\n## Use it", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md: no ```bash block under ## Use it"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_user_files(root: Path, home: Path, photos: list[Path], new_landmark: list[Path]) -> None:
    """``root/photo.jpg``, ``home/Pictures/`` (the photos, in two folders) and ``root/my_new_landmarks/train/
    05.Rainbow_Arch/`` (a landmark to enrol)."""
    shutil.copy(photos[0], root / "photo.jpg")
    for i, photo in enumerate(photos):
        folder = home / "Pictures" / ("holiday" if i % 2 else "2024")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / f"IMG_{i:04d}{photo.suffix}")
    folder = root / "my_new_landmarks" / "train" / "05.Rainbow_Arch"
    folder.mkdir(parents=True, exist_ok=True)
    for i, photo in enumerate(new_landmark):
        shutil.copy(photo, folder / f"arch_{i}{photo.suffix}")


@dataclass
class Ran:
    line: str
    returncode: int
    output: str
    seconds: float


def _get(url: str, timeout: float = 30) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a loopback test URL
        return response.status, response.read().decode("utf-8", "replace")


def _run_until_up(line: str, root: Path, env: dict, url: str, check, limit: float) -> Ran:
    """Start a line that serves until stopped, wait for ``url`` to answer, ``check`` the answer, stop it (Ctrl+C)."""
    started = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", f"source .venv/bin/activate && exec {line}"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    problem = None
    try:
        while True:
            if proc.poll() is not None:
                problem = f"exited with status {proc.returncode} before answering"
                break
            try:
                status, body = _get(url, timeout=min(120.0, limit))
            except OSError:
                if time.monotonic() - started > limit:
                    problem = f"did not answer {url} within {limit:.0f} s"
                    break
                time.sleep(0.5)
                continue
            problem = check(status, body)
            break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        output = proc.stdout.read() if proc.stdout else ""
    return Ran(line, 1 if problem else 0, output + (f"\n[first-run check] {problem}" if problem else ""),
               time.monotonic() - started)


def run_use_it(root: Path, home: Path, env: dict | None = None, limit: float = 300) -> list[Ran]:
    """Every line of the README's "Use it" block, in order, in ``root`` with ``HOME=home``; see the module docstring."""
    env = dict(os.environ if env is None else env, HOME=str(home))
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):  # as in a fresh shell: only `activate` sets these
        env.pop(key, None)
    results = []
    for line in use_it_lines((root / "README.md").read_text(encoding="utf-8")):
        if line.startswith(LONG_RUNNING[:2]):
            port = free_port()
            served = re.sub(r"--port \d+", f"--port {port}", line)

            def check_service(status: int, body: str) -> str | None:
                status, body = _get(f"http://127.0.0.1:{port}/v1/model")
                info = json.loads(body)
                return None if status == 200 and "note" in info.get("threshold", {}) else f"/v1/model: {body[:300]}"

            ran = _run_until_up(served, root, env, f"http://127.0.0.1:{port}/healthz", check_service, limit)
            ran.line = line  # as printed
            results.append(ran)
        elif line.startswith(LONG_RUNNING[2]):
            port = free_port()

            def check_page(status: int, body: str) -> str | None:
                # the notebook ran on the server: the page holds the app's widget (its state comes over the
                # kernel's websocket, which only a browser opens: tests/test_app_browser.py) and no error
                if status != 200 or "Traceback" in body or "widget-view+json" not in body:
                    return f"the app's page: HTTP {status}: {body[-800:]}"
                return None

            results.append(_run_until_up(line, root, dict(env, PORT=str(port)), f"http://127.0.0.1:{port}/",
                                         check_page, limit))
        else:
            started = time.monotonic()
            proc = subprocess.run(["bash", "-c", f"source .venv/bin/activate && {line}"], cwd=root, env=env,
                                  capture_output=True, text=True, timeout=limit)
            results.append(Ran(line, proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started))
    return results
