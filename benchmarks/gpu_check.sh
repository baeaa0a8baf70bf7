#!/usr/bin/env bash
# GPU check of trl-search (one GPU, a few minutes). From the repository root:
#   bash benchmarks/gpu_check.sh            # (a) plain, (b) DeepSpeed ZeRO-2, (c) ZeRO-3, each with stock GRPOTrainer
#   bash benchmarks/gpu_check.sh --quick    # plain only, fewer steps
#   bash benchmarks/gpu_check.sh --cpu-smoke  # the same stages on CPU with a tiny model (checks the script itself)
#   bash benchmarks/gpu_check.sh --one-gpu  # issue 14: Qwen2.5-3B-shape step breakdown (LoRA/full, checkpointing,
#                                           # 24 GiB cap) and int8 dense search at wiki-18 size; ~9 minutes
#   bash benchmarks/gpu_check.sh --one-gpu --cpu-smoke  # the same stages on CPU, tiny sizes
# Needs: torch with CUDA, transformers, accelerate, peft; trl, datasets, deepspeed, bm25s... come from the wheels in
# benchmarks/wheels (benchmarks/gpu_check_wheels.sh fetches them), installed with --no-deps into $WORK/site, never over the system.
# Each stage runs in its own process with a time limit; a failed stage is reported and the others still run.
set -euo pipefail

cd "$(dirname "$0")/.."
QUICK=0
SMOKE=0
ONE_GPU=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --cpu-smoke) SMOKE=1 ;;
    --one-gpu) ONE_GPU=1 ;;
    *) echo "unknown option: $arg (use --quick, --cpu-smoke or --one-gpu)" >&2; exit 2 ;;
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

import_check() {
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
}

# --- issue 14: one GPU. Stages in priority order; each prints its own tables, collected at the end. -----------------
if [ "$ONE_GPU" -eq 1 ]; then
  BUDGET="${GPU_CHECK_BUDGET:-540}"
  if [ "$SMOKE" -eq 1 ]; then
    DEVICE_ENV=(env CUDA_VISIBLE_DEVICES="")
    BREAKDOWN=(--smoke --device cpu)
    CAP=()
    QUANT=(--device cpu --vectors 20000 --queries 600 --seeds 0 --repeats 1 --candidates 16 32)
  else
    DEVICE_ENV=(env)
    run_stage install 120 "$PYTHON" benchmarks/gpu_check.py install --target "$WORK/site"
    import_check
    # Qwen2.5-3B shape (random weights, real 151,936 vocabulary), group 5, 2 prompts per step, paced trajectories
    BREAKDOWN=(--shape qwen2.5-3b --prompts 2 --group 5 --warmup 1 --steps 1 --seeds 0)
    CAP=(--memory_cap_gib 24)
    QUANT=(--device cuda --vectors 21015324 --queries 1024 --seeds 0 --repeats 5 --candidates 16 32 --scans int8 float)
  fi
  SB=benchmarks/step_breakdown.py
  # 1. The 24 GB recipe: LoRA + checkpointing under a 24 GiB cap, ours (with and without cache reuse) vs stock
  run_stage lora-ckpt-24g 300 "${DEVICE_ENV[@]}" "$PYTHON" "$SB" "${BREAKDOWN[@]}" --lora --gradient_checkpointing \
    "${CAP[@]}" --compare_reuse --json "$RESULTS/lora-ckpt-24g.json"
  # 2. The retriever beside it: int8 codes of 21M x 768 vectors, recall@3 against float32 exact search
  run_stage quantized-21m 200 "${DEVICE_ENV[@]}" "$PYTHON" benchmarks/bench_quantized_search.py "${QUANT[@]}"
  # 3. Full fine-tuning with checkpointing, no cap: peak memory, ours vs stock at equal total tokens
  run_stage full-ckpt 200 "${DEVICE_ENV[@]}" "$PYTHON" "$SB" "${BREAKDOWN[@]}" --gradient_checkpointing \
    --json "$RESULTS/full-ckpt.json"
  # 4. Without checkpointing, under the cap (LoRA) and not (full): whatever time is left
  run_stage lora-24g 150 "${DEVICE_ENV[@]}" "$PYTHON" "$SB" "${BREAKDOWN[@]}" --lora "${CAP[@]}" --no_stock \
    --json "$RESULTS/lora-24g.json"
  run_stage full 150 "${DEVICE_ENV[@]}" "$PYTHON" "$SB" "${BREAKDOWN[@]}" --no_stock --json "$RESULTS/full.json"
  echo
  echo "=== trl-search one-GPU check (issue 14) ==="
  for stage in lora-ckpt-24g quantized-21m full-ckpt lora-24g full; do
    echo "--- $stage: $(cat "$RESULTS/$stage.status" 2>/dev/null || echo 'not run')"
    grep -E '^(\||shape=|per completion|GPU memory capped|peak GPU|memory here|wiki-18|data:|[0-9,]+ x )' \
      "$RESULTS/$stage.log" 2>/dev/null || true
  done
  note "done in $((SECONDS - START))s; logs in $RESULTS"
  exit 0
fi

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
  import_check
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
