#!/usr/bin/env bash
# The main job: set up .venv, get and check the photos, train the scratch CNN and the transfer model,
# export both to TorchScript in checkpoints/, and serve the app on http://127.0.0.1:8866/.
# Data: $LANDMARK_DATA (a folder or zip in the course layout) if set, else the course download.
# A second run skips what is already done (FORCE=1 retrains).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_venv.sh requirements-dev.txt
PY=.venv/bin/python

$PY -m src data

if [ "${FORCE:-0}" = 1 ] || [ ! -f checkpoints/original_exported.pt ]; then
    $PY -m src train --arch scratch --out runs/scratch
    $PY -m src export --checkpoint runs/scratch/best.pt --out checkpoints/original_exported.pt
fi
if [ "${FORCE:-0}" = 1 ] || [ ! -f checkpoints/transfer_exported.pt ]; then
    $PY -m src train --arch efficientnet_lite0 --out runs/transfer
    $PY -m src export --checkpoint runs/transfer/best.pt --out checkpoints/transfer_exported.pt
fi

exec bash scripts/app.sh
