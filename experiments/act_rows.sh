#!/usr/bin/env bash
# The ACT result rows (issue 12): a model without ACT, with the searched heads (faithful and
# strict rules), and the two controls (3 draws of random heads with the same count per layer
# as each rule; all eligible heads), each scored on the Rotten Tomatoes test split. Resumable: the search
# continues its search.jsonl, and finished evaluations are skipped.
#
#   experiments/act_rows.sh zero-shot MODEL DRAW OUT     # e.g. smollm2-135m 0 act_results/zs-smollm2/draw0
#   experiments/act_rows.sh adapter RUN OUT              # e.g. runs/grid/rt_converge/lora-seed0 act_results/conv-lora/seed0
#   experiments/act_rows.sh cell GRID VARIANT SEED OUT   # e.g. experiments/grids/rt_converge.yaml lora 2 act_results/conv-lora/seed2
#
# `cell` first trains (or resumes) the grid cell in runs/ even where it is archived: the archive keeps
# results, not adapters (3.7 MB each), and runs/ is gone in a fresh checkout.
#
# Then: .venv/bin/python experiments/act_report.py act_results   (the table with McNemar tests)
# Rows made alongside each other ran one 1-thread process each (OMP_NUM_THREADS=1, the default here).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1
BIN=.venv/bin
kind=$1
if [ "$kind" = zero-shot ]; then
  model=$2; draw=$3; out=$4
  target=(--model "$model"); calib=(--model "$model" --data rotten_tomatoes --seed "$draw")
else
  if [ "$kind" = cell ]; then
    grid=$2; variant=$3; seed=$4; out=$5
    $BIN/python experiments/grid.py "$grid" --only "$variant" --seeds "$seed" --ignore-archive > /dev/null
    run=$($BIN/python -c "import sys; sys.path.insert(0, 'eval'); from grid import cell_dir, load_grid
print(cell_dir(load_grid(sys.argv[1]), sys.argv[2], int(sys.argv[3])))" "$grid" "$variant" "$seed")
  else
    run=$2; out=$3
  fi
  target=(--adapter "$run"); calib=(--adapter "$run")
fi
mkdir -p "$out"
archived=docs/results_data/act/${out#act_results/}
if [ "$kind" = zero-shot ] && [ -d "$archived" ]; then
  # a fresh checkout has no act_results/: go on from the archived row (experiments/act_report.py --archive),
  # its finished evaluations and its search log (whose lines are re-scored if the model's setup differs).
  # Not for adapter rows: a retrained adapter may differ, and its evaluations must be its own.
  cp -rn "$archived"/. "$out"/
fi
evaluate() {  # $1: output name, then extra eval flags
  local name=$1; shift
  [ -f "$out/$name.json" ] || $BIN/afa-llm eval "${target[@]}" --data rotten_tomatoes --split test --no-progress \
      --output "$out/$name.json" "$@" > /dev/null
}
calibrate() { $BIN/afa-llm calibrate "${calib[@]}" --calibration-size 500 --output "$out" --bf16 --resume --no-progress \
    --workers "${ACT_WORKERS:-1}" "$@"; }  # ACT_WORKERS=2 on an otherwise idle 2-core machine
evaluate test
calibrate
evaluate test-act --act "$out/act.json"
calibrate --rule strict
evaluate test-act-strict --act "$out/act-strict.json"
for k in 0 1 2; do  # the strict rule's own control: random heads with its (smaller) count per layer
  calibrate --rule strict --attention-heads random --draw "$k"
  evaluate "test-act-strict-random-$k" --act "$out/act-strict-random-$k.json"
done
for k in 0 1 2; do
  calibrate --attention-heads random --draw "$k"
  evaluate "test-act-random-$k" --act "$out/act-random-$k.json"
done
calibrate --attention-heads all
evaluate test-act-all --act "$out/act-all.json"
echo "done: $out"
