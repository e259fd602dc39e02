#!/usr/bin/env bash
# Runs the fedfingpt Flower App with Flower's own CLI (`flwr run . local`) on the Simulation Engine.
# The SuperLink is started here with --disable-runtime-dependency-installation, because a SuperLink that `flwr run`
# starts by itself installs the app's dependencies into a fresh environment (a CUDA torch build among them).
# Usage: scripts/flwr_run_local.sh [NUM_BANKS] [extra `flwr run` args, e.g. --run-config 'config-file="configs/x.yaml"']
set -euo pipefail
cd "$(dirname "$0")/.."
NUM_BANKS=${1:-3}; shift || true
BIN=$(cd "${VENV:-.venv}/bin" && pwd)
export PATH="$BIN:$PATH"   # the SuperLink starts flower-superexec and flwr-simulation from PATH
export FLWR_HOME=${FLWR_HOME:-$PWD/runs/flwr-home}
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
PORT=${FLWR_LOCAL_SUPERLINK_HTTP_API_PORT:-39091}
mkdir -p "$FLWR_HOME/local-superlink"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local"

[superlink.local]
address = ":local:"
options.num-supernodes = $NUM_BANKS
options.backend.client-resources.num-cpus = 1
TOML
"$BIN/flower-superlink" --insecure --simulation --isolation subprocess --disable-runtime-dependency-installation \
  --host 127.0.0.1 --port "$PORT" --database "$FLWR_HOME/local-superlink/state.db" \
  > "$FLWR_HOME/local-superlink/superlink.log" 2>&1 &
LINK=$!
trap 'kill $LINK 2>/dev/null; wait $LINK 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 $LINK 2>/dev/null || { echo "SuperLink exited; see $FLWR_HOME/local-superlink/superlink.log" >&2; exit 1; }
  sleep 0.5
done
"$BIN/flwr" run . local --stream "$@"
