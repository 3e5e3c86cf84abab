#!/usr/bin/env bash
# One prepared check on a GPU host: correctness on the GPU backend, speed and
# memory against PyTorch, the published MNIST protocol (benchmarks/
# gpu_check.py says what each part writes). From the repository root:
#
#   benchmarks/gpu_check.sh --out=DIR [--mnist=DIR] [--wheels=DIR] [--budget=S]
#   benchmarks/gpu_check.sh --tiny --out=DIR      # every part on the CPU
#
# First installs what the host lacks, without reaching the network: the
# carried wheels in --wheels (default .whl; e.g. ml-collections) into a
# private folder, and this checkout itself without dependencies when Python
# cannot import it yet. Every other argument goes to gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
wheels=.whl
args=()
for arg in "$@"; do
  case $arg in
    --wheels=*) wheels=${arg#--wheels=} ;;
    *) args+=("$arg") ;;
  esac
done
if compgen -G "$wheels/*.whl" > /dev/null; then
  site=${TMPDIR:-/tmp}/gpu_check_site
  "$python" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl \
    || { echo "gpu_check: installing the wheels in $wheels failed" >&2; exit 2; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$python" -c "import lowrank_distill" 2> /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export GPU_CHECK_COMMIT=${GPU_CHECK_COMMIT:-$(git rev-parse HEAD 2> /dev/null)}
exec "$python" benchmarks/gpu_check.py --python="$python" "${args[@]}"
