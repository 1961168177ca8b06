#!/usr/bin/env bash
# Serve the app (app.ipynb) as a web page with Voila on this machine only (127.0.0.1).
# Usage: bash scripts/app.sh            # http://127.0.0.1:8866/
#        PORT=9000 bash scripts/app.sh  # another port;  LANDMARK_MODEL=path.pt picks another exported model
# Extra arguments go to voila (e.g. --theme=dark).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8866}"
if [ ! -x .venv/bin/voila ]; then
    bash scripts/setup_venv.sh requirements-dev.txt
fi
echo "Landmark Tagger app: http://127.0.0.1:${PORT}/   (Ctrl+C stops it; PORT=NNNN picks another port)"
# Photos travel to the kernel over one websocket message: allow uploads far above tornado's 10 MiB default
# (an integer setting, which voila's command line cannot pass, hence launching it from Python).
exec .venv/bin/python -c '
import sys
from voila.app import Voila
Voila.launch_instance(sys.argv[1:], tornado_settings={"websocket_max_message_size": 512 * 1024 * 1024})
' app.ipynb --no-browser --Voila.ip=127.0.0.1 --port="${PORT}" --Voila.port_retries=0 "$@"
