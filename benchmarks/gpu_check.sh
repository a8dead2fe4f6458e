#!/bin/bash
# The GPU numbers and the CUDA paths on a real GPU: run from the repo root on a machine with an NVIDIA GPU,
#     bash benchmarks/gpu_check.sh            (logs and CSVs go to $OUT, default runs/gpu_check)
#     bash benchmarks/gpu_check.sh bench      (steps 0 and 1 only: the figures; at most 100 + 470 s, planned for
#                                              one 600-s call of a lent H200; never run on a GPU yet)
# 0. two digits runs on CUDA (ReLU, SiLU; 30 epochs), the trained checkpoints of bench_gpu's parts 3 and 4
# 1. benchmarks/bench_gpu.py: ResNet-50 training speed, memory, batch sizes, evaluation cost, attack precision,
#    the input pipeline, the sync check and profile ($OUT/gpu_numbers.csv, $OUT/bench_gpu.log)
# 2. benchmarks/bench_activations.py --skip-cpu: each activation's training step / ReLU's, ResNet-50 bf16
# 3. stage 03 on the digits with --device cuda in every precision, channels_last and torch.compile (SAT_SMOKE=1:
#    a few steps each), then stage 04 on CUDA
# 4. torchrun with one process (NCCL), ResNet-50 at 64 px on a generated ImageFolder, stopped after epoch 1,
#    then --resume
# 5. a full default digits run of ReLU (all four smooth-grad modes) and Parametric Softplus on CUDA, evaluated
#    on CUDA
# Each step prints rc=0 when it succeeded. Steps 2-5 ran as is on an NVIDIA H200 with torch 2.11 (2026-11-26):
# all rc=0. Steps 0-1 were written after that and ran on the CPU only (bench_gpu.py --quick). On 2026-12-07
# (main at 5b5ad2b) bench_gpu.py --quick and 174 tests of stages 01-04, crash/resume and evaluation at scale also
# passed on the CPU with torch 2.11.0, torchvision 0.26.0 and Python 3.12, the GPU machine's versions.
# A GPU machine without torchattacks (bench_gpu's part 3b, stage 04) or pyautoattack (stage 04's APGD-T) takes
# them as wheels in .whl/ (ignored by git), fetched beforehand on a machine with pip's index:
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl torchattacks==3.5.1
#     (and pyautoattack==0.2.0, 42 MB, for the steps after `bench`)
# (the device tool of this project: run with carry [".whl"], the command `OUT=$OUT bash benchmarks/gpu_check.sh bench`)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
OUT=${OUT:-runs/gpu_check}; TMP=$(mktemp -d); mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi -L; df -h /dev/shm | tail -1; python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
step() { echo; echo "=== $1 ($(date +%T))"; }
step "digits runs on cuda for bench_gpu (relu, silu)"
timeout 100 python3 03_adv_train.py --device cuda --act relu silu --smooth-grad none --quiet --out "$TMP/gpu_digits" 2>&1 | tail -3
echo "rc=${PIPESTATUS[0]}"
step "bench_gpu"
# --time-limit: no torch.compile model starts unless 180 s are left of 420 (the parts before it: about 2-4 min);
# the CSV gets each row as it is measured, so even a run stopped by the timeout keeps its figures
# (without a trained digits checkpoint, say step 0 ran out of time, parts 3b and 4 are skipped, not the rest)
DIGITS=$([ -n "$(find "$TMP/gpu_digits" -name final.pt 2>/dev/null)" ] && echo "--digits-runs $TMP/gpu_digits")
timeout -k 10 460 python3 benchmarks/bench_gpu.py $DIGITS --csv "$OUT/gpu_numbers.csv" --time-limit 420 2>&1 | tee "$OUT/bench_gpu.log"
echo "rc=${PIPESTATUS[0]}"
[ "$1" = bench ] && { step done; exit 0; }
step "bench_activations --skip-cpu"
timeout 200 python3 benchmarks/bench_activations.py --skip-cpu --out "$OUT/activation_cost_gpu.csv" 2>&1 | tee "$OUT/bench.log"
step "digits smoke: 03 on cuda, each amp mode, channels_last, compile"
for opts in "--amp bf16" "--amp fp16" "--amp off" "--amp bf16 --channels-last" "--amp bf16 --compile"; do
  echo "--- $opts"
  SAT_SMOKE=1 timeout 120 python3 03_adv_train.py --device cuda $opts --act relu silu --smooth-grad none attacker --quiet --out "$TMP/smk" --force 2>&1 | tail -4
  echo "rc=${PIPESTATUS[0]}"
done
step "04 on cuda (smoke)"
SAT_SMOKE=1 timeout 120 python3 04_eval.py --runs "$TMP/smk" --out "$TMP/ev" --device cuda 2>&1 | tail -12
echo "rc=${PIPESTATUS[0]}"
step "torchrun nccl, imagenet preset, small image, generated ImageFolder, then --resume"
python3 - "$TMP/fakeimnet" <<'PY'
import os, sys, numpy as np
from PIL import Image
for split in ("train", "val"):
    for c in range(3):
        d = f"{sys.argv[1]}/{split}/class{c}"; os.makedirs(d, exist_ok=True)
        for i in range(24):
            Image.fromarray(np.random.randint(0, 255, (80, 96, 3), np.uint8)).save(f"{d}/{i}.jpg")
PY
for extra in "--stop-after-epoch 1" "--resume"; do
  timeout 150 torchrun --standalone --nproc_per_node 1 03_adv_train.py --dataset imagenet --data "$TMP/fakeimnet" --act relu --smooth-grad none \
    --image-size 64 --batch-size 16 --epochs 2 --workers 2 --out "$TMP/imn" --quiet $extra 2>&1 | tail -6
  echo "rc=${PIPESTATUS[0]}"
done
step "real digits run on cuda (relu, psoftplus), evaluated on cuda"
timeout 150 python3 03_adv_train.py --device cuda --act relu psoftplus --quiet --out "$TMP/dig" 2>&1 | tail -4
echo "rc=${PIPESTATUS[0]}"
timeout 120 python3 04_eval.py --runs "$TMP/dig" --out "$OUT/digits_eval" --device cuda 2>&1 | tail -14
echo "rc=${PIPESTATUS[0]}"
step done
