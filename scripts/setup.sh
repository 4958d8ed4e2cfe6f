#!/usr/bin/env bash
# Create .venv and install fracsight. Usage: scripts/setup.sh [run|serve|cluster|test]
#   run     : inference only (no torch): enough for `fracsight predict`
#   serve   : inference, the web service and the DICOM node (`fracsight serve`, `fracsight dicom-node`)
#   cluster : inference and Ray Data, for `fracsight batch` (run it on every node of a Ray cluster)
#   test    : everything the test suite needs (training extra with the local CPU torch wheel)
# Safe to run again: an existing .venv is reused and brought up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
case "$mode" in
  run | serve | cluster | test) ;;
  *) echo "usage: scripts/setup.sh [run|serve|cluster|test] (got '$mode')" >&2; exit 2 ;;
esac
# Checked before .venv exists, so a too-old python3 leaves nothing half-made behind.
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup.sh: fracsight needs Python >= 3.10; python3 is $(python3 -V 2>&1)" >&2
  exit 1
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "$mode" = "test" ]; then
  # torch first and pinned: this version is the CPU wheel available on our machines; an
  # unpinned 'torch' would pull a multi-GB CUDA build.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[train,eval,serve,dicom,cluster,test]"
elif [ "$mode" = "serve" ]; then
  python -m pip install -q -e ".[eval,serve,dicom]"
elif [ "$mode" = "cluster" ]; then
  python -m pip install -q -e ".[eval,cluster]"
else
  python -m pip install -q -e ".[eval]"
fi
