"""A new user's first hour (issue 24): the README's "Use it" block as printed, the threshold's provenance with
every decision (UNCALIBRATED each time), the one rule at the threshold, ``enroll --location``, one-line errors
for bad model files in every command, and progress that suits a log.

Real files throughout: tiny exported models with their index (calibrated, fallback, none), generated photos,
real servers on loopback ports, the app's page served by Voila.
"""
from __future__ import annotations

import datetime
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from tqdm import tqdm

from conftest import make_dataset, make_photo
from firstrun import make_user_files, run_use_it, use_it_lines
from test_open_set import export_tiny, negatives_folder
from test_serve import running
from src.__main__ import main as cli
from src.app import LandmarkApp, certainty_words, classify_image_bytes
from src.calibrate import calibrate_model
from src.enroll import EnrollError, parse_location
from src.progress import LogLines
from src.recognizer import Recognizer, shown_pair
from src.serve import create_app

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A data set, and three exports of one tiny model: calibrated, with the fallback threshold, without index."""
    root = tmp_path_factory.mktemp("firstrun")
    data = make_dataset(root / "data", n_classes=3, n_train=10, n_test=4)
    classes = sorted(p.name for p in (data / "train").iterdir())
    models = {}
    for kind in ("calibrated", "fallback", "no_index"):
        (root / kind).mkdir()
        models[kind] = export_tiny(root / kind / "transfer_exported.pt", classes)
    calibrate_model(models["calibrated"], data, negatives_folder(root / "everyday"), progress=False)
    calibrate_model(models["fallback"], data, None, progress=False)
    photos = sorted(p for p in (data / "test").rglob("*") if p.is_file())
    return {"root": root, "data": data, "models": models, "photos": photos}


def new_landmark_photos(folder: Path, n: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [make_photo(folder / f"new_{i}.jpg", 3, 700 + i) for i in range(n)]


# ---- the README, as a user meets it -------------------------------------------------------------------------

def test_the_readme_use_it_block_runs_as_printed(world, tmp_path):
    """Every line of "Use it", in bash with .venv activated, in a copy of the project holding a tiny model."""
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed (the block's `tag --sidecar` needs it; .ci/run installs it)")
    if not (PROJECT_ROOT / ".venv" / "bin" / "voila").exists():
        pytest.skip("no .venv with voila (bash scripts/setup_venv.sh requirements-dev.txt)")
    root, home = tmp_path / "landmark-tagger", tmp_path / "home"
    root.mkdir()
    for name in ("README.md", "app.ipynb", "pyproject.toml"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    for name in ("src", "scripts"):
        shutil.copytree(PROJECT_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".venv").symlink_to(PROJECT_ROOT / ".venv")  # the packages run.sh installed; src/ is this copy's
    (root / "checkpoints").mkdir()
    model = world["models"]["calibrated"]
    for path in model.parent.glob("transfer_exported.*"):
        shutil.copy(path, root / "checkpoints" / path.name)
    make_user_files(root, home, world["photos"], new_landmark_photos(tmp_path / "arch"))

    results = run_use_it(root, home, limit=240)
    lines = use_it_lines((root / "README.md").read_text())
    assert [r.line for r in results] == lines and len(lines) >= 6
    for r in results:
        assert r.returncode == 0, f"`{r.line}` failed ({r.returncode}):\n{r.output[-3000:]}"
    by_command = {re.search(r"(predict|tag|report|enroll|serve|app\.sh|activate)", r.line).group(1): r.output
                  for r in results}
    assert "=>" in by_command["predict"] and "calibrated on" in by_command["predict"]
    assert "Threshold: threshold" in by_command["tag"] and (root / "tags.csv").is_file()
    assert (root / "library.html").is_file() and "calibrated on" in (root / "library.html").read_text()
    assert "Big Ben: 5 photos, London, United Kingdom, 51.5007 N, 0.1246 W" in by_command["enroll"]
    assert "Traceback" not in "".join(by_command.values())


def test_the_readme_names_no_folder_a_users_clone_lacks():
    for name in ("README.md",):
        assert "../shared" not in (PROJECT_ROOT / name).read_text(), name
    import nbformat

    for name in ("app.ipynb", "transfer_learning.ipynb", "cnn_from_scratch.ipynb"):
        text = "\n".join(c.source for c in nbformat.read(PROJECT_ROOT / name, as_version=4).cells
                         if c.cell_type == "markdown")
        assert "../shared" not in text, name


def test_run_sh_says_its_options_and_refuses_unknown_ones():
    help_text = subprocess.run(["bash", str(PROJECT_ROOT / "run.sh"), "--help"], capture_output=True, text=True,
                               timeout=30)
    assert help_text.returncode == 0 and "QUICK=1" in help_text.stdout and "NO_APP=1" in help_text.stdout
    wrong = subprocess.run(["bash", str(PROJECT_ROOT / "run.sh"), "--fast"], capture_output=True, text=True,
                           timeout=30)
    assert wrong.returncode == 2 and "unknown option --fast" in wrong.stderr


# ---- the threshold: where it comes from, with every decision ------------------------------------------------

def test_predict_says_where_the_threshold_comes_from_and_uncalibrated_with_every_verdict(world, capsys):
    photos = [str(p) for p in world["photos"][:3]]
    assert cli(["predict", *photos, "--model", str(world["models"]["calibrated"]), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("threshold 0.") and "calibrated on 10 everyday" in out and "UNCALIBRATED" not in out
    for kind in ("fallback", "no_index"):
        assert cli(["predict", *photos, "--model", str(world["models"][kind]), "-k", "2"]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0].startswith("threshold 0.90 is UNCALIBRATED")
        verdicts = [line for line in out.splitlines() if "=>" in line]
        assert len(verdicts) == 3 and all(line.endswith(", UNCALIBRATED") for line in verdicts)
    assert cli(["predict", photos[0], "--model", str(world["models"]["fallback"]), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["calibrated"] is False and record["threshold_source"].startswith("uncalibrated fallback")


def test_tag_summary_and_report_carry_the_threshold(world, tmp_path, capsys):
    out = tmp_path / "tags.csv"
    assert cli(["tag", str(world["data"] / "test"), "--model", str(world["models"]["fallback"]), "--out",
                str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"12 photos: 12 tagged .* in \d+ s", printed)
    assert "Threshold: threshold 0.90 is UNCALIBRATED" in printed
    assert cli(["report", str(out), "--out", str(tmp_path / "library.html")]) == 0
    assert "Threshold: threshold 0.90 is UNCALIBRATED" in capsys.readouterr().out
    page = (tmp_path / "library.html").read_text()
    note = re.search(r'<div id="threshold-note" class="([^"]*)">([^<]*)</div>', page)
    assert note and "lt-warn" in note.group(1) and "UNCALIBRATED" in note.group(2)


def test_the_service_answers_with_the_threshold_and_its_provenance(world, tmp_path):
    photo = world["photos"][0]
    for kind, calibrated in (("calibrated", True), ("fallback", False)):
        with running(create_app(world["models"][kind])) as url:
            info = httpx.get(url + "/v1/model").json()
            assert info["threshold"]["calibrated"] is calibrated and info["landmarks"] == 3
            assert ("UNCALIBRATED" in info["threshold"]["note"]) is not calibrated
            assert httpx.get(url + "/v1/landmarks").json()["threshold"] == info["threshold"]
            answer = httpx.post(url + "/v1/recognize", files=[("photos", (photo.name, photo.read_bytes()))]).json()
            assert answer["threshold"]["calibrated"] is calibrated
            assert answer["results"][0]["calibrated"] is calibrated


def test_the_app_says_uncalibrated_on_every_card(world):
    recognizer = Recognizer.load(world["models"]["fallback"])
    app = LandmarkApp(recognizer, model_path=world["models"]["fallback"])
    assert "UNCALIBRATED" in app.model_info.value
    app.upload.value = tuple({"name": p.name, "type": "image/jpeg", "size": p.stat().st_size,
                              "content": memoryview(p.read_bytes()), "last_modified": NOW} for p in world["photos"][:2])
    app.classify()
    texts = [card.children[1].children[0].value for card in app.cards.children]
    assert len(texts) == 2 and all("UNCALIBRATED threshold" in t for t in texts)
    calibrated = LandmarkApp(Recognizer.load(world["models"]["calibrated"]))
    assert "UNCALIBRATED" not in calibrated.model_info.value and "calibrated on" in calibrated.model_info.value


# ---- one rule at the threshold: confidence >= threshold is a landmark --------------------------------------

def test_a_confidence_exactly_at_the_threshold_is_a_landmark_everywhere(world, capsys):
    model, photo = world["models"]["fallback"], world["photos"][0]
    assert cli(["predict", str(photo), "--model", str(model), "--json"]) == 0
    p = json.loads(capsys.readouterr().out)["prob"]
    assert 0 < p < 1
    for threshold, status in ((p, "ok"), (round(p + 1e-6, 6), "no_known_landmark")):
        assert cli(["predict", str(photo), "--model", str(model), "--json", "--min-prob", str(threshold)]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["status"] == status and record["threshold"] == threshold
        assert (record["prob"] >= record["threshold"]) is (status == "ok")
        result = classify_image_bytes(Recognizer.load(model), photo.name, photo.read_bytes(), threshold=threshold)
        assert result["known"] is (status == "ok")
    assert certainty_words(p, p)[0] == "at the threshold: check it"
    with running(create_app(model)) as url:
        answer = httpx.post(url + "/v1/recognize", params={"min_prob": p},
                            files=[("photos", (photo.name, photo.read_bytes()))]).json()
    assert answer["results"][0]["status"] == "ok" and answer["threshold"]["source"] == "set by hand"


def test_confidence_and_threshold_are_shown_with_the_digits_that_tell_them_apart():
    assert shown_pair(0.8996, 0.9) == ("0.8996", "0.9000")
    assert shown_pair(0.9, 0.9) == ("0.90", "0.90")
    assert shown_pair(0.95, 0.9) == ("0.95", "0.90")
    assert shown_pair(0.90000004, 0.9, digits=1, percent=True) == ("90.0%", "90.0%")  # equal to 6 decimals
    assert shown_pair(0.899999, 0.9, digits=1, percent=True) == ("89.9999%", "90.0000%")


# ---- enrol with a place -------------------------------------------------------------------------------------

def test_location_is_parsed_as_a_person_writes_it():
    assert parse_location("Big Ben, London, United Kingdom, 51.5007, -0.1246") == {
        "name": "Big Ben", "city": "London", "country": "United Kingdom", "lat": 51.5007, "lon": -0.1246}
    assert parse_location("Namdaemun, Seoul, Korea, Republic of, 37.5597, 126.9752")["country"] == \
        "Korea, Republic of"
    for bad, why in (("Big Ben, London, 51.5", "expected"), ("Big Ben, London, UK, north, 0.1", "numbers"),
                     ("Big Ben, London, UK, 95, 0.1", r"\[-90, 90\]")):
        with pytest.raises(EnrollError, match=why):
            parse_location(bad)


def test_enroll_gives_a_place_with_location_and_warns_for_each_landmark_without_one(world, tmp_path, capsys):
    model = tmp_path / "m.pt"
    for path in world["models"]["calibrated"].parent.glob("transfer_exported.*"):
        shutil.copy(path, tmp_path / path.name.replace("transfer_exported", "m"))
    one = tmp_path / "one"
    new_landmark_photos(one / "train" / "07.Big_Ben")
    location = "Big Ben, London, United Kingdom, 51.5007, -0.1246"
    assert cli(["enroll", "--model", str(model), "--data-dir", str(one), "--location", location]) == 0
    out, err = capsys.readouterr()
    assert "Big Ben: 5 photos, London, United Kingdom, 51.5007 N, 0.1246 W" in out and "warning" not in err
    two = tmp_path / "two"
    new_landmark_photos(two / "train" / "08.Arch_One")
    new_landmark_photos(two / "train" / "09.Arch_Two")
    assert cli(["enroll", "--model", str(model), "--data-dir", str(two), "--location", location]) == 1
    assert "--location gives the place of one landmark" in capsys.readouterr().err
    assert cli(["enroll", "--model", str(model), "--data-dir", str(two)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" has no place")[0] for line in err] == ["warning: Arch One", "warning: Arch Two"]
    assert all("--location" in line for line in err)
    assert cli(["enroll", "--model", str(model), "--list"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"Big Ben .*London, United Kingdom", listed)
    assert re.search(r"Arch One .*NO PLACE", listed) and "6 landmarks (retrieval), 5 without a place" in listed


# ---- bad model files: one line, every command ---------------------------------------------------------------

COMMANDS = {
    "predict": lambda m, w: ["predict", str(w["photos"][0]), "--model", m],
    "tag": lambda m, w: ["tag", str(w["data"] / "test"), "--model", m, "--out", str(w["root"] / "bad_tags.csv")],
    "enroll": lambda m, w: ["enroll", "--model", m, "--list"],
    "calibrate": lambda m, w: ["calibrate", "--model", m, "--data-dir", str(w["data"]), "--negatives", "none"],
    "evaluate": lambda m, w: ["evaluate", "--model", m, "--data-dir", str(w["data"])],
    "serve": lambda m, w: ["serve", "--model", m, "--port", "0"],
}


@pytest.fixture(scope="module")
def bad_models(world) -> dict[str, Path]:
    folder = world["root"] / "bad"
    folder.mkdir()
    good = world["models"]["calibrated"]
    damaged = folder / "damaged.pt"
    damaged.write_bytes(good.read_bytes()[:3000])
    bad_index = folder / "bad_index.pt"
    shutil.copy(good, bad_index)
    (folder / "bad_index.index.npz").write_bytes(good.with_suffix(".index.npz").read_bytes()[:500])
    return {"missing": folder / "nope.pt", "damaged": damaged, "damaged index": bad_index}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_a_bad_model_file_in_one_line(command, world, bad_models, capsys):
    for kind, path in bad_models.items():
        if command == "calibrate" and kind == "damaged index":
            continue  # calibrate writes a new index: the damaged one is what it replaces
        assert cli(COMMANDS[command](str(path), world)) == 1, (command, kind)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and str(path.name).split(".")[0] in err[0], \
            (command, kind, err)


def test_serve_with_a_wrong_path_is_one_line_and_debug_shows_the_traceback(world):
    args = [sys.executable, "-m", "src", "serve", "--model", "no/such/model.pt", "--port", "0"]
    proc = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: no/such/model.pt: no such file (export one with: python -m src export --checkpoint "
        "runs/NAME/best.pt)"]
    proc = subprocess.run(args[:3] + ["--debug"] + args[3:], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr


# ---- progress in a log --------------------------------------------------------------------------------------

def test_progress_bars_become_plain_lines_in_a_log():
    log = io.StringIO()
    stream = LogLines(log, every=3600)
    outer = tqdm(range(2), file=stream, desc="Epochs", mininterval=0)
    for _ in outer:
        for _ in tqdm(range(50), file=stream, desc="Epoch train", leave=False, mininterval=0):
            pass
        tqdm.write("error: one bad photo", file=stream)
    outer.close()
    print("done", file=stream)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert lines.count("error: one bad photo") == 2 and lines[-1] == "done"
    assert sum(line.startswith("Epochs: 100%|") for line in lines) == 1
    assert sum(line.startswith("Epoch train: 100%|") for line in lines) == 2
    assert len(lines) <= 6  # 50 redraws of each inner bar are not in it


def test_tag_in_a_log_keeps_plain_lines_and_its_summary(world, tmp_path):
    out = tmp_path / "tags.csv"
    proc = subprocess.run([sys.executable, "-m", "src", "tag", str(world["data"] / "test"), "--model",
                           str(world["models"]["calibrated"]), "--out", str(out)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and re.search(r"^Tagging .*: 100%\|", proc.stderr, re.M)
    assert re.search(r"^12 photos: 12 tagged", proc.stdout, re.M) and "Threshold: threshold" in proc.stdout
