"""Random test inputs shared by the test modules (float64, seeded, on any device)."""

import torch

F64 = torch.float64


def randn(*shape: int, seed: int = 0, device="cpu") -> torch.Tensor:
    """Standard normal float64 tensor from its own seeded generator."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(device)


def random_spd(n: int, seed: int, device, shift: float = 0.5) -> torch.Tensor:
    """A random symmetric positive definite ``n × n`` matrix ``a aᵀ + shift·I``."""
    a = randn(n, n, seed=seed, device=device)
    return a @ a.T + shift * torch.eye(n, dtype=F64, device=device)
