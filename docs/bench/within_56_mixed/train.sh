. .venv/bin/activate
export OMP_NUM_THREADS=2 MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824
python train/run.py train --config train/configs/omniglot_lake_within.toml --device cpu \
  --set data_root='"../shared/data"' --set preprocess='"mixed"' --set out_dir='"runs/within-56-mixed"'
