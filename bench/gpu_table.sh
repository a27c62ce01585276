#!/usr/bin/env bash
# Table 1's baselines on a GPU in one call (target: about 6 minutes on an H100): retrains the baseline
# classifier, the siamese net and the MANN with the GPU recipe below (each capped by a time limit), then
# measures every row of `python train/run.py table omniglot` on 1,000 test episodes per column.
#
#   DATA=data OUT=out bash bench/gpu_table.sh
#
# DATA must hold omniglot-py/ (the two zips are enough) and mnist/ (t10k-*-idx*-ubyte.gz): carry them.
# Results come back as $OUT/omniglot_table.{md,json,html,png}, $OUT/table.log and $OUT/models.tgz (the trained
# runs, to ship in assets/baselines/ after a look). To publish them: copy the four omniglot_table files into
# docs/results/ and `python -c "from matchnet.results import write_results_md; from pathlib import Path;
# write_results_md(Path('.'))"`, or rerun `python train/run.py table omniglot` with the models in place.
#
# A rehearsal of the same path at toy scale on a CPU (about 5 minutes on 2 cores):
#   DEVICE=cpu TINY=1 EPISODES=20 OUT=/tmp/gpu_table bash bench/gpu_table.sh
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}
DATA=${DATA:-data}
DEVICE=${DEVICE:-cuda}
EPISODES=${EPISODES:-1000}
PY=${PY:-python3}
mkdir -p "$OUT"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

# The GPU recipe: the CPU configs' recipes trained longer, with time limits that keep the whole call near 6
# minutes (a run that hits its limit keeps its best validation checkpoint). Every value lands in the command
# recorded beside each row.
GPU_SET="classifier.steps=8000 classifier.val_every=1000 classifier.checkpoint_every=1000 classifier.time_limit=70
siamese.steps=10000 siamese.val_every=1000 siamese.checkpoint_every=1000 siamese.time_limit=70
mann.steps=40000 mann.meta_batch=32 mann.val_every=4000 mann.checkpoint_every=4000 mann.time_limit=90"
if [ -n "${TINY:-}" ]; then  # toy scale: checks the path, not the accuracy
  GPU_SET="classifier.steps=6 classifier.val_every=3 classifier.val_episodes=10
siamese.steps=6 siamese.val_every=3 siamese.val_episodes=10
mann.steps=6 mann.val_every=3 mann.val_episodes=10
finetune.val_episodes=10 finetune.lrs=[0.01] finetune.steps=[1,2]"
fi
GPU_SET=$(echo $GPU_SET ${EXTRA_SET:-})

$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
stamp "table omniglot on $DEVICE, $EPISODES episodes; TABLE_SET=$GPU_SET"
TABLE_SET="$GPU_SET" TABLE_RETRAIN=1 TABLE_RUNS="$OUT/runs" TABLE_OUT="$OUT" \
  timeout "${CAP:-540}" $PY train/run.py table omniglot --device "$DEVICE" --data-root "$DATA" --episodes "$EPISODES" \
  > "$OUT/table.log" 2>&1
stamp "done (exit $?)"
tail -40 "$OUT/table.log" | tr '\r' '\n' | grep -v 'step/s' | tail -30
# one archive for the models: the device tool returns few files and no deep folders
tar -czf "$OUT/models.tgz" -C "$OUT" --exclude=last.safetensors runs 2>/dev/null && rm -rf "$OUT/runs"
ls -la "$OUT"
stamp "all done"
