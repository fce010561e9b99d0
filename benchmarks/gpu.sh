#!/usr/bin/env bash
# GPU check, in one short run (under 10 minutes on one data-centre GPU):
#   1. a bf16 training smoke test on the device (the CUDA paths the CPU tests can only imitate);
#   2. training speed per model and mini-batch (1k, 4k, 16k) with bf16 autocast, pinned host memory
#      and non-blocking copies -> latest.json section train_speed_cuda (the goal: the default dnn at
#      16k >= 5M samples/s);
#   3. the whole job end to end on the device against a real broker -> section e2e_cuda.
#
#   benchmarks/gpu.sh [--device cuda|cuda:N|cpu]
#
# With --device cpu the same steps run on the CPU (fp32; sections train_speed_cpu and e2e_cpu), so
# the script is known to work where no GPU is at hand. The broker: STREAM_LEARNER_BENCH_BOOTSTRAP,
# else deploy/kafka/kafka.sh starts one from .cache/kafka (on a machine without internet access,
# bring that folder along: its jars come from Maven Central).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEVICE=cuda
while [[ $# -gt 0 ]]; do
    case $1 in
        --device) DEVICE=${2:?--device needs a value}; shift 2 ;;
        --device=*) DEVICE=${1#*=}; shift ;;
        *) echo "usage: benchmarks/gpu.sh [--device cuda|cuda:N|cpu]" >&2; exit 2 ;;
    esac
done
case $DEVICE in
    cpu) PRECISION=fp32; EVENTS=65536; E2E_EVENTS=200000 ;;
    cuda|cuda:[0-9]*) PRECISION=bf16; EVENTS=1048576; E2E_EVENTS=400000 ;;
    *) echo "gpu.sh: unknown device $DEVICE (cuda, cuda:N or cpu)" >&2; exit 2 ;;
esac

"$PY" - "$DEVICE" "$PRECISION" <<'PYRUN'
import sys
import numpy as np
import torch
from stream_learner.config import TrainSettings
from stream_learner.learning.models import FieldSpec, ModelSpec, build_model
from stream_learner.learning.trainer import Trainer
device, precision = sys.argv[1], sys.argv[2]
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("gpu.sh: torch sees no CUDA device (use --device cpu to check the script here)")
    print(f"gpu.sh: {torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}")
else:
    print(f"gpu.sh: CPU ({torch.get_num_threads()} threads), torch {torch.__version__}")
spec = ModelSpec("dnn", (FieldSpec("user", 1000), FieldSpec("item", 100)), 8, (16,))
t = Trainer(build_model(spec), TrainSettings(device=device, precision=precision), 0.2)
assert t.device.type == torch.device(device).type and t.autocast == (precision == "bf16"), t.device
rng = np.random.default_rng(0)
rows = np.stack([rng.integers(0, 1000, 50_000), rng.integers(0, 100, 50_000)], axis=1)
labels = (rows[:, 1] < 50).astype(np.float32)
before = t.evaluate(rows, labels)
for seed in range(3):
    assert t.train(rows, labels, 0.2, seed).applied
after = t.evaluate(rows, labels)
assert after.loss < before.loss and after.auc > 0.9, (before, after)
print(f"gpu.sh: {precision} training on {t.device}: loss {before.loss:.3f} -> {after.loss:.3f}, auc {after.auc:.3f}")
PYRUN

"$PY" -m benchmarks.train_speed --device "$DEVICE" --precision "$PRECISION" --events "$EVENTS"
"$PY" -m benchmarks.e2e --device "$DEVICE" --events "$E2E_EVENTS"

"$PY" - "$DEVICE" <<'PYSUM'
import json, sys
import torch
from benchmarks.results import RESULTS
kind = torch.device(sys.argv[1]).type
results = json.loads(RESULTS.read_text())
speed = results[f"train_speed_{kind}"]["samples_per_second"]["dnn"]["16384"]
e2e = results[f"e2e_{kind}"]["learner_events_per_second"]
goal = " (goal on one data-centre GPU: 5,000,000)" if kind == "cuda" else ""
print(f"gpu.sh: dnn at mini-batch 16k trains {speed:,} samples/s{goal}; the job end to end {e2e:,} events/s")
PYSUM
