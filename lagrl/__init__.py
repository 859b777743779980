"""lagrl: the Learning Lagrangian (Guo & Schölkopf, arXiv 2509.21049) as tested PyTorch software.

The core modules are pure torch, one concept each (see ``shared/THEORY.md`` for the equations and
for which choices are lagrl's own reading of the paper):

- :mod:`lagrl.kinematics`  information position, velocity and acceleration (§2, Eq. 1)
- :mod:`lagrl.fisher`      Fisher information estimators and representations, ``F^-ρ`` (Eqs. 23–24)
- :mod:`lagrl.legendre`    Legendre maps: velocity ↔ momentum ↔ gradient; convex conjugates
- :mod:`lagrl.lagrangian`  the Learning Lagrangian, energy, action, Euler–Lagrange check (Eqs. 26–30)
- :mod:`lagrl.optim`       ``torch.optim`` optimizers of the ρ family: Adam and RMSprop as presets
- :mod:`lagrl.mdp`         the tabular MDP value type, validation, Gymnasium ``P`` tables
- :mod:`lagrl.hamiltonian` ``H = r + fᵀλ``, costates, Pontryagin; the tabular Hamiltonian (Eqs. 10–15)
- :mod:`lagrl.bellman`     batched Bellman solvers with certified error bounds
- :mod:`lagrl.flows`       Lagrangian-derived flows to the Bellman fixed point (LP saddle, NPG, ρ = ½ PG)

On top: :mod:`lagrl.equivalence` (exact checks), :mod:`lagrl.verify` and :mod:`lagrl.cli` (``lagrl``),
:mod:`lagrl.trajectory` (TensorBoard); Gymnasium environments in :mod:`lagrl.envs`.
"""

__version__ = "0.1.0"
