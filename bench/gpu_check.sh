#!/usr/bin/env bash
# The one command of issue 13: the GPU check of the HAT kernels and the paper preset, from the repo root,
# without installing the package. Writes one markdown file: $OUT/gpu_check.md when $OUT is set (the GPU
# tool copies $OUT back), else the path given as the first argument (default gpu_check.md).
# Further arguments go to `python -m bench.gpu_check` (e.g. --data DIR, --dry-run). Exit status: the check's
# (0 ok, 1 a correctness check failed, 2 a section raised).
#   bash bench/gpu_check.sh                      # on the GPU machine, about 8 minutes
#   bash bench/gpu_check.sh /tmp/dry.md --dry-run
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${OUT:-}" ]; then
    dest="$OUT/gpu_check.md"
else
    dest="${1:-gpu_check.md}"
    [ $# -gt 0 ] && shift
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export GPU_CHECK_COMMAND="bash bench/gpu_check.sh $*"
nvidia-smi 2>/dev/null | head -15 || true
"${PYTHON:-python}" -m bench.gpu_check --out "$dest" "$@"
rc=$?
echo "gpu_check: exit $rc, table in $dest"
exit $rc
