r"""Fitting energy-based distributions to data by stochastic maximum likelihood.

:func:`fit` maximizes the average log-likelihood of the data with minibatch gradient steps.
Each step draws negative samples with an estimator (:class:`~numpyro_ebm.infer.PCD` by
default), attaches them with
:meth:`~numpyro_ebm.distributions.base.EnergyBasedDistribution.with_negative_samples`, and
differentiates ``-mean(log_prob(batch))``, whose gradient is ``-(Delta1 - Delta2)``:

.. math::

    \nabla_\theta \frac{1}{B}\sum_{b} \log p_\theta(x_b)
    = \underbrace{-\frac{1}{B}\sum_b \nabla_\theta E_\theta(x_b)}_{\Delta_1}
    \; - \; \underbrace{\Big(-\frac{1}{K}\sum_k \nabla_\theta E_\theta(\tilde x_k)\Big)}_{
    \Delta_2 \,\approx\, \nabla_\theta \log Z_\theta},

with ``E`` the energy of the visible units (the free energy of RBMs), ``x_b`` the minibatch
and ``x~_k`` the estimator's draws. An epoch is one compiled call (a ``lax.scan`` over the
minibatches), checkpoints make runs resumable bit for bit, and a non-finite parameter stops
training with :class:`TrainingDivergedError` holding the last finite model.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax, random
from numpyro.distributions.transforms import biject_to

from numpyro_ebm.diagnostics import (
    QUANTITIES,
    MixingError,
    MixingWarning,
    Monitor,
    _positive,
    diagnose,
)
from numpyro_ebm.distributions.base import EnergyBasedDistribution
from numpyro_ebm.distributions.constraints import symmetric_zero_diagonal
from numpyro_ebm.exact import exact_log_partition
from numpyro_ebm.infer.estimators import PCD
from numpyro_ebm.io import (
    FORMAT_VERSION,
    _package_version,
    model_entries,
    model_from_entries,
    read_npz,
    write_npz,
)

__all__ = [
    "EXACT_EVAL_MAX_STATES",
    "PROJECTIONS",
    "Checkpoint",
    "FitHistory",
    "TrainingDivergedError",
    "default_optimizer",
    "evaluate",
    "fit",
    "load_checkpoint",
]

#: Models whose exact enumeration visits at most this many states are evaluated with the
#: exact held-out log-likelihood; larger ones with a proxy (see :func:`evaluate`).
EXACT_EVAL_MAX_STATES = 2**20

#: Defaults of :func:`fit` (measured on binarized scikit-learn digits, see its docstring).
DEFAULT_NUM_CHAINS = 100
DEFAULT_NUM_SWEEPS = 1
DEFAULT_LEARNING_RATE = 1e-2
DEFAULT_BATCH_SIZE = 32
DEFAULT_NUM_UPDATES = 20_000
DEFAULT_MAX_EPOCHS = 1000


class TrainingDivergedError(FloatingPointError):
    """Training produced NaN or Inf parameters.

    Attributes
    ----------
    distribution : EnergyBasedDistribution
        The model with the last finite parameters (after epoch :attr:`epoch`).
    history : FitHistory
        The history up to that epoch.
    epoch : int
        Number of epochs completed with finite parameters.
    """

    def __init__(self, message: str, distribution, history, epoch: int):
        super().__init__(message)
        self.distribution = distribution
        self.history = history
        self.epoch = epoch


class FitHistory(NamedTuple):
    """Per-epoch record of a :func:`fit` run (numpy arrays, one row per epoch).

    epoch : ``(E,)`` int, the number of epochs completed at each row (1, 2, ...).
    loss : ``(E,)`` free-energy gap ``mean E(batch) - mean E(negative samples)``, averaged
        over the epoch's updates (and batch members); it is the training objective up to the
        unknown ``log Z``: its parameter gradient is exactly the one used.
    grad_norm : ``(E,)`` mean global norm of the gradient (unconstrained parameters).
    sample_energy : ``(E,)`` mean energy of the negative samples.
    swap_rate : ``(E, num_pairs)`` mean swap acceptance per adjacent temperature pair
        (parallel tempering; ``num_pairs == 0`` for other estimators).
    eval_metric : ``(E,) + batch_shape``, the held-out metric named by
        ``eval_metric_name``; NaN on epochs without evaluation.
    wall_time : ``(E,)`` seconds spent on each epoch, evaluation included (the first epoch
        includes compilation).
    eval_metric_name : ``"log_likelihood"`` (exact, per example), ``"pseudo_log_likelihood"``
        or ``"reconstruction_error"`` (see :func:`evaluate`), or ``""`` without eval data.

    With a :class:`~numpyro_ebm.diagnostics.Monitor`, one row per diagnosis (``D`` rows;
    empty otherwise), columns of the ``(D, 2)`` arrays in the order of
    :data:`~numpyro_ebm.diagnostics.QUANTITIES` (energy, mean activation):

    monitor_epoch : ``(D,)`` epochs completed at each diagnosis.
    monitor_rhat, monitor_ess_bulk : ``(D, 2)`` R-hat and bulk ESS of the chains (worst
        over batch members).
    monitor_num_stuck : ``(D, 2)`` chains whose quantity never changed.
    monitor_ok : ``(D,)`` the verdict.
    monitor_action : ``(D,)`` what was done: ``""`` (passed), ``"warn"``, ``"raise"``,
        ``"add_sweeps"`` or ``"add_chains"``.
    monitor_num_sweeps, monitor_num_chains : ``(D,)`` the estimator's ``num_sweeps`` and
        ``num_chains`` after the action (-1 where it has none).
    """

    epoch: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    sample_energy: np.ndarray
    swap_rate: np.ndarray
    eval_metric: np.ndarray
    wall_time: np.ndarray
    eval_metric_name: str = ""
    monitor_epoch: np.ndarray = np.zeros((0,), np.int64)
    monitor_rhat: np.ndarray = np.zeros((0, len(QUANTITIES)))
    monitor_ess_bulk: np.ndarray = np.zeros((0, len(QUANTITIES)))
    monitor_num_stuck: np.ndarray = np.zeros((0, len(QUANTITIES)), np.int64)
    monitor_ok: np.ndarray = np.zeros((0,), bool)
    monitor_action: np.ndarray = np.zeros((0,), "<U10")
    monitor_num_sweeps: np.ndarray = np.zeros((0,), np.int64)
    monitor_num_chains: np.ndarray = np.zeros((0,), np.int64)


_HISTORY_ARRAYS = (
    "epoch",
    "loss",
    "grad_norm",
    "sample_energy",
    "swap_rate",
    "eval_metric",
    "wall_time",
)

_MONITOR_ARRAYS = (
    "monitor_epoch",
    "monitor_rhat",
    "monitor_ess_bulk",
    "monitor_num_stuck",
    "monitor_ok",
    "monitor_action",
    "monitor_num_sweeps",
    "monitor_num_chains",
)


class Checkpoint(NamedTuple):
    """The content of a training checkpoint (see :func:`load_checkpoint`).

    params : unconstrained parameters by name (what the optimizer updates).
    opt_leaves, chain_leaves : leaves of the optimizer state and of the estimator state.
    epoch : epochs completed.
    rng_key : the key of the run (per-epoch keys are folded in from it).
    history : the :class:`FitHistory` so far.
    class_name : the model's class.
    distribution : the model itself, or ``None`` for families :mod:`numpyro_ebm.io` cannot
        store.
    batch_size : the minibatch size of the run.
    """

    params: dict[str, np.ndarray]
    opt_leaves: list[np.ndarray]
    chain_leaves: list[np.ndarray]
    epoch: int
    rng_key: Any
    history: FitHistory
    class_name: str
    distribution: Any
    batch_size: int


# ---------------------------------------------------------------------- constraints
def _project_symmetric_zero_diagonal(distribution, value):
    """Symmetrize, zero the diagonal, and keep units of one colour uncoupled (so the
    distribution's block-Gibbs colouring, static data, stays valid)."""
    n = value.shape[-1]
    mask = ~np.eye(n, dtype=bool)
    colors = getattr(distribution, "coloring", None)
    if colors is not None and np.shape(colors) == (n,):
        colors = np.asarray(colors)
        mask &= colors[:, None] != colors[None, :]
    sym = 0.5 * (value + jnp.swapaxes(value, -1, -2))
    return jnp.where(mask, sym, jnp.zeros((), value.dtype))


#: How :func:`fit` keeps a parameter inside a constraint that has no bijection from the
#: reals (``biject_to`` raises): a projection ``fn(distribution, value) -> value`` applied
#: after every update, keyed by the constraint's type. A family may instead define
#: ``project_parameters(params: dict) -> dict``, which takes precedence.
PROJECTIONS: dict[type, Callable[[Any, jax.Array], jax.Array]] = {
    type(symmetric_zero_diagonal): _project_symmetric_zero_diagonal,
}


#: Constraints used for training where a family declares a looser one than it enforces.
#: PottsModel documents symmetric, zero-diagonal couplings (validated in its constructor)
#: but declares them ``independent(real, 2)``.
class _Parameterization(NamedTuple):
    names: tuple[str, ...]
    transforms: dict[str, Any]  # name -> numpyro Transform (constrained = t(unconstrained))
    projections: dict[str, Callable]


def _constraint_of(distribution, name):
    return distribution.arg_constraints.get(name)


def _parameterization(distribution) -> _Parameterization:
    params = _trainable(distribution)
    transforms, projections = {}, {}
    for name in params:
        constraint = _constraint_of(distribution, name)
        transform = None
        if constraint is not None:
            try:
                transform = biject_to(constraint)
            except NotImplementedError:
                projection = PROJECTIONS.get(type(constraint))
                if projection is None and not hasattr(distribution, "project_parameters"):
                    raise ValueError(
                        f"fit cannot keep {type(distribution).__name__}.{name} inside its "
                        f"constraint {constraint}: it has no bijection (biject_to) and no "
                        "projection. Register one in numpyro_ebm.train.PROJECTIONS or define "
                        "project_parameters on the family."
                    ) from None
                if projection is not None:
                    projections[name] = projection
        transforms[name] = transform
    return _Parameterization(tuple(params), transforms, projections)


def _trainable(distribution) -> dict[str, jax.Array]:
    out = {}
    for name, value in distribution.energy_parameters().items():
        if value is None:
            continue
        value = jnp.asarray(value)
        if jnp.issubdtype(value.dtype, jnp.floating):
            out[name] = value
    if not out:
        raise ValueError(
            f"{type(distribution).__name__} has no floating-point energy parameters to fit."
        )
    return out


def _to_unconstrained(param: _Parameterization, params):
    return {
        n: params[n] if param.transforms[n] is None else param.transforms[n].inv(params[n])
        for n in param.names
    }


def _to_constrained(param: _Parameterization, u):
    return {n: u[n] if param.transforms[n] is None else param.transforms[n](u[n]) for n in u}


def _project(param: _Parameterization, distribution, u):
    if hasattr(distribution, "project_parameters"):
        constrained = distribution.project_parameters(_to_constrained(param, u))
        return {**u, **_to_unconstrained(param, constrained)}
    return {
        n: param.projections[n](distribution, v) if n in param.projections else v
        for n, v in u.items()
    }


def _with_parameters(distribution, params):
    """``distribution`` with ``params`` (constrained) replacing its energy parameters."""
    return distribution.with_parameters(**params)


def _without_log_partition(distribution):
    data, aux = distribution.tree_flatten()
    new = type(distribution).tree_unflatten(aux, data)
    new._log_partition_value = None  # an attached log Z is stale once parameters move
    new._negative_samples = None
    return new


# ---------------------------------------------------------------------- evaluation
def _eval_mode(distribution) -> str:
    try:
        if distribution.num_enumerated_states <= EXACT_EVAL_MAX_STATES:
            return "log_likelihood"
    except NotImplementedError:
        pass
    if distribution.is_discrete and len(distribution.support_values) >= 2:
        return "pseudo_log_likelihood"
    return "reconstruction_error"


def _evaluate(mode: str, rng_key, distribution, data) -> jax.Array:
    if mode == "log_likelihood":
        log_z = exact_log_partition(distribution)
        return jnp.mean(-distribution.energy(data), axis=0) - log_z
    if mode == "pseudo_log_likelihood":
        shape = distribution.batch_shape + distribution.event_shape
        num_units = math.prod(distribution.event_shape)
        flat = data.reshape(data.shape[: 1 + len(distribution.batch_shape)] + (num_units,))
        unit = random.randint(rng_key, flat.shape[:-1], 0, num_units)
        hit = jax.nn.one_hot(unit, num_units, dtype=bool)
        neg = [
            -distribution.energy(
                jnp.where(hit, jnp.asarray(v, flat.dtype), flat).reshape((-1,) + shape)
            )
            for v in distribution.support_values
        ]
        log_cond = -distribution.energy(data) - jax.nn.logsumexp(jnp.stack(neg), axis=0)
        return num_units * jnp.mean(log_cond, axis=0)
    recon = distribution.gibbs_sweep(rng_key, data)
    axes = tuple(range(data.ndim - len(distribution.event_shape), data.ndim))
    return jnp.mean(jnp.mean((recon - data) ** 2, axis=axes), axis=0)


def evaluate(
    rng_key: jax.Array, distribution: EnergyBasedDistribution, data: Any
) -> tuple[str, jax.Array]:
    """The metric :func:`fit` tracks on held-out data, shape ``batch_shape``.

    - ``"log_likelihood"``: the exact average log-likelihood ``mean(-E(x)) - log Z`` when
      exact enumeration visits at most :data:`EXACT_EVAL_MAX_STATES` states (for RBMs,
      ``2 ** min(num_visible, num_hidden)``); higher is better.
    - ``"pseudo_log_likelihood"`` for larger discrete models: ``num_units`` times the log
      conditional of one random unit per example given the others (the stochastic estimate
      of ``sum_i log p(x_i | x_-i)`` that scikit-learn's ``BernoulliRBM.score_samples``
      uses); higher is better.
    - ``"reconstruction_error"`` for larger continuous models: mean squared difference
      between the data and one Gibbs sweep started at it; lower is better.

    Returns ``(name, value)``.
    """
    mode = _eval_mode(distribution)
    data = _check_data("data", distribution, data)
    data = data.astype(distribution.chain_dtype)
    return mode, _evaluate(mode, rng_key, distribution, data)


# ---------------------------------------------------------------------- validation
def _check_data(name: str, distribution, data) -> jax.Array:
    expected = distribution.batch_shape + distribution.event_shape
    shape = np.shape(data)
    if len(shape) != len(expected) + 1 or tuple(shape[1:]) != expected:
        raise ValueError(
            f"{name} must have shape (num_examples,) + batch_shape + event_shape = "
            f"(num_examples,) + {expected} for this {type(distribution).__name__}; got shape "
            f"{shape}."
        )
    if shape[0] < 1:
        raise ValueError(f"{name} must hold at least one example; got shape {shape}.")
    data = jnp.asarray(data)
    if not (
        jnp.issubdtype(data.dtype, jnp.floating)
        or jnp.issubdtype(data.dtype, jnp.integer)
        or data.dtype == jnp.bool_
    ):
        raise ValueError(f"{name} must be numeric; got dtype {data.dtype}.")
    if data.dtype == jnp.bool_:
        data = data.astype(jnp.int32)
    distribution._check_value(data)  # support values: the family's own error message
    if jnp.issubdtype(data.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(data))):
        raise ValueError(f"{name} contains NaN or Inf; clean or impute it first.")
    return data


def _key_data(rng_key) -> tuple[np.ndarray, str]:
    if jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        return np.asarray(random.key_data(rng_key)), str(random.key_impl(rng_key))
    return np.asarray(rng_key), ""


def _key_from(data: np.ndarray, impl: str):
    if impl:
        return random.wrap_key_data(jnp.asarray(data), impl=impl)
    return jnp.asarray(data)


# ---------------------------------------------------------------------- checkpoints
def _empty_history(eval_shape: tuple[int, ...], num_pairs: int, name: str) -> FitHistory:
    return FitHistory(
        np.zeros((0,), np.int64),
        np.zeros((0,)),
        np.zeros((0,)),
        np.zeros((0,)),
        np.zeros((0, num_pairs)),
        np.zeros((0,) + eval_shape),
        np.zeros((0,)),
        name,
    )


def _append(history: FitHistory, row: dict) -> FitHistory:
    out = {}
    for field in _HISTORY_ARRAYS:
        old = getattr(history, field)
        new = np.asarray(row[field], dtype=old.dtype)[None]
        if old.shape[1:] != new.shape[1:]:
            if old.shape[0] == 0:
                old = old.reshape((0,) + new.shape[1:])
            else:
                raise ValueError(f"history field {field} changed shape: {old.shape} {new.shape}")
        out[field] = np.concatenate([old, new])
    return history._replace(**out)


def _append_monitor(history: FitHistory, row: dict) -> FitHistory:
    out = {}
    for field in _MONITOR_ARRAYS:
        old = getattr(history, field)
        new = np.asarray(row[field])
        new = new.astype(old.dtype if old.dtype.kind != "U" else new.dtype)[None]
        out[field] = np.concatenate([old, new])
    return history._replace(**out)


def _save_checkpoint(
    path, *, distribution, u, opt_state, est_state, epoch, key, history, batch_size
):
    arrays = {}
    names = sorted(u)
    for i, name in enumerate(names):
        arrays[f"param/{i}"] = np.asarray(u[name])
    opt_leaves = jax.tree.leaves(opt_state)
    chain_leaves = jax.tree.leaves(est_state)
    for i, leaf in enumerate(opt_leaves):
        arrays[f"opt/{i}"] = np.asarray(leaf)
    for i, leaf in enumerate(chain_leaves):
        arrays[f"chains/{i}"] = np.asarray(leaf)
    for field in _HISTORY_ARRAYS + _MONITOR_ARRAYS:
        arrays[f"history/{field}"] = getattr(history, field)
    key_data, key_impl = _key_data(key)
    arrays["rng_key"] = key_data
    model = None
    try:
        model_arrays, model = model_entries(distribution, prefix="model/")
        arrays.update(model_arrays)
    except ValueError:
        model = None  # a family io cannot store (EnergyDistribution): parameters only
    metadata = {
        "format_version": FORMAT_VERSION,
        "kind": "checkpoint",
        "package_version": _package_version(),
        "class": type(distribution).__name__,
        "param_names": names,
        "num_opt_leaves": len(opt_leaves),
        "num_chain_leaves": len(chain_leaves),
        "epoch": int(epoch),
        "rng_key_impl": key_impl,
        "eval_metric_name": history.eval_metric_name,
        "batch_size": int(batch_size),
        "model": model,
        "model_prefix": "model/",
    }
    write_npz(path, arrays, metadata, overwrite=True)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`fit` (no pickle); ``ValueError`` naming the file
    if it is not one or is damaged."""
    path = os.fspath(path)
    arrays, meta = read_npz(path)
    if meta.get("kind") != "checkpoint":
        raise ValueError(
            f"{path} is a numpyro_ebm {meta.get('kind', 'file')!r} file, not a training "
            "checkpoint; use numpyro_ebm.io.load for saved models."
        )
    try:
        names = list(meta["param_names"])
        params = {name: arrays[f"param/{i}"] for i, name in enumerate(names)}
        opt = [arrays[f"opt/{i}"] for i in range(int(meta["num_opt_leaves"]))]
        chains = [arrays[f"chains/{i}"] for i in range(int(meta["num_chain_leaves"]))]
        history = FitHistory(
            **{f: arrays[f"history/{f}"] for f in _HISTORY_ARRAYS},
            eval_metric_name=str(meta["eval_metric_name"]),
        )
        # Checkpoints written before the monitor existed have no monitor rows.
        history = history._replace(
            **{f: arrays[f"history/{f}"] for f in _MONITOR_ARRAYS if f"history/{f}" in arrays}
        )
        key = _key_from(arrays["rng_key"], str(meta["rng_key_impl"]))
        epoch = int(meta["epoch"])
        class_name = str(meta["class"])
        batch_size = int(meta["batch_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is an incomplete training checkpoint: missing {exc}") from None
    distribution = None
    if meta.get("model") is not None:
        distribution = model_from_entries(path, arrays, meta["model"], prefix="model/")
    return Checkpoint(
        params, opt, chains, epoch, key, history, class_name, distribution, batch_size
    )


def _restore(path, leaves, template_tree, what: str):
    ref_leaves, treedef = jax.tree.flatten(template_tree)
    if len(leaves) != len(ref_leaves):
        raise ValueError(
            f"checkpoint {path} does not match this run: its {what} has {len(leaves)} arrays, "
            f"this run's has {len(ref_leaves)} (a different optimizer or estimator?). Use the "
            "same settings to resume, or another checkpoint path to start afresh."
        )
    out = []
    for i, (leaf, ref) in enumerate(zip(leaves, ref_leaves, strict=True)):
        if tuple(leaf.shape) != tuple(ref.shape) or leaf.dtype != ref.dtype:
            raise ValueError(
                f"checkpoint {path} does not match this run: {what} array {i} has shape "
                f"{tuple(leaf.shape)} and dtype {leaf.dtype}, this run needs {tuple(ref.shape)} "
                f"and {ref.dtype} (a different model size or settings?). Use another checkpoint "
                "path to start afresh."
            )
        out.append(jnp.asarray(leaf))
    return jax.tree.unflatten(treedef, out)


# ---------------------------------------------------------------------- the epoch program
def _make_epoch(param, estimator, optimizer, batch_size, num_batches, eval_mode):
    def dist_of(template, u):
        return _with_parameters(template, _to_constrained(param, u))

    def step(template, data, carry, inputs):
        u, opt_state, est_state = carry
        key, idx = inputs
        batch = data[idx].astype(template.chain_dtype)
        dist = dist_of(template, u)
        samples, est_state, info = estimator.step(key, est_state, dist, batch)
        samples = lax.stop_gradient(samples)

        def loss_fn(u):
            # log Z's value is irrelevant here (pinned to 0 so no enumeration runs); its
            # gradient is the negative phase of the attached samples.
            model = dist_of(template, u).with_log_partition(0.0)
            log_p = model.with_negative_samples(samples).log_prob(batch)
            energy_samples = jnp.mean(model.energy(samples), axis=0)
            return -jnp.sum(jnp.mean(log_p, axis=0)), energy_samples

        (loss, energy_samples), grads = jax.value_and_grad(loss_fn, has_aux=True)(u)
        updates, opt_state = optimizer.update(grads, opt_state, u)
        u = _project(param, template, optax.apply_updates(u, updates))
        num_members = max(math.prod(template.batch_shape), 1)
        swap = getattr(info, "swap_rate", None)
        swap = jnp.zeros((0,)) if swap is None else jnp.reshape(swap, (-1,))
        metrics = {
            "loss": (loss - jnp.sum(energy_samples)) / num_members,
            "grad_norm": optax.tree.norm(grads),
            "sample_energy": jnp.mean(energy_samples),
            "swap_rate": swap.astype(jnp.float32),
        }
        return (u, opt_state, est_state), metrics

    def run_epoch(u, opt_state, est_state, template, data, epoch_key):
        key_perm, key_steps = random.split(epoch_key)
        perm = random.permutation(key_perm, data.shape[0])[: num_batches * batch_size]
        idx = perm.reshape(num_batches, batch_size)
        keys = random.split(key_steps, num_batches)
        carry, metrics = lax.scan(
            lambda c, x: step(template, data, c, x), (u, opt_state, est_state), (keys, idx)
        )
        u_new = carry[0]
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(v)) for v in u_new.values()]))
        summary = {
            "loss": jnp.mean(metrics["loss"]),
            "grad_norm": jnp.mean(metrics["grad_norm"]),
            "sample_energy": jnp.mean(metrics["sample_energy"]),
            "swap_rate": jnp.nanmean(metrics["swap_rate"], axis=0),
        }
        return carry, summary, finite

    def run_eval(u, template, data, key):
        return _evaluate(eval_mode, key, dist_of(template, u), data.astype(template.chain_dtype))

    return jax.jit(run_epoch), jax.jit(run_eval)


# ---------------------------------------------------------------------- fit
def default_optimizer(num_updates: int) -> optax.GradientTransformation:
    """The optimizer :func:`fit` uses by default: Adam whose learning rate decays linearly
    from :data:`DEFAULT_LEARNING_RATE` to zero over ``num_updates`` updates."""
    return optax.adam(optax.linear_schedule(DEFAULT_LEARNING_RATE, 0.0, num_updates))


def fit(
    rng_key: jax.Array,
    distribution: EnergyBasedDistribution,
    data: Any,
    *,
    estimator: Any = None,
    optimizer: optax.GradientTransformation | None = None,
    num_epochs: int | None = None,
    batch_size: int | None = None,
    eval_data: Any = None,
    eval_every: int = 1,
    callbacks: Callable | Sequence[Callable] = (),
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    progress_bar: bool = True,
    monitor: Monitor | None = None,
) -> tuple[EnergyBasedDistribution, FitHistory]:
    r"""Fit an energy-based distribution to data by stochastic maximum likelihood.

    Every update draws negative samples ``x~_k`` with ``estimator`` and takes an optimizer
    step along the gradient of the average log-likelihood of a minibatch ``x_b``,

    .. math::

        \nabla_\theta \frac1B \sum_b \log p_\theta(x_b) = -\frac1B\sum_b
        \nabla_\theta E_\theta(x_b) + \frac1K \sum_k \nabla_\theta E_\theta(\tilde x_k)
        \quad (\Delta_1 - \Delta_2),

    computed as ``jax.grad`` of ``-mean(distribution.with_negative_samples(x~).log_prob(x))``.
    Batched distributions (``batch_shape != ()``) fit one independent model per batch member
    (the per-member losses are summed, so each member gets its own average gradient).

    Parameters
    ----------
    rng_key : jax.Array
        Drives the estimator's initialization, the per-epoch shuffles and the chains. The
        key of epoch ``e`` is ``fold_in(key_train, e)``, so a run depends only on
        ``(rng_key, epoch)`` and resumes identically.
    distribution : EnergyBasedDistribution
        The initial model. Its energy parameters (``distribution.energy_parameters()``)
        are fitted; an attached ``log_partition`` is dropped (it would be stale).
    data : ArrayLike
        Training data, shape ``(num_examples,) + batch_shape + event_shape``, values in the
        support (binary models need 0/1 data: binarize first).
    estimator : CD, PCD, ParallelTempering or compatible, optional
        Source of the negative samples. Default ``PCD(num_chains=100, num_sweeps=1)``.
    optimizer : optax.GradientTransformation, optional
        Default :func:`default_optimizer`: Adam with a learning rate decaying linearly from
        ``1e-2`` to 0 over the run's ``num_epochs * (num_examples // batch_size)`` updates
        (so resuming with another ``num_epochs`` changes the schedule; pass your own
        optimizer to decouple them). Parameters are optimized in an unconstrained space:
        each goes through ``biject_to(arg_constraints[name])`` (for example ``exp`` for
        positive scales); constraints without a bijection are kept by a projection after
        every update (:data:`PROJECTIONS`: symmetric, zero-diagonal couplings are
        symmetrized, their diagonal zeroed, and units of one colour of the model's
        block-Gibbs colouring stay uncoupled).
    num_epochs : int, optional
        Total number of epochs (including any resumed from ``checkpoint``). Default: enough
        epochs for about 20,000 updates, at most 1000 (for 1,437 digits in batches of 32,
        455 epochs).
    batch_size : int, optional
        Minibatch size (static), at most ``num_examples``; default ``min(32, num_examples)``.
        Each epoch reshuffles the data with its key and drops the last
        ``num_examples % batch_size`` examples of the shuffle, so every update sees the same
        number of examples and shapes stay static (over epochs every example is used).
    eval_data : ArrayLike, optional
        Held-out data, shape like ``data``; evaluated every ``eval_every`` epochs and after
        the last one with :func:`evaluate` (the exact held-out log-likelihood when the model
        enumerates in at most :data:`EXACT_EVAL_MAX_STATES` states, else a proxy).
    eval_every : int
        Epochs between evaluations (default 1).
    callbacks : callable or sequence of callables
        Each called as ``callback(epoch, distribution, history)`` after every epoch, with
        ``epoch`` the number of epochs completed so far (1-based), the current model and the
        :class:`FitHistory` so far. A callback returning ``False`` (exactly ``False``, not
        ``None``) stops training after that epoch; the current model is returned (and
        checkpointed). Exceptions propagate (a checkpoint written before stays valid).
    checkpoint : str or os.PathLike, optional
        Path of an ``.npz`` checkpoint holding the unconstrained parameters, optimizer
        state, estimator chains, epoch, RNG key and history (and the model, readable with
        :func:`numpyro_ebm.io.load`), written atomically every ``checkpoint_every`` epochs
        and at the end. If the file exists, ``fit`` resumes from it: the rest of the run is
        bit-identical to an uninterrupted one with the same arguments. The checkpoint's key
        is used (a warning is issued if ``rng_key`` differs).
    checkpoint_every : int
        Epochs between checkpoints (default 1).
    progress_bar : bool
        Show a tqdm bar over epochs with the latest loss and evaluation.
    monitor : numpyro_ebm.diagnostics.Monitor, optional
        Diagnose the estimator's chains every ``monitor.every`` epochs (R-hat of their
        energy and mean activation over ``monitor.num_draws`` extra steps on a copy of the
        chains, so training is unchanged) and act when they mix poorly: warn, raise
        :class:`~numpyro_ebm.diagnostics.MixingError`, or double the estimator's sweeps or
        chains. The diagnoses are kept in ``history.monitor_*``.

    Returns
    -------
    distribution : EnergyBasedDistribution
        The fitted model (same class and static configuration).
    history : FitHistory
        Per-epoch metrics.

    Raises
    ------
    TrainingDivergedError
        (a ``FloatingPointError``) when an epoch leaves non-finite parameters; the error's
        ``distribution`` holds the last finite model, which is also what the checkpoint
        holds.

    Notes
    -----
    Each epoch is one compiled program (a ``lax.scan`` over the minibatches: estimator
    step, gradient, optimizer update, projection), traced once per ``fit`` call; the host
    synchronizes once per epoch (the finiteness check and the metrics).

    The defaults were measured on binarized scikit-learn digits (``load_digits().data > 7``,
    1,437 training and 360 held-out examples, 64 visible and 16 hidden units, weights
    ``0.01 * normal``, biases zero, 2 CPU cores; ``benchmarks/fit_digits.py``). Exact
    held-out log-likelihood per digit, mean of 2 seeds, 20,000 updates unless stated:

    - Adam ``1e-2`` constant: -21.1; decaying linearly to 0: **-18.0** (cosine decay the
      same); Adam ``3e-3``/``5e-3``/``2e-2``/``3e-2`` decaying: -18.4/-18.2/-18.1/-18.9;
      SGD with momentum 0.9 at ``0.03``/``0.1`` decaying: -18.2/-23.0.
    - 5,000/10,000/40,000 updates: -18.5/-18.1/-18.0 (the plateau is reached at 20,000,
      about 7-10 s including compilation: well within the one-minute budget).
    - PCD with 32/100/256 chains: -17.96/-18.0/-17.95 (256 costs 1.7x); 5 sweeps per
      update: -17.95 at 3x the time; batch size 16/32/64: -17.99/-18.0/-18.07; CD-1 does
      as well here (-18.0) but its gradient is biased in general, so PCD is the default.

    scikit-learn's ``BernoulliRBM`` with the same 16 hidden units, tuned on a validation
    split over learning rate, batch size and up to 1,000 iterations, reaches -18.4 (3
    seeds; the defaults here: -18.0).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.train import fit
    >>> data = jax.random.bernoulli(jax.random.key(0), 0.3, (64, 6)).astype(jnp.int32)
    >>> rbm = BernoulliRBM(0.01 * jax.random.normal(jax.random.key(1), (6, 3)))
    >>> rbm, history = fit(jax.random.key(2), rbm, data, num_epochs=3, batch_size=16,
    ...                    eval_data=data, progress_bar=False)
    >>> history.eval_metric.shape, history.eval_metric_name
    ((3,), 'log_likelihood')
    """
    if not isinstance(distribution, EnergyBasedDistribution):
        raise ValueError(
            "distribution must be a numpyro_ebm EnergyBasedDistribution (for example "
            f"BernoulliRBM); got {type(distribution).__name__}."
        )
    data = _check_data("data", distribution, data)
    num_examples = int(data.shape[0])
    if eval_data is not None:
        eval_data = _check_data("eval_data", distribution, eval_data)
    if batch_size is None:
        batch_size = min(DEFAULT_BATCH_SIZE, num_examples)
    batch_size = _positive("batch_size", batch_size)
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size must be at most the number of examples ({num_examples}); got {batch_size}."
        )
    num_batches = num_examples // batch_size
    if num_epochs is None:
        num_epochs = min(DEFAULT_MAX_EPOCHS, max(1, math.ceil(DEFAULT_NUM_UPDATES / num_batches)))
    num_epochs = _positive("num_epochs", num_epochs)
    eval_every = _positive("eval_every", eval_every)
    checkpoint_every = _positive("checkpoint_every", checkpoint_every)
    if callable(callbacks):
        callbacks = (callbacks,)
    callbacks = tuple(callbacks)
    for cb in callbacks:
        if not callable(cb):
            raise ValueError(f"callbacks must be callables; got {type(cb).__name__}.")
    if estimator is None:
        estimator = PCD(num_chains=DEFAULT_NUM_CHAINS, num_sweeps=DEFAULT_NUM_SWEEPS)
    if not (hasattr(estimator, "init") and hasattr(estimator, "step")):
        raise ValueError(
            "estimator must have init(rng_key, distribution, data) and step(rng_key, state, "
            f"distribution, data) methods (CD, PCD, ParallelTempering); got {estimator!r}."
        )
    if monitor is not None:
        if not isinstance(monitor, Monitor):
            raise ValueError(
                "monitor must be a numpyro_ebm.diagnostics.Monitor, e.g. Monitor(every=10); "
                f"got {type(monitor).__name__}."
            )
        monitor.check_estimator(estimator)
    if optimizer is None:
        optimizer = default_optimizer(num_epochs * num_batches)
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ValueError(
            f"optimizer must be an optax.GradientTransformation; got {type(optimizer).__name__}."
        )

    template = _without_log_partition(distribution)
    param = _parameterization(template)
    u = _strong(_project(param, template, _to_unconstrained(param, _trainable(template))))
    for name, value in u.items():
        if not bool(jnp.all(jnp.isfinite(value))):
            raise ValueError(
                f"the initial {name} maps to non-finite unconstrained values (on the boundary "
                f"of its constraint {_constraint_of(template, name)}?); start strictly inside."
            )
    _check_learnable(param, template, u)

    key_init, key_train, key_eval = random.split(rng_key, 3)
    eval_mode = _eval_mode(template) if eval_data is not None else ""
    init_dist = _with_parameters(template, _to_constrained(param, u))
    est_state = _strong(estimator.init(key_init, init_dist, data.astype(template.chain_dtype)))
    opt_state = _strong(optimizer.init(u))
    eval_shape = template.batch_shape if eval_data is not None else ()
    history = _empty_history(eval_shape, 0, eval_mode)
    start_epoch = 0

    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        if os.path.exists(checkpoint):
            ckpt = load_checkpoint(checkpoint)
            if ckpt.class_name != type(template).__name__ or set(ckpt.params) != set(u):
                raise ValueError(
                    f"checkpoint {checkpoint} holds a {ckpt.class_name} with parameters "
                    f"{sorted(ckpt.params)}, not this {type(template).__name__} "
                    f"({sorted(u)}); use another checkpoint path to start afresh."
                )
            names = sorted(u)
            u = _restore(
                checkpoint, [ckpt.params[n] for n in names], {n: u[n] for n in names}, "parameter"
            )
            opt_state = _restore(checkpoint, ckpt.opt_leaves, opt_state, "optimizer state")
            if ckpt.history.eval_metric_name != eval_mode and len(ckpt.history.epoch):
                raise ValueError(
                    f"checkpoint {checkpoint} was written by a run evaluated with "
                    f"{ckpt.history.eval_metric_name or 'no eval_data'}; this run uses "
                    f"{eval_mode or 'no eval_data'}. Resume with the same eval_data."
                )
            history = ckpt.history
            if len(history.monitor_epoch):
                # A monitor may have grown the estimator: its chains are the grown ones.
                grown = _configured(
                    estimator, history.monitor_num_sweeps[-1], history.monitor_num_chains[-1]
                )
                if grown != estimator:
                    estimator = grown
                    est_state = _strong(
                        estimator.init(key_init, init_dist, data.astype(template.chain_dtype))
                    )
            start_epoch = ckpt.epoch
            if _key_data(ckpt.rng_key)[0].tolist() != _key_data(rng_key)[0].tolist():
                warnings.warn(
                    f"resuming from {checkpoint} with the key it was started with, not the "
                    "rng_key passed now.",
                    stacklevel=2,
                )
            est_state = _restore(checkpoint, ckpt.chain_leaves, est_state, "estimator state")
            rng_key = ckpt.rng_key
            key_init, key_train, key_eval = random.split(rng_key, 3)

    run_epoch, run_eval = _make_epoch(
        param, estimator, optimizer, batch_size, num_batches, eval_mode
    )
    key_monitor = random.fold_in(rng_key, _MONITOR_STREAM)
    monitor_batch = data[:batch_size].astype(template.chain_dtype)

    def current(u):
        return _with_parameters(template, _to_constrained(param, u))

    def save(epoch, u, opt_state, est_state, history):
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint,
                distribution=current(u),
                u=u,
                opt_state=opt_state,
                est_state=est_state,
                epoch=epoch,
                key=rng_key,
                history=history,
                batch_size=batch_size,
            )

    from tqdm.auto import tqdm

    bar = tqdm(
        total=num_epochs,
        initial=min(start_epoch, num_epochs),
        disable=not progress_bar,
        desc="fit",
        unit="epoch",
    )
    epoch = start_epoch
    saved_epoch = start_epoch
    try:
        while epoch < num_epochs:
            start = time.perf_counter()
            (u_new, opt_new, est_new), summary, finite = run_epoch(
                u, opt_state, est_state, template, data, random.fold_in(key_train, epoch)
            )
            if not bool(finite):
                if saved_epoch != epoch:
                    save(epoch, u, opt_state, est_state, history)
                where = f" and in {checkpoint}" if checkpoint is not None else ""
                raise TrainingDivergedError(
                    f"training diverged in epoch {epoch + 1}: the parameters became NaN or "
                    f"Inf. The last finite model (after epoch {epoch}) is in this error's "
                    f".distribution{where}. Lower the learning rate (e.g. "
                    "optimizer=optax.adam(1e-3)), run more sweeps per update "
                    "(estimator=PCD(num_sweeps=5)) so the negative samples follow the model, "
                    "and check the data scaling (0/1 data for binary models, standardized "
                    "data for Gaussian visible units).",
                    current(u),
                    history,
                    epoch,
                )
            u, opt_state, est_state = u_new, opt_new, est_new
            epoch += 1
            metric = np.full(eval_shape, np.nan)
            if eval_data is not None and (epoch % eval_every == 0 or epoch == num_epochs):
                metric = np.asarray(
                    run_eval(u, template, eval_data, random.fold_in(key_eval, epoch))
                )
            summary = jax.device_get(summary)
            history = _append(
                history,
                {
                    "epoch": epoch,
                    "loss": summary["loss"],
                    "grad_norm": summary["grad_norm"],
                    "sample_energy": summary["sample_energy"],
                    "swap_rate": summary["swap_rate"],
                    "eval_metric": metric,
                    "wall_time": time.perf_counter() - start,
                },
            )
            mixing = None
            if monitor is not None and epoch % monitor.every == 0:
                key_diagnose, key_grow = random.split(random.fold_in(key_monitor, epoch))
                mixing, _ = diagnose(
                    key_diagnose,
                    estimator,
                    est_state,
                    current(u),
                    monitor_batch,
                    num_draws=monitor.num_draws,
                    rhat_threshold=monitor.rhat_threshold,
                    min_chains=monitor.min_chains,
                )
                action = "" if mixing.ok else monitor.action
                if action in ("add_sweeps", "add_chains"):
                    estimator, est_state, taken = monitor.grow(
                        key_grow,
                        estimator,
                        est_state,
                        current(u),
                        data.astype(template.chain_dtype),
                    )
                    if taken:
                        est_state = _strong(est_state)
                        run_epoch, run_eval = _make_epoch(
                            param, estimator, optimizer, batch_size, num_batches, eval_mode
                        )
                    else:
                        action = "warn"  # at the cap: nothing left to grow
                sweeps, chains = _estimator_config(estimator)
                history = _append_monitor(
                    history,
                    {
                        "monitor_epoch": epoch,
                        "monitor_rhat": mixing.rhat,
                        "monitor_ess_bulk": mixing.ess_bulk,
                        "monitor_num_stuck": mixing.num_stuck,
                        "monitor_ok": mixing.ok,
                        "monitor_action": action,
                        "monitor_num_sweeps": sweeps,
                        "monitor_num_chains": chains,
                    },
                )
                if action in ("warn", "add_sweeps", "add_chains"):
                    what = {
                        "warn": "",
                        "add_sweeps": f" Sweeps per update raised to {sweeps}.",
                        "add_chains": f" Chains raised to {chains}.",
                    }[action]
                    warnings.warn(
                        f"the negative-phase chains mix poorly after epoch {epoch}:\n{mixing}"
                        f"\n{what}",
                        MixingWarning,
                        stacklevel=2,
                    )
            if (
                epoch % checkpoint_every == 0
                or epoch == num_epochs
                or (mixing is not None and not mixing.ok and monitor.action == "raise")
            ):
                save(epoch, u, opt_state, est_state, history)
                saved_epoch = epoch
            if mixing is not None and not mixing.ok and monitor.action == "raise":
                raise MixingError(
                    f"the negative-phase chains mix poorly after epoch {epoch}:\n{mixing}\n"
                    "Run more sweeps per update (estimator=PCD(num_sweeps=5)), more chains, "
                    "parallel tempering (estimator=ParallelTempering()) for multimodal models, "
                    "or a lower learning rate; Monitor(action='add_sweeps') does the first "
                    "automatically.",
                    mixing,
                    current(u),
                    history,
                    epoch,
                )
            postfix = {"loss": f"{float(summary['loss']):.4g}"}
            if not np.all(np.isnan(metric)):
                postfix[eval_mode or "eval"] = f"{float(np.mean(metric)):.4g}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            model = current(u)
            stop = False
            for cb in callbacks:
                if cb(epoch, model, history) is False:
                    stop = True
            if stop:
                if saved_epoch != epoch:
                    save(epoch, u, opt_state, est_state, history)
                    saved_epoch = epoch
                break
    finally:
        bar.close()
    return current(u), history


#: Stream of the monitor's keys, folded into the run's key (the other streams are unchanged,
#: so a run with a monitor trains exactly as one without).
_MONITOR_STREAM = 0x6D6F6E


def _estimator_config(estimator) -> tuple[int, int]:
    return int(getattr(estimator, "num_sweeps", -1)), int(getattr(estimator, "num_chains", -1))


def _configured(estimator, num_sweeps, num_chains):
    """``estimator`` with the sweeps and chains a monitor recorded (-1: field absent)."""
    if not dataclasses.is_dataclass(estimator):
        return estimator
    changes = {}
    if int(num_sweeps) > 0 and hasattr(estimator, "num_sweeps"):
        changes["num_sweeps"] = int(num_sweeps)
    if int(num_chains) > 0 and hasattr(estimator, "num_chains"):
        changes["num_chains"] = int(num_chains)
    return dataclasses.replace(estimator, **changes) if changes else estimator


def _strong(tree):
    """``tree`` with weakly typed leaves (e.g. from Python scalars) made strongly typed, so
    the epoch program's carry keeps one type and is traced once."""

    def strong(x):
        if getattr(x, "weak_type", False):
            return jnp.asarray(x, dtype=x.dtype)
        return x

    return jax.tree.map(strong, tree)


def _check_learnable(param: _Parameterization, template, u) -> None:
    """Refuse couplings that a projection would pin to zero entirely."""
    for name in param.projections:
        value = u[name]
        if value.ndim >= 2 and value.shape[-1] > 1:
            probe = param.projections[name](template, jnp.ones(value.shape[-2:], value.dtype))
            if not bool(jnp.any(probe != 0)):
                raise ValueError(
                    f"{type(template).__name__}.{name} cannot be learned: the model's block-Gibbs "
                    "colouring puts all units in one block (it was derived from all-zero "
                    f"{name}), so every {name} entry must stay zero for the sampler to be valid. "
                    f"Start from small random symmetric {name} (e.g. 0.01 * (A + A.T)) or pass "
                    "coloring=numpyro_ebm.distributions.coloring.sequential_coloring(n)."
                )
