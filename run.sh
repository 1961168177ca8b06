#!/usr/bin/env bash
# The main job: set up .venv, get and check the photos, train the scratch CNN and the transfer model, export both
# (TorchScript + ONNX, with their landmark index and threshold) to checkpoints/, say what came out, and serve the
# app on http://127.0.0.1:8866/.
#   Data: $LANDMARK_DATA (a folder or zip in the course layout) if set, else the course download.
#   Photos without landmarks for the threshold: $LANDMARK_NEGATIVES, else the few in src/calibration_photos
#   (LANDMARK_NEGATIVES=none: an uncalibrated fallback threshold, which every decision then says).
#   The transfer model is an ensemble of MEMBERS (default 3) EfficientNet-Lite0 trained on one training/validation
#   split with different seeds (MEMBERS=1: one model); tag runs at 0.73x one model's speed (docs/open_set.md).
#   A second run skips what is already done; FORCE=1 retrains.
#   QUICK=1 or --quick: one epoch per model, a smoke run (the models are poor; a later full run retrains them).
#   NO_APP=1 or --no-app: stop after the summary instead of serving the app (which runs until Ctrl+C).
# Output sent to a file gets plain progress lines (one per bar every 30 s) instead of redrawn bars.
set -euo pipefail
cd "$(dirname "$0")"
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --no-app) NO_APP=1 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown option $arg (--quick, --no-app, --help)" >&2; exit 2 ;;
    esac
done
QUICK="${QUICK:-0}"; NO_APP="${NO_APP:-0}"; FORCE="${FORCE:-0}"; MEMBERS="${MEMBERS:-3}"
case "$MEMBERS" in
    ''|*[!0-9]*|0) echo "run.sh: MEMBERS must be a whole number of models, 1 or more (got '$MEMBERS')" >&2; exit 2 ;;
esac
PY=.venv/bin/python
STAGES=6
started=$SECONDS
stage_started=$SECONDS

took() {  # seconds -> "2 min 05 s"
    local s=$1
    if [ "$s" -ge 60 ]; then printf '%d min %02d s' $((s / 60)) $((s % 60)); else printf '%d s' "$s"; fi
}
stage() {  # number, title, what it does and how long it takes
    if [ "$1" -gt 1 ]; then echo "   ... done in $(took $((SECONDS - stage_started)))"; fi
    stage_started=$SECONDS
    printf '\n[%s/%s] %s\n' "$1" "$STAGES" "$2"
    printf '      %s\n' "$3"
}

quick_marker=runs/.quick-run  # the models in checkpoints/ came from a QUICK run: a full run retrains them
if [ "$QUICK" = 1 ]; then
    FORCE=1
    EPOCHS=(--epochs 1)
    echo "QUICK run: one epoch per model; its models are poor (a smoke test), and a later full run retrains them."
else
    EPOCHS=()
    if [ -f "$quick_marker" ]; then
        echo "The models in checkpoints/ come from a QUICK run: training them properly now."
        FORCE=1
    fi
fi
if [ "$QUICK" = 1 ]; then
    SCRATCH_TIME="1 epoch (QUICK run)"
    TRANSFER_TIME="1 epoch (QUICK run)"
else  # measured on a quiet 2-core CPU (the development machine, 2026-11-30)
    SCRATCH_TIME="30 epochs: about 11 min for the 821 development photos on a quiet 2-core CPU; the course set has six times as many"
    TRANSFER_TIME="15 epochs a member: about 3 min 20 s for the 3 members on the 821 development photos on a quiet 2-core CPU (2026-12-03)"
fi

stage 1 "Python environment (.venv)" \
    "Installs the pinned packages the first time (about 6 GB; minutes, mostly the download), then the project itself."
bash scripts/setup_venv.sh requirements-dev.txt

stage 2 "Photos" \
    "Finds the photos (\$LANDMARK_DATA, else downloads the course set, about 1 GB) and checks every one (28 s for the 1,025 development photos on a busy 2-core CPU)."
$PY -m src data

if [ "$FORCE" = 1 ] || [ ! -f checkpoints/original_exported.pt ]; then
    stage 3 "Training the CNN from scratch (runs/scratch)" \
        "$SCRATCH_TIME."
    $PY -m src train --arch scratch --out runs/scratch "${EPOCHS[@]}"
    $PY -m src export --checkpoint runs/scratch/best.pt --out checkpoints/original_exported.pt
else
    stage 3 "CNN from scratch" "checkpoints/original_exported.pt exists: kept (FORCE=1 retrains)."
fi

if [ "$FORCE" = 1 ] || [ ! -f checkpoints/transfer_exported.pt ]; then
    stage 4 "Training the transfer model: $MEMBERS x EfficientNet-Lite0 (runs/transfer, runs/transfer_seed1, ...)" \
        "$TRANSFER_TIME. The members share one validation split (--split-seed 42) and differ by --seed."
    members=()
    for i in $(seq 0 $((MEMBERS - 1))); do
        if [ "$i" = 0 ]; then out=runs/transfer; seed=42; else out=runs/transfer_seed$i; seed=$i; fi
        $PY -m src train --arch efficientnet_lite0 --seed "$seed" --split-seed 42 --out "$out" "${EPOCHS[@]}"
        members+=("$out/best.pt")
    done
    stage 5 "Exporting it with its landmark index and threshold (checkpoints/transfer_exported.pt)" \
        "TorchScript + ONNX, every training photo embedded, the threshold calibrated on held-out photos, then the test photos scored (25 s for the development set on a quiet 2-core CPU)."
    $PY -m src export --checkpoint "${members[@]}" --out checkpoints/transfer_exported.pt
    $PY -m src evaluate --model checkpoints/transfer_exported.pt --json runs/transfer/exported_test.json >/dev/null
else
    stage 4 "Transfer model" "checkpoints/transfer_exported.pt exists: kept (FORCE=1 retrains)."
    stage 5 "Export" "nothing to do."
fi
if [ "$QUICK" = 1 ]; then touch "$quick_marker"; else rm -f "$quick_marker"; fi

stage 6 "Summary" "What was made, how good it is and how it decides."
APP_URL="http://127.0.0.1:${PORT:-8866}/"
$PY - "$APP_URL" "$NO_APP" <<'EOF'
import json
import sys
from pathlib import Path

from src.recognizer import Recognizer

url, no_app = sys.argv[1], sys.argv[2] == "1"
for title, metrics_file, model in (
        ("CNN from scratch", "runs/scratch/test_metrics.json", "checkpoints/original_exported.pt"),
        ("Transfer model", "runs/transfer/exported_test.json", "checkpoints/transfer_exported.pt")):
    try:
        metrics = json.loads(Path(metrics_file).read_text())
        accuracy = (f"{metrics.get('test_acc', metrics.get('accuracy')):.1%} test accuracy on "
                    f"{metrics.get('n_test', metrics.get('count'))} photos")
    except (OSError, ValueError, KeyError, TypeError):
        accuracy = "test accuracy not recorded"
    try:
        recognizer = Recognizer.load(model)
        print(f"  {title}: {model} ({recognizer.backend.arch})\n      {accuracy}; knows {len(recognizer.classes())} landmarks "
              f"({recognizer.method})\n      {recognizer.threshold_note()}")
    except Exception as exc:  # a summary line, not a traceback
        print(f"  {title}: {model}: cannot be loaded ({' '.join(str(exc).split())[:200]})")
print(f"  Use them: source .venv/bin/activate, then e.g. landmark-tagger predict --model "
      f"checkpoints/transfer_exported.pt photo.jpg (README, \"Use it\")")
print(f"  The app: {url}" + (" (not started: NO_APP=1; bash scripts/app.sh starts it)" if no_app else ""))
EOF
echo "   ... all done in $(took $((SECONDS - started)))"

if [ "$NO_APP" = 1 ]; then
    exit 0
fi
echo
exec bash scripts/app.sh
