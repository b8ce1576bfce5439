#!/usr/bin/env bash
# Starts the built daemon on a free port in a temp dir and runs the Python SDK client against it.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${CORRAL_BIN:-target/debug/corral}
dir=$(mktemp -d)
chmod 711 "$dir"  # agents run as another user and must reach their HOME under it
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; tmux -S "$dir/state/run/tmux.sock" kill-server 2>/dev/null || true; rm -rf "$dir"' EXIT
token=py-token-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
cat > "$dir/corral.toml" <<TOML
[server]
port = 0
token = "$token"
[paths]
state_dir = "$dir/state"
TOML
"$bin" --config "$dir/corral.toml" serve 2> "$dir/daemon.log" &
pid=$!
for _ in $(seq 1 200); do
  [ -s "$dir/state/run/daemon.json" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/daemon.log"; exit 1; }
  sleep 0.05
done
addr=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["addr"])' "$dir/state/run/daemon.json")
python3 tests/python/mcp_client.py "http://$addr/mcp" "$token" || { tail -50 "$dir/daemon.log"; exit 1; }
