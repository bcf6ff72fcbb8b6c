#!/bin/sh
# The full-size epsilon x robustness table on Fashion-MNIST, cheapest rows first. Every step
# is resumable: rerunning this script skips the cells already in $OUT/cells.
#   sh experiments/eps_table/launch.sh /work/runs/pre/eps_table
OUT=${1:-experiments/eps_table/run}
mkdir -p "$OUT"
{
  echo "started $(date -u +%Y-%m-%dT%H:%M:%SZ) at commit $(git rev-parse HEAD 2>/dev/null)"
  lscpu | grep -E "Model name|^CPU\(s\)|Flags"
  echo "load: $(cat /proc/loadavg)"
} >> "$OUT/machine.txt"
T="python -m tfdprobust.experiments.eps_table --out=$OUT --epochs=3 --eval_examples=100 --check_examples=20 \
  --square_queries=300 --pretrain_source=kmnist --pretrain_epochs=5"
FREEZE=${FREEZE:-none}
# 1. the cheap rows at eps 3: DP-SGD without attack, public pre-training + DP fine-tuning
$T --freeze="$FREEZE" --epsilons=3 --methods=dpsgd,pretrain_finetune --seeds=0,1,2 --nonodp_reference || exit 1
# 2. DP-SGD + PGD at eps 3 (10 PGD steps per training step: about 10x the cost)
$T --freeze="$FREEZE" --epsilons=3 --methods=dpsgd_pgd --seeds=0,1,2 --nonodp_reference || exit 1
# 3. the other epsilons, then the non-DP references (the non-DP PGD model is the ceiling)
$T --freeze="$FREEZE" --epsilons=1,8 --methods=dpsgd,pretrain_finetune --seeds=0,1,2 --nonodp_reference || exit 1
$T --freeze="$FREEZE" --epsilons=3 --methods=dpsgd_pgd,dpsgd,pretrain_finetune --seeds=0,1,2 --nodp_reference || exit 1
$T --freeze="$FREEZE" --epsilons=1,8 --methods=dpsgd_pgd --seeds=0,1,2 --nonodp_reference || exit 1
echo "finished $(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$OUT/machine.txt"
