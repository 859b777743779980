"""lagrl: the Learning Lagrangian (Guo & Schölkopf, arXiv 2509.21049) as tested PyTorch software.

The core modules are pure torch, one concept each (see ``shared/THEORY.md`` for the equations and
for which choices are lagrl's own reading of the paper):

- :mod:`lagrl.kinematics`  information position, velocity and acceleration (§2, Eq. 1)
- :mod:`lagrl.fisher`      Fisher information estimators and representations, ``F^-ρ`` (Eqs. 23–24)
- :mod:`lagrl.legendre`    Legendre maps: velocity ↔ momentum ↔ gradient; convex conjugates
- :mod:`lagrl.lagrangian`  the Learning Lagrangian, energy, action, Euler–Lagrange check (Eqs. 26–30)
- :mod:`lagrl.optim`       ``torch.optim`` optimizers of the ρ family: Adam and RMSprop as presets
"""

__version__ = "0.1.0"
