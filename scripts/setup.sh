#!/usr/bin/env bash
# Create .venv and install fracsight. Usage: scripts/setup.sh [run|test]
#   run  : inference only (no torch): enough for `fracsight predict`
#   test : everything the test suite needs (training extra with the local CPU torch wheel)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "$mode" = "test" ]; then
  # torch first and pinned: this version is the CPU wheel available on our machines; an
  # unpinned 'torch' would pull a multi-GB CUDA build.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[train,eval,test]"
else
  python -m pip install -q -e ".[eval]"
fi
