#!/usr/bin/env bash
# The recipe study on a lent GPU machine (the device tool), as one prepared command:
#   bash benchmarks/gpu_study.sh MINUTES CONFIG [CONFIG ...]
# Carried: .whl/ (flax, optax, orbax-checkpoint, ml-collections wheels, the versions of
# requirements.txt; the machine's own JAX), .carry/chest_xray and .carry/weights.
# Trains 3 seeds of each config (recipe-major) until MINUTES have passed, then packs the
# compacted workdirs, sweep.json and SWEEP.md into $OUT (split to the tool's file sizes).
set -uo pipefail
minutes=$1; shift
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
mkdir -p data weights
ln -sfn "$PWD/.carry/chest_xray" data/chest_xray
cp .carry/weights/*.h5 weights/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, orbax.checkpoint as o, sklearn; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__)"
args=()
for c in "$@"; do args+=("--config=$c"); done
root=/tmp/study
timeout $((minutes * 60 + ${GRACE_S:-150})) python3 -m cxr_lab.tools.sweep "${args[@]}" --seeds=0,1,2 \
  --root=$root --set=data.source=folder --deadline_minutes="$minutes" --compact \
  --compilation_cache=/tmp/jax_cache 2>&1 | grep -v "^W0000\|^I0000" | tee "$OUT/study.log" \
  | grep -E "Sweep:|Epoch|Done|Error|error|Traceback|Cached|compil" | cut -c1-220
cp $root/SWEEP.md $root/sweep.json "$OUT/" 2>/dev/null
find $root -name tensorboard -type d -prune -exec rm -rf {} +
tar cf - -C $root . | split -b 15M - "$OUT/workdirs.tar.part-"
ls -la "$OUT"; echo "total seconds: $(( $(date +%s) - start ))"
