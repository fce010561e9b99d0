#!/usr/bin/env bash
# GPU check: the trainer's tests on CUDA, then the training benchmark on CUDA with bf16 autocast,
# pinned host memory and non-blocking copies; prints samples/s per model and mini-batch size and
# records them in benchmarks/results/latest.json (section train_speed_cuda).
#   benchmarks/gpu.sh [cuda:N]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEVICE=${1:-cuda}
"$PY" - "$DEVICE" <<'PYCHECK'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu.sh: torch sees no CUDA device")
print(f"gpu.sh: {torch.cuda.get_device_name(torch.device(sys.argv[1]))}, torch {torch.__version__}")
PYCHECK
# A short training run on the device, bf16 forced: the CUDA paths the CPU tests can only imitate.
"$PY" - "$DEVICE" <<'PYRUN'
import sys
import numpy as np
from stream_learner.config import TrainSettings
from stream_learner.learning.models import FieldSpec, ModelSpec, build_model
from stream_learner.learning.trainer import Trainer
spec = ModelSpec("dnn", (FieldSpec("user", 1000), FieldSpec("item", 100)), 8, (16,))
t = Trainer(build_model(spec), TrainSettings(device=sys.argv[1], precision="bf16"), 0.2)
assert t.device.type == "cuda" and t.autocast
rng = np.random.default_rng(0)
rows = np.stack([rng.integers(0, 1000, 50_000), rng.integers(0, 100, 50_000)], axis=1)
labels = (rows[:, 1] < 50).astype(np.float32)
before = t.evaluate(rows, labels)
for seed in range(3):
    assert t.train(rows, labels, 0.2, seed).applied
after = t.evaluate(rows, labels)
assert after.loss < before.loss and after.auc > 0.9, (before, after)
print(f"gpu.sh: bf16 training on {t.device}: loss {before.loss:.3f} -> {after.loss:.3f}, auc {after.auc:.3f}")
PYRUN
"$PY" -m benchmarks.train_speed --device "$DEVICE" --precision bf16
