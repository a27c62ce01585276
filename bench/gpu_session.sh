#!/usr/bin/env bash
# Everything that needs the GPU, in one call: the three Omniglot checkpoints (train + test evaluation), the
# training-speed benchmark and the softmax-scale ablation. Each phase has a time cap so that a slow phase
# cannot eat the others; results land in $OUT as they are made.
#   OUT=out DATA=data STEPS=5000 bash bench/gpu_session.sh
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}
DATA=${DATA:-data}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-}          # override the configs' steps (for a tiny CPU rehearsal)
BENCH_ARGS=${BENCH_ARGS:-"--compile"}
mkdir -p "$OUT"
PY=${PY:-python3}
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv

pack() { tar -czf "$OUT/results.tgz" -C "$OUT" --exclude=last.safetensors --exclude=results.tgz runs $( [ -d "$OUT/ablate" ] && echo ablate ) 2>/dev/null; }  # one archive: the device tool returns few files, no deep folders

model() {  # name config cap_seconds
  local extra=()
  [ -n "$STEPS" ] && extra=(--set "steps=$STEPS" --set "val_every=$(( STEPS / 2 ))" --set "checkpoint_every=$STEPS")
  stamp "train $1"
  timeout "$3" $PY train/run.py train --config "$2" --device "$DEVICE" --data-root "$DATA" \
    --set "out_dir=\"$OUT/runs/$1\"" --set progress=false "${extra[@]}" --eval --episodes "${EPISODES:-1000}" \
    > "$OUT/$1.log" 2>&1
  stamp "done $1 (exit $?)"; tail -6 "$OUT/$1.log"; pack
}

model omniglot-vinyals train/configs/omniglot_vinyals.toml "${CAP_MAIN:-150}"
model omniglot-vinyals-fce train/configs/omniglot_vinyals_fce.toml "${CAP_FCE:-110}"
model omniglot-lake train/configs/omniglot_lake.toml "${CAP_LAKE:-80}"
if [ -z "${SKIP_ABL:-}" ]; then
stamp "ablation"
timeout "${CAP_ABL:-50}" $PY train/run.py ablate-scale --config train/configs/omniglot_vinyals.toml --device "$DEVICE" \
  --data-root "$DATA" --steps "${ABL_STEPS:-500}" --val-episodes "${ABL_VAL:-1000}" --out-dir "$OUT/ablate" \
  > "$OUT/ablate.log" 2>&1
stamp "done ablation (exit $?)"; tail -5 "$OUT/ablate.log"
fi
find "$OUT" -name last.safetensors -delete  # resume points are not needed back
pack
[ -n "${SKIP_BENCH:-}" ] && { stamp "all done"; exit 0; }
left=$(( ${TOTAL:-550} - ($(date +%s) - t0) ))
stamp "bench (cap $left s)"
timeout "$left" $PY bench/train_speed.py --device "$DEVICE" --data-root "$DATA" \
  --out "$OUT/train_speed.json" $BENCH_ARGS > "$OUT/train_speed.log" 2>&1
stamp "done bench (exit $?)"; tail -14 "$OUT/train_speed.log"
stamp "all done"
