#!/usr/bin/env bash
# Real MNIST at equal storage: each (method, ipc, param) in turn, full
# evaluation protocol (1000 epochs, DSA, 5 models) after a CPU-sized
# distillation budget.
#
#   benchmarks/mnist_distill.sh CONFIG ITERATIONS BATCH_REAL "IPCS" "PARAMS" [extra flags]
#   benchmarks/mnist_distill.sh configs/dm.py 400 64 "1 10" "pixels factors"
#   CONFIG_ARGS=method=dc benchmarks/mnist_distill.sh configs/gm.py 100 64 "1" "pixels factors"
#
# CONFIG_ARGS: more config arguments (comma-separated), after the others.
# DATASET: mnist (default) or fashion_mnist (the IDX archives of
# ../shared/datasets/$DATASET).
# Results: $ROOT/<ipc>_<param>/results.json (ROOT defaults to
# /tmp/lowrank_distill/$DATASET_<config name>).
set -euo pipefail
cd "$(dirname "$0")/.."
config=$1 iterations=$2 batch_real=$3 ipcs=$4 params=$5
shift 5
dataset=${DATASET:-mnist}
root=${ROOT:-/tmp/lowrank_distill/${dataset}_$(basename "$config" .py)}
python=${PYTHON:-python}
for ipc in $ipcs; do
  for param in $params; do
    "$python" launch/distill.py \
      --config="$config:dataset=$dataset,ipc=$ipc,param=$param,iterations=$iterations${CONFIG_ARGS:+,$CONFIG_ARGS}" \
      --config.dataset.source=idx \
      --config.dataset.path="../shared/datasets/$dataset" \
      --config.distill.batch_real="$batch_real" \
      --config.distill.eval_every=0 \
      --workdir="$root/${ipc}_${param}" "$@"
  done
done
