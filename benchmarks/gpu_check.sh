#!/usr/bin/env bash
# GPU check of trl-search (one GPU, a few minutes). From the repository root:
#   bash benchmarks/gpu_check.sh            # (a) plain, (b) DeepSpeed ZeRO-2, (c) ZeRO-3, each with stock GRPOTrainer
#   bash benchmarks/gpu_check.sh --quick    # plain only, fewer steps
#   bash benchmarks/gpu_check.sh --cpu-smoke  # the same stages on CPU with a tiny model (checks the script itself)
# Needs: torch with CUDA, transformers, accelerate, peft; trl, datasets, deepspeed, bm25s... come from the wheels in
# benchmarks/wheels (benchmarks/gpu_check_wheels.sh fetches them), installed with --no-deps into $WORK/site, never over the system.
# Each stage runs in its own process with a time limit; a failed stage is reported and the others still run.
set -euo pipefail

cd "$(dirname "$0")/.."
QUICK=0
SMOKE=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --cpu-smoke) SMOKE=1 ;;
    *) echo "unknown option: $arg (use --quick or --cpu-smoke)" >&2; exit 2 ;;
  esac
done

WORK="${GPU_CHECK_DIR:-/tmp/trl-search-gpu-check}"
RESULTS="$WORK/results"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false TRL_EXPERIMENTAL_SILENCE=1
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
START=$SECONDS

note() { echo "[gpu_check +$((SECONDS - START))s] $*"; }

# The whole run stays under 8 minutes: each stage gets at most what is left of BUDGET (the summary needs a few seconds).
BUDGET="${GPU_CHECK_BUDGET:-460}"

# run_stage NAME TIMEOUT COMMAND...: records "ok (Ns)" or "FAILED ..." in $RESULTS/NAME.status; never exits the script
run_stage() {
  local name="$1" limit="$2"
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 30 ]; then
    echo "SKIPPED: out of time" > "$RESULTS/$name.status"
    note "stage $name: skipped, ${left}s left of the ${BUDGET}s budget"
    return 0
  fi
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  note "stage $name: $*"
  local begin=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "ok ($((SECONDS - begin))s)" > "$RESULTS/$name.status"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "FAILED: timeout ${limit}s" > "$RESULTS/$name.status"
  else
    echo "FAILED: exit $rc" > "$RESULTS/$name.status"
  fi
  note "stage $name: $(cat "$RESULTS/$name.status")"
  if [ "$rc" -ne 0 ]; then
    tail -n 25 "$RESULTS/$name.log" | sed "s/^/    [$name] /"
  fi
  return 0
}

if [ "$SMOKE" -eq 1 ]; then
  MODEL="$WORK/model-tiny"
  TRAIN_ARGS=(--steps 2 --batch 4 --num_generations 2 --tokens_per_turn 16 --completion_length 160 --cpu)
  DEVICE_ENV=(env CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1)
  LIMIT=300
  BUDGET="${GPU_CHECK_BUDGET:-900}"
  note "CPU smoke run: installer in dry-run mode (the wheels are for Python 3.12)"
  "$PYTHON" benchmarks/gpu_check.py install --target "$WORK/site" --dry-run || note "installer plan failed"
  "$PYTHON" benchmarks/gpu_check.py build-model --out "$MODEL" --tiny
else
  MODEL="$WORK/model-qwen2.5-0.5b-shape"
  if [ "$QUICK" -eq 1 ]; then STEPS=3; else STEPS=4; fi
  TRAIN_ARGS=(--steps "$STEPS" --batch 32 --num_generations 8 --tokens_per_turn 64 --completion_length 512)
  DEVICE_ENV=(env)
  LIMIT=150
  run_stage install 120 "$PYTHON" benchmarks/gpu_check.py install --target "$WORK/site"
  "$PYTHON" - <<'EOF' || note "import check failed: see above"
import importlib
for name in ("torch", "transformers", "accelerate", "trl", "datasets", "deepspeed", "bm25s", "peft", "trl_search"):
    try:
        module = importlib.import_module(name)
        print(f"  {name:<12} {getattr(module, '__version__', '?')}")
    except Exception as error:  # noqa: BLE001 - report every missing piece, then go on
        print(f"  {name:<12} NOT IMPORTABLE: {error}")
import torch
print(f"  cuda: {torch.cuda.is_available()} {torch.cuda.get_device_name() if torch.cuda.is_available() else ''}")
EOF
  "$PYTHON" benchmarks/gpu_check.py build-model --out "$MODEL"
fi

# The stock trainer generates, in one go, as many tokens per completion as our multi-turn rollout sampled.
sampled_tokens() {
  "$PYTHON" -c "import json,sys; print(max(16, round(json.load(open(sys.argv[1]))['sampled_tokens'])))" "$1" \
    2>/dev/null || echo 192
}

STAGES=()
run_pair() {  # run_pair STAGE LAUNCHER...: ours then stock under the same launcher
  local stage="$1"
  shift
  STAGES+=("$stage" "stock-$stage")
  run_stage "$stage" "$LIMIT" "${DEVICE_ENV[@]}" "$@" benchmarks/gpu_check.py train --trainer search \
    --model "$MODEL" --result "$RESULTS/$stage.json" "${TRAIN_ARGS[@]}"
  local tokens
  tokens=$(sampled_tokens "$RESULTS/$stage.json")
  run_stage "stock-$stage" "$LIMIT" "${DEVICE_ENV[@]}" "$@" benchmarks/gpu_check.py train --trainer stock \
    --model "$MODEL" --result "$RESULTS/stock-$stage.json" "${TRAIN_ARGS[@]}" --completion_length "$tokens"
}

ACCELERATE=("$PYTHON" -m accelerate.commands.launch --num_processes 1 --num_machines 1 --main_process_port 0)
run_pair plain "$PYTHON"
if [ "$QUICK" -eq 0 ]; then
  MIXED=(--mixed_precision bf16)
  if [ "$SMOKE" -eq 1 ]; then MIXED=(--mixed_precision no); fi
  run_pair zero2 env TRL_SEARCH_SKIP_DS_SHM_OP=1 "${ACCELERATE[@]}" "${MIXED[@]}" \
    --config_file examples/accelerate_configs/zero2.yaml
  run_pair zero3 env TRL_SEARCH_SKIP_DS_SHM_OP=1 "${ACCELERATE[@]}" "${MIXED[@]}" \
    --config_file examples/accelerate_configs/zero3.yaml
fi

STAGE_LIST=$(IFS=,; echo "${STAGES[*]}")
"$PYTHON" benchmarks/gpu_check.py summary --results "$RESULTS" --stages "$STAGE_LIST" || note "summary failed"
note "done in $((SECONDS - START))s; logs in $RESULTS"
