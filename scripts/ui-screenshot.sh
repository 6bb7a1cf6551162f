#!/usr/bin/env bash
# Takes the README's picture of the web UI: a loopback cluster of the release binary (a
# JobManager and two TaskManagers of two slots), W1 at parallelism 2 with chaining off
# (so that the graph has its four vertices) paced at 200 k/s with latency markers on,
# and headless Chromium's screenshot (through ChromeDriver) of the job's page once it
# has run a few seconds. Needs chromium, chromium-driver, curl and python3.
#
#   scripts/ui-screenshot.sh [OUT.png]        (default docs/web-ui.png)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/web-ui.png}
bin=target/release/spate
[ -x "$bin" ] || cargo build --release -p spate --bin spate
chromium=$(command -v chromium || command -v chromium-browser || true)
[ -n "$chromium" ] || { echo "chromium is required (apt-get install chromium)" >&2; exit 1; }
rpc=$((20000 + RANDOM % 20000)); rest=$((rpc + 1))
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
common=(-D jobmanager.rpc.address=127.0.0.1 -D "jobmanager.rpc.port=$rpc" -D "rest.port=$rest"
        -D taskmanager.idle-strategy=yield -D taskmanager.numberOfTaskSlots=2)
mkdir -p "$work/jm" "$work/tm1" "$work/tm2"
RUST_LOG=warn "$bin" jobmanager --config-dir "$work/jm" "${common[@]}" >/dev/null 2>&1 & pids+=($!)
for t in tm1 tm2; do
  RUST_LOG=warn "$bin" taskmanager --config-dir "$work/$t" "${common[@]}" >/dev/null 2>&1 & pids+=($!)
done
for _ in $(seq 100); do
  n=$(curl -sf "http://127.0.0.1:$rest/taskmanagers" | grep -o '"id"' | wc -l || true)
  [ "$n" = 2 ] && break; sleep 0.1
done
jid=$("$bin" run -m "127.0.0.1:$rest" -d -p 2 --events 0 --rate 200000 \
        -D pipeline.operator-chaining.enabled=false -D metrics.latency.interval=100ms vwap \
      | grep -o '[0-9a-f]\{32\}' | head -1)
[ -n "$jid" ] || { echo "no job id" >&2; exit 1; }
sleep 6
# Through ChromeDriver, so that the page runs in real time and shows rates (which
# need two of its one-second refreshes).
driver=$(command -v chromedriver || true)
[ -n "$driver" ] || { echo "chromedriver is required (apt-get install chromium-driver)" >&2; exit 1; }
dport=$((rest + 1))
"$driver" --port="$dport" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$dport/status" >/dev/null && break; sleep 0.1; done
caps='{"capabilities":{"alwaysMatch":{"browserName":"chrome","goog:chromeOptions":{"binary":"'"$chromium"'","args":["--headless=new","--no-sandbox","--disable-gpu","--hide-scrollbars","--window-size=1600,820"]}}}}'
sid=$(curl -sf -X POST -H 'Content-Type: application/json' -d "$caps" "http://127.0.0.1:$dport/session" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"]["sessionId"])')
curl -sf -X POST -H 'Content-Type: application/json' -d "{\"url\":\"http://127.0.0.1:$rest/#/jobs/$jid\"}" \
  "http://127.0.0.1:$dport/session/$sid/url" >/dev/null
sleep 4
curl -sf "http://127.0.0.1:$dport/session/$sid/screenshot" \
  | python3 -c 'import base64,json,sys; sys.stdout.buffer.write(base64.b64decode(json.load(sys.stdin)["value"]))' > "$out"
curl -sf -X DELETE "http://127.0.0.1:$dport/session/$sid" >/dev/null || true
"$bin" cancel -m "127.0.0.1:$rest" "$jid" >/dev/null 2>&1 || true
echo "wrote $out (job $jid)"
