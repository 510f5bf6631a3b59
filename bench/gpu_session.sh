#!/usr/bin/env bash
# One GPU session's benchmarks, in steps that each fit one device call (see README "Benchmarks").
# Run on the GPU box after the bundle is installed (source /tmp/gpu-env.sh); every step writes
# under $OUT/<step>/ and the results are packed into $OUT/<step>.tar (the device returns few files).
#   bash bench/gpu_session.sh lora | person | grounded | quality | person-quality | schemas
#   bash bench/gpu_session.sh w1 | w1s | w1a | w1b | w1c | w1p | w1r | w2 | w2g | long | stream    (each one device call: quality + schemas; grounded + the service)
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
            run 200 python3 bench/eval_long.py --engine vllm --engine-option model="$SMOLLM2_DIR" --chunk-tokens 512 --out "$dir" ;;
  grounded) run 400 python3 bench/gpu_grounded.py --model "$SMOLLM2_DIR" --out "$dir" ;;
  quality)  # issue 13 on the GPU: the 300 real receipts with the receipt defaults
            run 200 python3 bench/eval_sroie.py --engine vllm --engine-option model="$SMOLLM2_DIR" --data "$SROIE_DEV" --out "$dir" ;;
  person-quality)  # the person sets with the shipped contract and person v2's plain prompt
            run 150 python3 bench/eval_person_examples.py --engine vllm --engine-option model="$SMOLLM2_DIR" \
              --variants shipped nulls --out "$dir" ;;
  schemas)  run 300 python3 bench/schema_e2e.py --engine vllm --engine-option model="$SMOLLM2_DIR" --data "$SCHEMA_DEV" --out "$dir" ;;
  w1)       # issues 13 and 12: the real receipts, then all 565 real-world schemas end to end
            run 170 python3 bench/eval_sroie.py --engine vllm --engine-option model="$SMOLLM2_DIR" --data "$SROIE_DEV" --out "$dir"
            run 340 python3 bench/schema_e2e.py --engine vllm --engine-option model="$SMOLLM2_DIR" --data "$SCHEMA_DEV" --out "$dir" ;;
  w1s)      # issue 12 alone: all 565 real-world schemas end to end through the product's own path (the
            # engine's compile guard, 12 children; the skeleton where a grammar is refused or too slow);
            # the partial JSONL survives a cut
            run "${E2E_LIMIT:-530}" python3 bench/schema_e2e.py --engine vllm --engine-option model="$SMOLLM2_DIR" \
              --engine-option grammar_check_processes=12 --profile --data "$SCHEMA_DEV" --out "$dir" ;;
  w1a|w1b)  # issue 12: all 565 real-world schemas in two device calls, every other schema each (--shard);
            # then: python3 bench/schema_e2e.py --engine vllm --merge <the two shards' results or partials>
            shard=0/2; [ "$step" = w1b ] && shard=1/2
            run "${E2E_LIMIT:-545}" python3 bench/schema_e2e.py --engine vllm --engine-option model="$SMOLLM2_DIR" \
              --engine-option grammar_check_processes=12 --shard $shard --data "$SCHEMA_DEV" --out "$dir" ;;
  w1c)      # issue 12: the schemas the w1a/w1b calls did not reach (.gpu/data/e2e_rest.txt), then --merge all three
            run "${E2E_LIMIT:-545}" python3 bench/schema_e2e.py --engine vllm --engine-option model="$SMOLLM2_DIR" \
              --engine-option grammar_check_processes=12 --ids .gpu/data/e2e_rest.txt --data "$SCHEMA_DEV" --out "$dir" ;;
  w1p)      # issue 12, profiled: the schemas an earlier run did not complete (.gpu/data/e2e_heavy.txt),
            # vLLM's engine core in this process so the stack sampler sees its threads too
            VLLM_ENABLE_V1_MULTIPROCESSING=0 run "${E2E_LIMIT:-300}" python3 bench/schema_e2e.py --engine vllm \
              --engine-option model="$SMOLLM2_DIR" --engine-option grammar_check_processes=12 --profile \
              --ids .gpu/data/e2e_heavy.txt --data "$SCHEMA_DEV" --out "$dir" ;;
  w1r)      # issue 12 on a random sample of 100 of the 565 schemas (the end of a session's device time)
            run 290 python3 bench/schema_e2e.py --engine vllm --engine-option model="$SMOLLM2_DIR" \
              --engine-option grammar_check_processes=12 --sample 100 --seed 0 --data "$SCHEMA_DEV" --out "$dir" ;;
  stream)   # issue 18: time to the first streamed field against vLLM's time to first token, 1/64/256 in flight
            run 300 python3 bench/stream_ttff.py --engine vllm --engine-option model="$SMOLLM2_DIR" --docs 512 \
              --single-docs 32 --concurrency 1 64 256 --out "$dir" ;;
  long)     # issue 18: the 22 long documents on vLLM
            run 300 python3 bench/eval_long.py --engine vllm --engine-option model="$SMOLLM2_DIR" --chunk-tokens 512 --out "$dir" ;;
  w2)       # issue 15: grounded against plain decoding, then the service with its defaults at 256 in flight
            run 270 python3 bench/gpu_grounded.py --model "$SMOLLM2_DIR" --out "$dir"
            run 280 python3 bench/gpu_person.py all --model "$SMOLLM2_DIR" --out "$dir" --phases http,lean,service ;;
  w2g)      # issue 15: grounded against plain decoding with vLLM's llguidance backend (per-document grammars
            # built lazily, as the local engine does), then with xgrammar, the engine's default, in one call
            run 270 python3 bench/gpu_grounded.py --model "$SMOLLM2_DIR" --backend guidance --out "$dir/guidance"
            run 270 python3 bench/gpu_grounded.py --model "$SMOLLM2_DIR" --backend xgrammar --out "$dir/xgrammar" ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
tar cf "$OUT/$step.tar" -C "$OUT" "$step" && rm -rf "$dir"
