#!/usr/bin/env bash
# run-h100-8: three fine-tunings of the shipped agentkit-tiny (run-cpu-5) on data v13 (100k v12-recipe episodes)
set -uo pipefail
c="RESUME=runtime/weights/agentkit-tiny DATA=.train_carry/data13 TRAIN_MINUTES=${TM:-7.0} COPY_ROWS=300 EVAL_HELDOUT=0 WARMUP=20"
OUT=$OUT bash scripts/train-tiny-variants "g:$c MIX=.train_carry/data8t LR=1e-3 BATCH=32 SEED=91" \
  "h:$c MIX=.train_carry/data8t LR=4e-4 BATCH=32 SEED=92" "i:$c LR=1e-3 BATCH=48 SEED=93"
ls -la $OUT/*
