#!/usr/bin/env bash
# Submit throughput and latency of the local server on the embedded backend (SQLite), with the
# worker paused (`easel serve --no-worker`): wrk on loopback posts submissions for a fixed time, then
# every accepted task is counted in the store, and its job in the queue.
#
#   infra/bench/submit_load.sh [seconds per run]      (default 10; needs wrk: apt-get install wrk)
#
# Prints one markdown table row per run; docs/benchmarks.md records the figures. Loopback only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
seconds="${1:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/easel/target}"
command -v wrk >/dev/null || { echo "submit_load: needs wrk (Debian: apt-get install wrk)" >&2; exit 1; }
bash "$root/infra/setup.sh" >/dev/null
(cd "$root" && cargo build --release --locked -q -p easel-cli --bin easel)
bin="$CARGO_TARGET_DIR/release/easel"
port=18391
work="$(mktemp -d)"
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

count() { # db query
  python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])' "$1" "$2"
}

run() { # dialect threads connections
  local dialect="$1" threads="$2" conns="$3" data="$work/data-$1-$2-$3"
  "$bin" serve --no-worker --addr "127.0.0.1:$port" --data-dir "$data" --dev-key-file "$data/key" \
    >"$work/server.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  local out
  out="$(EASEL_KEY="$(cat "$data/key")" EASEL_DIALECT="$dialect" \
    wrk -t "$threads" -c "$conns" -d "${seconds}s" --latency -s "$root/infra/bench/submit.lua" \
    "http://127.0.0.1:$port" | grep '^RESULT')"
  kill -INT "$server"; wait "$server" || true
  local tasks jobs accepted
  tasks="$(count "$data/easel.db" 'SELECT count(*) FROM tasks')"
  jobs="$(count "$data/easel.db" "SELECT count(*) FROM messages WHERE queue = 'jobs'")"
  accepted="$(sed -E 's/.*accepted=([0-9]+).*/\1/' <<<"$out")"
  local verdict="ok"
  if (( tasks < accepted || jobs != tasks )); then verdict="LOST: tasks=$tasks jobs=$jobs accepted=$accepted"; fi
  # shellcheck disable=SC2001
  echo "| $dialect | $threads | $conns | $(sed -E 's/RESULT accepted=([0-9]+) refused=([0-9]+) errors=([0-9]+) rps=([0-9]+) p50_ms=([0-9.]+) p90_ms=([0-9.]+) p99_ms=([0-9.]+) max_ms=([0-9.]+)/\4 | \5 | \6 | \7 | \8 | \1 | \2 | \3/' <<<"$out") | $tasks | $jobs | $verdict |"
}

echo "| dialect | wrk threads | connections | submits/s | p50 ms | p90 ms | p99 ms | max ms | accepted | refused | socket errors | tasks stored | jobs queued | check |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
run hive 1 4
run hive 1 16
run hive 2 64
run openai 1 16
