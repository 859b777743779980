#!/usr/bin/env bash
# On a machine with a CUDA device: the CUDA-parametrised tests, `lagrl check`, `lagrl verify` (suite and --batch) and `lagrl train` on CUDA, the experiments' quick runs and the
# benchmarks, in one go. Uses the machine's own torch and packages; lagrl (with lagrl.envs, mapped from envs/)
# is installed from this checkout without dependencies and without the network.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -m cuda tests/
python3 -m lagrl.cli check --device cuda --steps 1000
python3 experiments/benchmarks/optim_bench.py --device cuda --repeats 9
python3 -m lagrl.cli verify --device cuda
# Batched solves (issue "lagrl verify, second pass"): the same Garnet draws per device type, MDPs/s and value
# iteration's effective bandwidth. The CPU runs a 64th of the batch (about 15 s; its per-MDP rate is flat in N).
python3 -m lagrl.cli verify --batch 16 --states 128 --actions 8 --branching 8 --device cpu
python3 -m lagrl.cli verify --batch 1024 --states 128 --actions 8 --branching 8 --device cuda
python3 -m lagrl.cli verify --batch 4096 --states 64 --actions 4 --device cuda
python3 experiments/benchmarks/tabular_bench.py --device cuda
python3 -m lagrl.cli train --algo ppo --env CartPole-v1 --preconditioner fisher-sqrt --timesteps 4096 --device cuda \
    --save /tmp/lagrl_gpu_ppo --no-progress
python3 -m lagrl.cli evaluate /tmp/lagrl_gpu_ppo.zip --device cuda
# The paper's claims (issue "The paper's claims, tested"): every experiment's quick run on CUDA (matplotlib needed).
for name in planning unequal_information deceleration euler_lagrange fisher_vs_adam exponent; do
    python3 "experiments/$name.py" --quick --device cuda --out /tmp/lagrl_gpu_claims
done
