"""Temporaries that writers killed mid-write (SIGKILL) left beside photos are swept once per ``tag`` run: ours only
(by name), of dead processes, old enough; anything else beside the photos stays."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import make_photo
from src.__main__ import main as cli
from src.helpers import is_our_temporary, sweep_stale_temporaries
from src.predictor import Predictor, export_torchscript
from test_tagging import CLASSES, MEAN, STD, TinyNet

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KILLED_WRITER = """
import os, shutil, signal, sys
from pathlib import Path
from src.helpers import atomic_path
from src.metadata import _temporary_beside
photo = Path(sys.argv[1])
for target in (photo, photo.with_name(photo.name + ".xmp")):   # an in-photo write and a sidecar write
    tmp = _temporary_beside(target)
    shutil.copyfile(photo, tmp)
    print(tmp, flush=True)
print(str(tmp) + "_exiftool_tmp", flush=True)                   # ExifTool's own, killed rewriting ours
Path(str(tmp) + "_exiftool_tmp").write_bytes(b"half")
with atomic_path(photo.parent / "tags.csv") as tmp:             # a CSV write
    tmp.write_text("path,status\\n")
    print(tmp, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_writer_leftovers(photo: Path) -> list[Path]:
    """Run our writers in a process and SIGKILL it mid-write: the temporaries it leaves, named by our code."""
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(photo)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    left = [Path(line) for line in done.stdout.split()]
    assert len(left) == 4 and all(p.exists() for p in left)
    return left


def age(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_temporary_names_are_recognised_and_nothing_else():
    assert is_our_temporary(".IMG_1.jpg.123.abcd1234.tmp.jpg") == (True, 123)
    assert is_our_temporary(".IMG_1.jpg.xmp.abcd1234.tmp.xmp") == (True, None)  # before names had the PID
    assert is_our_temporary(".IMG_1.jpg.123.abcd1234.tmp.jpg_exiftool_tmp") == (True, 123)
    assert is_our_temporary(".tags.csv.4567.k2_x9zq0.tmp") == (True, 4567)
    for other in (".IMG_1.jpg.abcd1234.tmp.png", ".notes.abcd1234.tmp", ".IMG_1.jpg.bak", "IMG_1.jpg",
                  ".IMG_1.jpg.123.abcd1234.tmp.jpg.part", ".x.123.ABCD1234.tmp"):
        assert not is_our_temporary(other)[0], other


def test_tag_sweeps_what_killed_writers_left(tmp_path):
    library = tmp_path / "photos"
    (library / "trip").mkdir(parents=True)
    photo = make_photo(library / "trip" / "IMG_1.jpg", 0, 1)
    make_photo(library / "IMG_2.jpg", 1, 2)
    old_left = [age(p, 2 * 3600) for p in killed_writer_leftovers(photo)]
    young_left = killed_writer_leftovers(library / "IMG_2.jpg")  # a minute ago: maybe a slow writer elsewhere
    live = photo.with_name(f".IMG_1.jpg.{os.getpid()}.abcd1234.tmp.jpg")  # this process: a writer still alive
    live.write_bytes(b"being written")
    theirs = [library / "trip" / ".IMG_1.jpg.bak", library / "trip" / ".notes.abcd1234.tmp",
              library / ".hidden" / ".IMG_9.jpg.99999999.abcd1234.tmp.jpg"]  # not ours, or in a hidden folder
    (library / ".hidden").mkdir()
    for path in theirs:
        path.write_bytes(b"someone else's")
    for path in [live, *theirs]:
        age(path, 5 * 3600)

    model = tmp_path / "model.pt"
    export_torchscript(Predictor(TinyNet(), CLASSES, MEAN, STD, img_size=32, arch="scratch"), model)
    assert cli(["tag", str(library), "--model", str(model), "--out", str(tmp_path / "tags.csv")]) == 0
    assert not any(p.exists() for p in old_left)
    assert all(p.exists() for p in young_left + [live] + theirs)
    assert (tmp_path / "tags.csv").read_text().count("\n") == 3  # header + the two photos, no temporary tagged
    # without the age guard, the young ones of the dead writer go too; the live writer's and the others' stay
    assert sorted(sweep_stale_temporaries(library, older_than_s=0)) == sorted(young_left)
    assert all(p.exists() for p in [live, *theirs])
