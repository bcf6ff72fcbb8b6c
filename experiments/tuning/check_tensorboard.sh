#!/usr/bin/env bash
# Starts TensorBoard on loopback over a tuning dir's logs and asks the HParams plugin,
# with POSTs like the dashboard's own, for the experiment and its session groups.
# Usage: experiments/tuning/check_tensorboard.sh <logdir> [port]
# Uses the active Python's TensorBoard (env PYTHON). Exits non-zero if any step fails.
set -euo pipefail
LOGDIR=${1:?usage: check_tensorboard.sh <logdir> [port]}
PORT=${2:-6123}
PYTHON=${PYTHON:-python}
[ -d "$LOGDIR" ] || { echo "error: $LOGDIR is not a folder" >&2; exit 2; }
TMP=$(mktemp -d)
"$PYTHON" -m tensorboard.main --logdir "$LOGDIR" --host 127.0.0.1 --port "$PORT" > "$TMP/tensorboard.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$TMP"' EXIT
URL=http://127.0.0.1:$PORT
ok=0
for _ in $(seq 1 120); do
  kill -0 $PID 2>/dev/null || { echo "error: tensorboard exited:" >&2; cat "$TMP/tensorboard.log" >&2; exit 1; }
  if "$PYTHON" -c "import sys,urllib.request; open(sys.argv[2],'wb').write(urllib.request.urlopen(sys.argv[1]).read())" \
       "$URL/data/plugins_listing" "$TMP/plugins.json" 2>/dev/null; then ok=1; break; fi
  sleep 1
done
[ $ok -eq 1 ] || { echo "error: tensorboard did not answer on $URL" >&2; exit 1; }
"$PYTHON" - "$URL" "$TMP/plugins.json" <<'PY'
import json, sys, urllib.request
url, listing = sys.argv[1], sys.argv[2]
plugins = json.load(open(listing))
print("plugins_listing: hparams enabled =", plugins["hparams"]["enabled"])
def post(route, body):
    req = urllib.request.Request(f"{url}/data/plugin/hparams/{route}", json.dumps(body).encode(),
                                 {"X-XSRF-Protected": "1", "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))
exp = post("experiment", {"experimentName": ""})
print("experiment hparams:", [h["name"] for h in exp["hparamInfos"]])
print("experiment metrics:", [m["name"]["tag"] for m in exp["metricInfos"]])
groups = post("session_groups", {"experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
                                 "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                     "STATUS_RUNNING"]})
print("session groups:", groups["totalSize"])
if not plugins["hparams"]["enabled"] or not groups["totalSize"]:
    sys.exit("error: the HParams plugin shows no sessions")
for g in sorted(groups["sessionGroups"], key=lambda g: g["name"]):
    hp = g["hparams"]
    metrics = {m["name"]["tag"]: round(m["value"], 4) for m in g["metricValues"]}
    print(f"  {g['name']:<12} R={hp['l2_clip']:<5g} eta={hp['learning_rate']:<5g} "
          f"epsilon(one training)={metrics.get('epsilon')} natural={metrics.get('val_natural_accuracy')} "
          f"robust={metrics.get('val_robust_accuracy')}")
PY
