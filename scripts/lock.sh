#!/usr/bin/env bash
# Regenerate requirements.lock: the exact version of every package, transitive ones included, that
# requirements-dev.txt (which includes requirements.txt) installs. scripts/setup_venv.sh (run.sh, test.sh) installs
# with it as constraints, so a machine set up next year gets what was tested.
#
#   bash scripts/lock.sh                 # a fresh virtual environment from requirements-dev.txt, then pip freeze
#   bash scripts/lock.sh --venv .venv    # freeze an existing environment instead (quick; only when it was installed
#                                        # from requirements-dev.txt and nothing else)
#
# Run it after changing requirements*.txt and commit requirements.lock with the change. The fresh install
# downloads torch and, on Linux, its CUDA libraries (4.1 GB installed; pip's cache makes a second run quick).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
venv=""
if [ "${1:-}" = "--venv" ]; then
    venv="${2:?--venv needs a folder}"
else
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    venv="$tmp/venv"
    echo "Creating a fresh environment in $venv and installing requirements-dev.txt into it ..."
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --upgrade pip
    "$venv/bin/python" -m pip install -r requirements-dev.txt
fi
py="$("$venv/bin/python" -c 'import platform, sys; print(f"Python {sys.version.split()[0]}, {platform.system()} {platform.machine()}")')"
out="requirements.lock.tmp"
{
    echo "# Exact versions of every package requirements-dev.txt installs (transitive ones included), frozen by"
    echo "# \`bash scripts/lock.sh\` on $py. Do not edit: change requirements*.txt and run it again."
    echo "# scripts/setup_venv.sh installs requirements*.txt with this file as constraints (pip install -c)."
    # The CUDA libraries torch pulls in on Linux only: marked so, the lock also installs on macOS and Windows.
    "$venv/bin/python" -m pip freeze --exclude-editable --exclude landmark-tagger | LC_ALL=C sort -f | \
        sed -E 's/^((nvidia-|cuda-|triton)[^;]*)$/\1 ; platform_system == "Linux"/'
} > "$out"
for pin in torch==2.14.1 torchvision==0.29.2; do
    grep -qx "$pin" "$out" || { echo "error: $pin is not what requirements-dev.txt installed; fix requirements.txt" >&2;
                                 rm -f "$out"; exit 1; }
done
mv "$out" requirements.lock
echo "Wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
