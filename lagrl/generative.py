"""Small generative models, their data and one training loop: the tasks of the optimizer experiments
(``experiments/fisher_vs_adam.py``; :mod:`lagrl.exponent`, run by ``experiments/exponent.py`` and by
``lagrl sweep exponent``).

Two density models, each trained by maximum likelihood (loss = mean negative log-likelihood, THEORY §0):

- :class:`GaussianMixture`: an unconditional mixture of ``K`` diagonal Gaussians in ``R^d`` (learnable logits,
  means and log-scales), fit to draws from a fixed true mixture. It is small enough (``P = K(1 + 2d)``) for the
  full Fisher. ``lagrl.fisher`` takes a conditional model ``p(y | x)``; an unconditional one fits it as a model
  of constant dummy inputs ``x = 0`` whose distribution ignores ``x``, so the *true* Fisher is the expectation
  over draws ``y ~ p_θ`` of the model itself (checked in the tests against closed forms and a Hessian).
- :class:`CharacterMLP`: the next character of English text given the previous ``k`` (an embedding, one tanh
  layer, a softmax), on the documentation text that ships with Python (``pydoc_data.topics``; nothing is
  downloaded). Loss in nats per character on held-out splits.

A :class:`Method` is one optimizer of the ρ family (``lagrl.optim.LagrangianOptimizer``): Adam's own ``v̂`` as
the Fisher (``fisher="adam"``, which is ``torch.optim.Adam`` bit for bit at ρ = ½), or the true Fisher of the
model (``"diagonal"``, ``"full"``, ``"kfac"``) estimated on each minibatch's inputs with targets drawn from the
model and supplied through ``set_fisher``. :func:`train` runs one method at one peak step size, decayed linearly
to 0 over the run; :func:`grid_search` picks the best step size of one shared grid by the final validation loss.
"""

from __future__ import annotations

import bisect
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from lagrl.fisher import DiagonalFisher, fisher
from lagrl.optim import LagrangianOptimizer, NonFiniteGradientError

FISHER_DECAY = 0.95  # the EMA of the supplied true-Fisher estimates, K-FAC's usual running average
ADAM_EPS = 1e-8  # damping of Adam's own v̂: torch.optim.Adam's default
# Damping of every true-Fisher form (lagrl.optim: the matrix forms want ≈ 1e-3). The diagonal needs it too: a
# minibatch's true Fisher is exactly 0 where its inputs carry no information (an embedding row no context used),
# which Adam's ε would turn into a step of 1e8 · m̂; Adam's v̂ cannot vanish where its own gradient does not.
FISHER_EPS = 1e-3
ENERGY_BUDGET = 1e-3  # δ of step_rule="energy": ACKTR's KL clip per update, lagrl's A2C default


# ----------------------------------------------------------------------------------------------- models
def kmeans_plus_plus(data: Tensor, k: int) -> Tensor:
    """``k`` rows of ``data``: the first uniform, each next one with probability ``∝ min_j |x − c_j|²`` (Arthur and
    Vassilvitskii 2007), drawn from the global RNG."""
    chosen = [data[torch.randint(len(data), ())]]
    for _ in range(k - 1):
        distance = torch.cdist(data, torch.stack(chosen)).amin(dim=1).square()
        chosen.append(data[torch.multinomial(distance, 1)[0]])
    return torch.stack(chosen)


class GaussianMixture(nn.Module):
    """``p(y) = Σ_k softmax(logits)_k N(y; μ_k, diag(exp(2 log σ_k)))``, batched over dummy inputs ``(N, 1)``.

    Initialisation: equal weights; with ``data``, the means at ``K`` data points drawn by k-means++ seeding and
    every scale the data's standard deviation per coordinate, else standard normal means and unit scales.
    """

    def __init__(self, components: int, dim: int, data: Tensor | None = None) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(components))
        if data is None:
            means, log_scales = torch.randn(components, dim), torch.zeros(components, dim)
        else:
            means = kmeans_plus_plus(data.cpu(), components)
            log_scales = data.std(dim=0).log().cpu().expand(components, -1)
        self.means = nn.Parameter(means.clone())
        self.log_scales = nn.Parameter(log_scales.clone())

    def forward(self, inputs: Tensor) -> Distribution:
        """The mixture, repeated for each of the ``N`` rows of ``inputs`` (their values are ignored)."""
        n = inputs.shape[0]
        mixture = Categorical(logits=self.logits.expand(n, -1), validate_args=False)
        scales = self.log_scales.exp().expand(n, -1, -1)
        components = Independent(Normal(self.means.expand(n, -1, -1), scales, validate_args=False), 1)
        return MixtureSameFamily(mixture, components, validate_args=False)


class CharacterMLP(nn.Module):
    """``p(c_t | c_{t−k..t−1}) = softmax(W₂ tanh(W₁ [e(c_{t−k}), …, e(c_{t−1})] + b₁) + b₂)``."""

    def __init__(self, vocabulary: int, context: int, embedding: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, embedding)
        self.hidden = nn.Linear(context * embedding, hidden)
        self.out = nn.Linear(hidden, vocabulary)

    def forward(self, contexts: Tensor) -> Distribution:
        """The next-character distribution for each row of ``contexts`` ``(N, k)`` of character ids."""
        features = self.embed(contexts).flatten(1)
        return Categorical(logits=self.out(torch.tanh(self.hidden(features))), validate_args=False)


def nll(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """The loss ``−(1/N) Σ_i log p_θ(y_i | x_i)`` (nats per observation)."""
    return -model(inputs).log_prob(targets).mean()


# ----------------------------------------------------------------------------------------------- tasks
@dataclass
class Task:
    """A model family and its data: training pairs, a validation and a test split (all on one device)."""

    name: str
    label: str
    unit: str
    make_model: Callable[[], nn.Module]
    train: tuple[Tensor, Tensor]
    validation: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    batch_size: int
    forms: tuple[str, ...]  # the true-Fisher forms this model affords
    fisher_every: int = 1  # steps between true-Fisher estimates (K-FAC's practice of refreshing it now and then)
    fisher_samples: int = 1  # targets drawn from the model per minibatch input for each true-Fisher estimate
    floor: float | None = None  # the loss of the true distribution on the test split, where known
    settings: dict[str, Any] = field(default_factory=dict)


TRUE_MIXTURE = {  # four separated, unequal, anisotropic components: the Fisher of the means spans 1/σ² = 0.7–11
    "weights": [0.35, 0.3, 0.2, 0.15],
    "means": [[-3.0, -3.0], [3.0, -3.0], [-3.0, 3.0], [3.0, 3.0]],
    "scales": [[0.4, 1.2], [1.0, 0.5], [1.2, 0.8], [0.3, 0.3]],
}


def true_mixture() -> Distribution:
    """The fixed mixture the data are drawn from (``TRUE_MIXTURE``), as a distribution with empty batch shape."""
    weights, means, scales = (torch.tensor(TRUE_MIXTURE[key]) for key in ("weights", "means", "scales"))
    return MixtureSameFamily(Categorical(probs=weights), Independent(Normal(means, scales), 1))


def mixture_task(
    device: str,
    train_size: int = 4096,
    heldout_size: int = 10_000,
    batch_size: int = 64,
    fisher_every: int = 5,
    fisher_samples: int = 4,
) -> Task:
    """Maximum likelihood for a 4-component 2-D mixture on ``train_size`` draws; the floor is the true model's NLL."""
    truth = true_mixture()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)  # the data are fixed; seeds vary the initialisation and the minibatches
        draws = [truth.sample((n,)) for n in (train_size, heldout_size, heldout_size)]
    splits = [(torch.zeros(len(y), 1, device=device), y.to(device)) for y in draws]
    floor = float(-truth.log_prob(draws[2]).mean())
    components, dim = len(TRUE_MIXTURE["weights"]), len(TRUE_MIXTURE["means"][0])
    return Task(
        name="mixture",
        label=f"Gaussian mixture (K = {components}, d = {dim}, P = {components * (1 + 2 * dim)})",
        unit="nats",
        make_model=lambda: GaussianMixture(components, dim, draws[0]),
        train=splits[0],
        validation=splits[1],
        test=splits[2],
        batch_size=batch_size,
        forms=("diagonal", "full"),
        fisher_every=fisher_every,
        fisher_samples=fisher_samples,
        floor=floor,
        settings={"true_mixture": TRUE_MIXTURE, "train_size": train_size, "heldout_size": heldout_size},
    )


@cache
def _text() -> str:
    """Python's bundled documentation topics (``pydoc_data.topics``), concatenated in sorted order of their keys."""
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics))


def encode(text: str, min_count: int = 20) -> tuple[Tensor, list[str]]:
    """Character ids and the vocabulary: characters seen fewer than ``min_count`` times share one id, the last."""
    vocabulary = sorted(c for c, n in Counter(text).items() if n >= min_count)
    index = {c: i for i, c in enumerate(vocabulary)}
    other = len(vocabulary)
    return torch.tensor([index.get(c, other) for c in text]), vocabulary + ["<other>"]


def contexts(ids: Tensor, context: int) -> tuple[Tensor, Tensor]:
    """Rows ``(c_{t−k}, …, c_{t−1})`` and targets ``c_t`` for every ``t ≥ k`` of a sequence of ids."""
    return ids.unfold(0, context, 1)[:-1], ids[context:]


def character_task(
    device: str,
    context: int = 6,
    embedding: int = 12,
    hidden: int = 128,
    batch_size: int = 64,
    fisher_every: int = 10,
    heldout_size: int = 8192,
) -> Task:
    """Next-character MLP on ``pydoc_data.topics``: the first 90 % of the text trains, the next 5 % validates, the
    last 5 % tests (each held-out loss on a fixed random ``heldout_size`` of its positions)."""
    ids, vocabulary = encode(_text())
    cut = [0, int(0.9 * len(ids)), int(0.95 * len(ids)), len(ids)]
    splits = [contexts(ids[a:b], context) for a, b in zip(cut, cut[1:])]
    chosen = torch.Generator().manual_seed(12345)
    for i in (1, 2):
        keep = torch.randperm(len(splits[i][1]), generator=chosen)[:heldout_size]
        splits[i] = (splits[i][0][keep], splits[i][1][keep])
    splits = [(x.to(device), y.to(device)) for x, y in splits]
    parameters = len(vocabulary) * embedding + (context * embedding + 1) * hidden + (hidden + 1) * len(vocabulary)
    return Task(
        name="characters",
        label=f"character MLP (k = {context}, V = {len(vocabulary)}, P = {parameters})",
        unit="nats/char",
        make_model=lambda: CharacterMLP(len(vocabulary), context, embedding, hidden),
        train=splits[0],
        validation=splits[1],
        test=splits[2],
        batch_size=batch_size,
        forms=("diagonal", "kfac"),
        fisher_every=fisher_every,
        settings={
            "text": "pydoc_data.topics, keys sorted, 90/5/5 % contiguous split",
            "heldout_size": heldout_size,
            "characters": len(ids),
            "vocabulary": len(vocabulary),
            "context": context,
            "embedding": embedding,
            "hidden": hidden,
        },
    )


# ----------------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    """One optimizer of the ρ family: ``θ ← θ − η F̂^{-ρ} m̂`` (THEORY §5).

    ``fisher``: ``"adam"`` — ``F̂ = v̂``, the bias-corrected EMA (β2) of squared minibatch gradients (Adam's own
    estimate); ``"diagonal"``, ``"full"``, ``"kfac"`` — the true Fisher of the model in that form, estimated on
    each minibatch's inputs with targets drawn from the model, averaged with ``FISHER_DECAY``.
    ``step_rule="energy"``: ``η = sqrt(2δ / uᵀMu)`` (``δ = ENERGY_BUDGET``), the learning rate is not used.
    """

    name: str
    label: str
    rho: float
    fisher: str
    beta2: float = 0.999
    step_rule: str = "lr"

    @property
    def true_fisher(self) -> bool:
        return self.fisher != "adam"

    def optimizer(self, model: nn.Module, lr: float) -> LagrangianOptimizer:
        """The ``LagrangianOptimizer`` of this method for ``model``'s parameters."""
        form = "diagonal" if self.fisher == "adam" else self.fisher
        return LagrangianOptimizer(
            model.parameters(),
            lr=lr,
            rho=self.rho,
            betas=(0.9, self.beta2),
            eps=FISHER_EPS if self.true_fisher else ADAM_EPS,
            fisher=form,
            model=model if form == "kfac" else None,
            fisher_source="external" if self.true_fisher else "gradients",
            step_rule=self.step_rule,
            energy_budget=ENERGY_BUDGET,
        )


def true_fisher_estimates(
    model: nn.Module, inputs: Tensor, form: str, generator: torch.Generator, samples: int = 1
) -> dict[Tensor, Any]:
    """``F = E_x E_{y ~ p_θ(·|x)}[∇log p ∇log pᵀ]`` over the rows of ``inputs``, ``samples`` draws of ``y`` per row,
    keyed as ``LagrangianOptimizer.set_fisher`` takes it (K-FAC: ``nn.Linear`` weights, the rest diagonal)."""
    parameters = dict(model.named_parameters())
    common = dict(kind="true", generator=generator, num_samples=samples)
    if form == "full":
        return {next(iter(parameters.values())): fisher(model, inputs, form="full", **common)}
    if form == "diagonal":
        estimates = fisher(model, inputs, form="diagonal", **common)
        return {parameters[name]: estimate for name, estimate in estimates.items()}
    modules = dict(model.named_modules())
    blocks = fisher(model, inputs, form="kfac", **common)
    covered = {f"{name}.{suffix}" for name in blocks for suffix in ("weight", "bias")}
    rest = [name for name in parameters if name not in covered]
    diagonal: dict[str, DiagonalFisher] = fisher(model, inputs, form="diagonal", params=rest, **common) if rest else {}
    return {modules[name].weight: block for name, block in blocks.items()} | {
        parameters[name]: estimate for name, estimate in diagonal.items()
    }


# ----------------------------------------------------------------------------------------------- training
@dataclass
class Run:
    """One training run: held-out losses at ``steps`` after ``seconds`` of training (evaluation not counted),
    the final loss of every held-out split, and the final parameters (flattened, on the CPU)."""

    steps: list[int]
    seconds: list[float]
    losses: list[float]
    diverged: str | None = None
    finals: dict[str, float] = field(default_factory=dict)
    parameters: Tensor | None = None

    @property
    def final(self) -> float:
        """The last held-out loss (``inf`` for a run that diverged)."""
        return math.inf if self.diverged else self.losses[-1]

    def loss_at(self, seconds: float) -> float:
        """The held-out loss after ``seconds`` of training, linear between evaluations; the final loss after the
        run's end (``inf`` there for a diverged run)."""
        if not self.seconds or seconds >= self.seconds[-1]:
            return self.final
        after = bisect.bisect_right(self.seconds, seconds)
        (t0, t1), (l0, l1) = self.seconds[after - 1 : after + 1], self.losses[after - 1 : after + 1]
        return l1 if t1 == t0 else l0 + (l1 - l0) * (seconds - t0) / (t1 - t0)


def _clock(device: str) -> float:
    """The training clock: on CUDA the wall clock once the device has finished its queued work; on the CPU this
    process's CPU time, which for one thread is the wall time of an idle core and is not inflated by other
    processes sharing the host."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def _flat(model: nn.Module) -> Tensor:
    """All parameters of ``model``, flattened and concatenated, copied to the CPU."""
    return torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()


def _heldout_loss(model: nn.Module, split: tuple[Tensor, Tensor]) -> float:
    """The mean NLL of a held-out split, without gradients."""
    with torch.no_grad():
        return float(nll(model, *split))


def _step(
    model: nn.Module,
    optimizer: LagrangianOptimizer,
    method: Method,
    inputs: Tensor,
    targets: Tensor,
    draws: torch.Generator | None,
    samples: int,
) -> str | None:
    """One optimizer step on a minibatch (the true Fisher blended in first where ``draws`` is given); ``None``, or
    why the run diverged (it stops there)."""
    optimizer.zero_grad()
    loss = nll(model, inputs, targets)
    if not torch.isfinite(loss):
        return "non-finite loss"
    loss.backward()
    try:
        if draws is not None:
            estimates = true_fisher_estimates(model, inputs, method.fisher, draws, samples)
            optimizer.set_fisher(estimates, decay=FISHER_DECAY)
        optimizer.step()
    except (NonFiniteGradientError, ValueError) as error:  # a Fisher or a gradient of a run that blew up
        return str(error)[:120]
    return None


def train(
    task: Task,
    method: Method,
    lr: float,
    seed: int,
    steps: int,
    device: str,
    split: str = "validation",
    evaluations: int = 1,
    trajectory: list[Tensor] | None = None,
) -> Run:
    """Train a fresh model (initialised from ``seed``) for ``steps`` minibatches drawn with replacement, the step
    size decayed linearly from ``lr`` to 0 (``lr · (1 − t/steps)`` at step ``t + 1``).

    Held-out loss on ``split`` at ``evaluations + 1`` evenly spaced steps from 0 to ``steps`` (only at ``steps``
    where ``evaluations = 1``), with the training time before it (:func:`_clock`, evaluations not counted). For a
    true Fisher, every ``task.fisher_every`` steps an estimate at the current θ on the minibatch's inputs is
    blended into the optimizer's (``set_fisher(decay=FISHER_DECAY)``) before the step.
    ``trajectory`` (optional) receives the flattened parameters after every step.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.make_model().to(device)
    optimizer = method.optimizer(model, lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: 1 - done / steps)
    batches = torch.Generator().manual_seed(seed)
    draws = torch.Generator().manual_seed(seed + 1_000_003)
    inputs, targets = task.train
    heldout = getattr(task, split)
    marks = {round(steps * i / evaluations) for i in range(evaluations + 1)} if evaluations > 1 else {steps}
    run, elapsed = Run([], [], []), 0.0
    if 0 in marks:
        run.steps, run.seconds, run.losses = [0], [0.0], [_heldout_loss(model, heldout)]
    segment = _clock(device)  # the clock runs between evaluations only
    for step in range(1, steps + 1):
        index = torch.randint(len(inputs), (task.batch_size,), generator=batches).to(device)
        refresh = method.true_fisher and (step - 1) % task.fisher_every == 0
        batch = inputs[index], targets[index]
        run.diverged = _step(model, optimizer, method, *batch, draws if refresh else None, task.fisher_samples)
        if run.diverged:
            run.diverged = f"step {step}: {run.diverged}"
            break
        schedule.step()
        if trajectory is not None:
            trajectory.append(_flat(model))
        if step in marks:
            elapsed += _clock(device) - segment
            heldout_loss = _heldout_loss(model, heldout)
            if not math.isfinite(heldout_loss):
                run.diverged = f"non-finite held-out loss at step {step}"
                break
            run.steps.append(step)
            run.seconds.append(elapsed)
            run.losses.append(heldout_loss)
            segment = _clock(device)
    run.parameters = _flat(model)
    if not run.diverged:
        run.finals = {name: _heldout_loss(model, getattr(task, name)) for name in ("validation", "test")}
    return run


def grid_search(evaluate: Callable[[float], float], grid: list[float], start: int) -> tuple[int, dict[int, float]]:
    """The best step size of ``grid`` by a downhill walk: from ``grid[start]``, move to the best evaluated point
    until it is lower than both its neighbours or lies at an end of the grid.

    Returns the index of ``argmin evaluate`` over the evaluated points — the grid's argmin where ``evaluate``
    is unimodal in ``log η`` — and every value computed, by grid index (``inf`` for a diverged run). Where every
    evaluated point diverged the walk steps towards smaller ``η``.
    """
    values: dict[int, float] = {}
    current = start
    while True:
        for index in (current - 1, current, current + 1):
            if 0 <= index < len(grid) and index not in values:
                values[index] = evaluate(grid[index])
        best = min(values, key=lambda index: (values[index], index))
        if math.isinf(values[best]):
            best = min(values) - 1
            if best < 0:
                return min(values), values
        if best == current:
            return best, values
        current = best


def log_grid(low: float, high: float, per_decade: int) -> list[float]:
    """``low · 10^{i/per_decade}`` up to ``high``: a log-spaced grid of step sizes."""
    count = round(per_decade * math.log10(high / low))
    return [float(f"{low * 10 ** (i / per_decade):.3g}") for i in range(count + 1)]


STEP_SIZES = log_grid(1e-6, 10.0, 2)  # the one grid every method of both experiments picks its step size from


def paired_difference(ours: list[float], reference: list[float]) -> dict[str, float]:
    """Per-seed ``d_s = ours_s − reference_s``: their median, mean and standard error ``std(d)/√S``."""
    differences = [a - b for a, b in zip(ours, reference)]
    finite = all(math.isfinite(d) for d in differences)
    spread = statistics.stdev(differences) / math.sqrt(len(differences)) if finite and len(differences) > 1 else 0.0
    return {
        "median": statistics.median(differences),
        "mean": statistics.fmean(differences) if finite else math.inf,
        "standard_error": spread,
    }


def not_worse(difference: dict[str, float]) -> bool:
    """Lower, or equal within noise: the median paired difference is at most two standard errors."""
    return difference["median"] <= 2 * difference["standard_error"]


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (a diverged run's ``inf``) replaced by ``None``, lists and dicts walked."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
