#!/usr/bin/env bash
# The learning-rate bracket of bench/plans/converged-scale.toml, on validation, seed 42, each run
# converged (max_epochs 50, patience 3): stage 1 of the 4-layer, 8-layer and joint models, reported
# on validation (the test split is never evaluated while choosing). Run it
# again to resume (a finished study is skipped, an interrupted run goes on from its last epoch).
# Choose per model the lr with the lowest stage-1 best validation PPL (table.json of each study,
# stage_1.best_val_ppl); a choice at the edge of its grid: add one more 3x step and run again.
# ASHEM's stage-2 bracket (stages.2.lr in {1e-4, 3e-4, 1e-3}) follows, with stage 1's chosen lr.
#
#   bash bench/lr_bracket.sh [STUDIES_DIR]      (default studies/lr-bracket)
set -euo pipefail
out=${1:-studies/lr-bracket}
data=${ASHEM_DATA:-../shared/data/wikitext-2-raw}
bracket() {  # config lr...
  local config=$1; shift
  for lr in "$@"; do
    ashem-engine study "bench/configs/$config.toml" --seeds 1 --quiet \
      --set "data.path=$data" --set "stages.1.lr=$lr" --set evaluation.sweep_points=0 \
      --set evaluation.split=validation \
      --dir "$out/$config-lr$lr"
  done
}
bracket converged-scratch-4 1e-3 3e-4 3e-3
bracket converged-scratch-8 5e-4 1.5e-4 1.5e-3
bracket converged-joint-4-8 5e-4 1.5e-4 1.5e-3
