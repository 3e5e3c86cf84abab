#!/usr/bin/env bash
# Real MNIST at the storage of 1 image per class: MTT vs LoMTT vs MTT-LSS
# (configs/tm.py), one expert buffer for all three, full evaluation protocol
# (1000 epochs, DSA) after a CPU-sized distillation.
#
#   benchmarks/mnist_tm.sh [extra --config.* flags for the distillations]
#   ITERATIONS=100 SYN_STEPS=10 MODELS=3 benchmarks/mnist_tm.sh
#
# The buffer is configs/experts.py's MNIST setting (2 experts x 2 epochs,
# vmapped together), trained first unless $ROOT/experts holds it; each
# variant then distils into $ROOT/<variant> and evaluates MODELS models.
# ITERATIONS and SYN_STEPS (empty: the MNIST row of configs/tm.py) size the
# distillation; VARIANTS picks the variants; DATASET is mnist (default) or
# fashion_mnist (the IDX archives of ../shared/datasets/$DATASET, the same
# budget). Every step resumes where a killed run stopped. Results:
# $ROOT/<variant>/results.json (ROOT defaults to
# /tmp/lowrank_distill/$DATASET_tm).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
dataset=${DATASET:-mnist}
root=${ROOT:-/tmp/lowrank_distill/${dataset}_tm}
data=(--config.dataset.source=idx --config.dataset.path="../shared/datasets/$dataset")
"$python" launch/experts.py \
  --config=configs/experts.py:dataset="$dataset" "${data[@]}" \
  --workdir="$root/experts"
for variant in ${VARIANTS:-mtt lomtt mtt_lss}; do
  "$python" launch/distill.py \
    --config="configs/tm.py:dataset=$dataset,variant=$variant,iterations=${ITERATIONS:-0}" \
    "${data[@]}" \
    --config.experts.path="$root/experts" \
    ${SYN_STEPS:+--config.distill.syn_steps="$SYN_STEPS"} \
    --config.eval.num_models="${MODELS:-3}" \
    --config.eval.models_per_batch=1 \
    --workdir="$root/$variant" "$@"
done
