#!/usr/bin/env bash
# Evaluations of the default recipe's 3 seeds (workdirs/sweeps/default, from
# `python -m cxr_lab.tools.sweep --config=configs/mobilenet.py --seeds=0,1,2
#  --root=workdirs/sweeps/default`): each seed with and without TTA and label-free
# adaptation, and the 3-seed ensemble; results in benchmarks/default_study/.
set -euo pipefail
root=workdirs/sweeps/default/mobilenet_v2
out=benchmarks/default_study
mkdir -p $out
py=.venv/bin/python
$py -m cxr_jax.tools.ensemble --workdir=workdirs/sweeps/default/ensemble \
  --members=$root/seed_0,$root/seed_1,$root/seed_2 --name=mobilenet_v2_x3
for w in $root/seed_0 $root/seed_1 $root/seed_2 workdirs/sweeps/default/ensemble; do
  name=$(basename $w)
  $py -m cxr_jax.tools.evaluate --workdir=$w --output=$out/${name}.json --adapt=prior
  $py -m cxr_jax.tools.evaluate --workdir=$w --output=$out/${name}_tta.json --tta
  $py -m cxr_jax.tools.evaluate --workdir=$w --output=$out/${name}_adabn.json --adapt=adabn+prior
done
