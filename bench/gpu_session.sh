#!/usr/bin/env bash
# One GPU session's benchmarks, in steps that each fit one device call (see README "Benchmarks").
# Run on the GPU box after the bundle is installed (source /tmp/gpu-env.sh); every step writes
# under $OUT/<step>/ and the results are packed into $OUT/<step>.tar (the device returns few files).
#   bash bench/gpu_session.sh lora | person | grounded | quality
set -uo pipefail
step=${1:?step}
: "${OUT:?OUT}" "${SMOLLM2_DIR:?SMOLLM2_DIR}"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export SROIE_DEV=$PWD/.gpu/data/sroie-dev.jsonl SCHEMA_DEV=$PWD/.gpu/data/jsonschemabench-dev.jsonl
dir=$OUT/$step
mkdir -p "$dir"
run() { local limit=$1; shift; echo "== $* (limit ${limit}s)"; timeout "$limit" "$@"; echo "== rc=$?"; }
case $step in
  lora)     run 500 python3 bench/lora_train.py --model "$SMOLLM2_DIR" --data "$SROIE_DEV" --out "$dir" --adapters /tmp/lora ;;
  person)   run 330 python3 bench/gpu_person.py all --model "$SMOLLM2_DIR" --out "$dir" --phases http,lean,service
            run 200 python3 bench/eval_long.py --engine vllm --engine-option model="$SMOLLM2_DIR" --out "$dir/eval_long_vllm.json" ;;
  grounded) run 400 python3 bench/gpu_grounded.py --model "$SMOLLM2_DIR" --out "$dir" ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
tar cf "$OUT/$step.tar" -C "$OUT" "$step" && rm -rf "$dir"
