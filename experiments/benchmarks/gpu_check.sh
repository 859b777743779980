#!/usr/bin/env bash
# On a machine with a CUDA device: the CUDA-parametrised tests, `lagrl check` on CUDA and the optimizer
# benchmark, in one go. Uses the machine's own torch (no install); lagrl is taken from this checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -m cuda tests/
python3 -m lagrl.cli check --device cuda --steps 1000
python3 experiments/benchmarks/optim_bench.py --device cuda --repeats 9
