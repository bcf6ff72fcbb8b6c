#!/usr/bin/env bash
# Keras Tuner distributed mode on one machine: a chief oracle and two workers on 127.0.0.1.
# Usage (from anywhere): experiments/tuning/distributed/run_local_cluster.sh [extra tuner flags...]
# Env: PYTHON (default: the active `python`), TUNING_DIR, LOGS, DATA_DIR, KERASTUNER_ORACLE_PORT.
# Exits non-zero if any role fails.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)          # the checkout this script belongs to
PYTHON=${PYTHON:-python}
LOGS=${LOGS:-$(mktemp -d)}
TUNING_DIR=${TUNING_DIR:-$LOGS/tuning}
DATA_DIR=${DATA_DIR:-$ROOT/../shared/data}
mkdir -p "$LOGS"
cd "$ROOT" || exit 1
FLAGS=(--data_dir="$DATA_DIR" --noise=1.5 --clip_grid=0.5,2 --lr_grid=0.5,2 --max_train=700
       --validation_examples=100 --batch_size=100 --public_examples=16 --steps=1 --val_steps=2 --eval_steps=2
       --max_test=100 --tuning_dir="$TUNING_DIR" "$@")
export KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=${KERASTUNER_ORACLE_PORT:-8765}
KERASTUNER_TUNER_ID=chief "$PYTHON" -m tfdprobust.tune "${FLAGS[@]}" > "$LOGS/chief.log" 2>&1 &
CHIEF=$!
# Workers connect once the chief serves the oracle (or the chief has already failed).
for _ in $(seq 1 60); do
  kill -0 $CHIEF 2>/dev/null || break
  grep -q "^search:" "$LOGS/chief.log" 2>/dev/null && { sleep 5; break; }
  sleep 1
done
KERASTUNER_TUNER_ID=tuner0 "$PYTHON" -m tfdprobust.tune "${FLAGS[@]}" > "$LOGS/tuner0.log" 2>&1 &
W0=$!
KERASTUNER_TUNER_ID=tuner1 "$PYTHON" -m tfdprobust.tune "${FLAGS[@]}" > "$LOGS/tuner1.log" 2>&1 &
W1=$!
STATUS=0
wait $W0; rc=$?; echo "tuner0 exit $rc"; [ $rc -eq 0 ] || STATUS=1
wait $W1; rc=$?; echo "tuner1 exit $rc"; [ $rc -eq 0 ] || STATUS=1
wait $CHIEF; rc=$?; echo "chief exit $rc"; [ $rc -eq 0 ] || STATUS=1
echo "logs in $LOGS"
exit $STATUS
