"""The README as a new user meets it, in a fresh clone with no ``../shared`` beside it (issue 24).

    .venv/bin/python .ci/fresh_clone.py [--keep]

1. ``git clone`` of this repository into a new temporary folder (only committed files; no data, no models);
2. ``.venv`` there: a new virtual environment that sees this checkout's installed packages (a ``.pth`` line)
   instead of downloading 6 GB again; ``run.sh`` still installs the project into it (editable), as for a user;
3. ``bash run.sh --quick --no-app`` with ``LANDMARK_DATA`` a generated 3-landmark data set and its output sent to
   a file (so progress must come as plain lines), no ``LANDMARK_NEGATIVES`` (as a user: the threshold is
   calibrated on the few photos the project ships, and the summary must say so);
4. the README's "Use it" block, line by line as printed, with ``.venv`` activated (:mod:`tests.firstrun`);
5. ``landmark-tagger`` from another folder.

Each step must succeed; exit status 1 otherwise, with the step's output. A few minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_dataset, make_photo  # noqa: E402
from firstrun import make_user_files, run_use_it  # noqa: E402


def fail(step: str, output: str) -> None:
    print(f"FAILED: {step}\n{output[-6000:]}", file=sys.stderr)
    raise SystemExit(1)


def thin_venv(clone: Path) -> None:
    """``clone/.venv``: this interpreter's base Python, with this environment's packages on its path."""
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip",
                    str(clone / ".venv")], check=True)
    (purelib,) = list((clone / ".venv" / "lib").glob("python3*/site-packages"))
    (purelib / "zz_packages_of_the_checkout.pth").write_text(site.getsitepackages()[0] + "\n")
    for data in ("share", "etc"):  # Jupyter's data and configuration (Voila's templates) live beside the packages
        if (Path(sys.prefix) / data).is_dir():
            (clone / ".venv" / data).symlink_to(Path(sys.prefix) / data)
    later = time.time() + 60  # newer than every file of the clone: setup_venv.sh sees the requirements installed
    for name in ("requirements-dev.txt", "requirements.txt"):
        stamp = clone / ".venv" / f".installed-{name}"
        stamp.touch()
        os.utime(stamp, (later, later))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="fresh_clone_"))
    clone, home, data = tmp / "landmark-tagger", tmp / "home", tmp / "photos"
    try:
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
        assert not (clone.parent / "shared").exists()
        thin_venv(clone)
        make_dataset(data, n_classes=3, n_train=10, n_test=4)
        home.mkdir()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LANDMARK_", "VIRTUAL_ENV", "PYTHON", "QUICK", "NO_APP", "FORCE", "PORT"))}
        env.update(HOME=str(home), LANDMARK_DATA=str(data), LANDMARK_CACHE=str(tmp / "cache"))

        log = tmp / "run.log"
        t0 = time.monotonic()
        with open(log, "w") as fh:
            proc = subprocess.run(["bash", "run.sh", "--quick", "--no-app"], cwd=clone, env=env, stdout=fh,
                                  stderr=subprocess.STDOUT, timeout=1200)
        text = log.read_text()
        print(f"run.sh --quick --no-app: exit {proc.returncode} in {time.monotonic() - t0:.0f} s")
        if proc.returncode != 0:
            fail("bash run.sh --quick --no-app", text)
        summary = text[text.find("[6/6] Summary"):]
        for expected in ("test accuracy on 12 photos", "knows 3 landmarks", "threshold 0.", "The app: http://"):
            if expected not in summary:
                fail(f"run.sh's summary lacks {expected!r}", text)
        if summary.count("calibrated on") + summary.count("UNCALIBRATED") < 2:
            fail("run.sh's summary does not say what calibrated each model's threshold", text)
        if "\r" in text:
            fail("run.sh's output sent to a file holds carriage returns (progress bars not turned into lines)", text)
        print("\n".join("  | " + line for line in summary.splitlines()))

        arch = tmp / "arch"
        arch.mkdir()
        new = [make_photo(arch / f"a{i}.jpg", 3, 700 + i) for i in range(5)]
        photos = sorted(p for p in (data / "test").rglob("*") if p.is_file())
        make_user_files(clone, home, photos, new)
        for ran in run_use_it(clone, home, env, limit=300):
            print(f"  {'ok' if ran.returncode == 0 else 'FAILED':6} {ran.seconds:5.0f} s  {ran.line}")
            if ran.returncode != 0:
                fail(ran.line, ran.output)

        anywhere = subprocess.run(["bash", "-c", f"source {clone}/.venv/bin/activate && cd / && landmark-tagger "
                                   f"predict --model {clone}/checkpoints/transfer_exported.pt {clone}/photo.jpg"],
                                  env=dict(env), capture_output=True, text=True, timeout=300)
        if anywhere.returncode != 0 or "=>" not in anywhere.stdout:
            fail("landmark-tagger predict from another folder", anywhere.stdout + anywhere.stderr)
        print("  ok            landmark-tagger predict ... (from /)")
        print(f"Fresh clone: run.sh --quick and the README's Use-it block passed in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
