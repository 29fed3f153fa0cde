r"""Annealed importance sampling (AIS) for ``log Z``, forward and reverse.

AIS (Neal 2001; Salakhutdinov & Murray 2008) estimates the partition function of a target
model ``f(x) = exp(-E(x))`` by annealing from a tractable base ``f_0`` along the inverse
temperatures ``0 = beta_0 < beta_1 < ... < beta_K = 1``. Each chain starts at an exact draw
of the base, and for ``k = 1..K`` accumulates

.. math::

    \log w \mathrel{+}= \log f_{\beta_k}(x) - \log f_{\beta_{k-1}}(x),

then moves ``x`` with one Gibbs sweep that leaves ``p_{\beta_k}`` invariant. Then
``E[w] = Z / Z_0`` exactly, so :math:`\hat Z = Z_0 \cdot \mathrm{mean}(w)` is unbiased and
``log Z_hat`` is, by Jensen's inequality, biased *low* on average.

The path
--------
The base is a model of independent units of the same family, with its couplings (RBMs:
weights and hidden bias) set to zero and its fields fitted to ``data`` when given
(smoothed unit marginals: the "base-rate" model of Salakhutdinov & Murray for RBMs), zero
otherwise; ``base="model"`` keeps the target's own fields instead (for RBMs its visible
and hidden biases, so that only the weights are annealed). The intermediate model at
``beta`` has every energy parameter interpolated linearly,
``theta_beta = (1 - beta) theta_0 + beta theta``. For models without latent units the
energy is linear in its parameters, so this is the geometric path
``f_beta = f_0^(1-beta) f^beta``; for RBMs it is the geometric path of the *joint*
``p(v, h)``, hidden units summed out analytically:

.. math::

    \log f_\beta(v) = (1 - \beta)\, b_0^\top v + \beta\, b^\top v
        + \sum_j \operatorname{softplus}\big(\beta\, (c_j + (v^\top W)_j)\big),

whose base (``beta = 0``) carries the constant ``num_hidden * log 2`` of the free hidden
layer, included in ``log Z_0`` (with ``base="model"``, the hidden logits are
``(1 - beta) c + beta (c + v^T W)`` and the constant is ``sum_j softplus(c_j)``).
Gaussian-Bernoulli RBMs anneal from independent
Gaussians with the model's scales (means fitted to ``data``, else the model's visible
bias). The families' own ``gibbs_sweep`` of the intermediate model are the transitions.

Uncertainty
-----------
With ``w_i = exp(log w_i - max log w)``, the mean ``m`` and its standard error ``s``
(the spread of the weights over ``sqrt(num_chains)``), the reported interval is
``log Z_0 + max log w + log(m -/+ z s)``, ``z`` the normal quantile of ``level``: a
central-limit interval for the unbiased ``Z_hat`` mapped to log space, hence asymmetric.
When ``z s >= m`` the lower end is ``-inf`` (the weights are too uneven to bound ``Z``
from below: use more temperatures or chains). The interval describes Monte Carlo spread
only; a schedule that is too short makes the weights' variance itself badly estimated,
which the effective sample size ``(sum w)^2 / sum w^2`` shows.

Reverse direction (RAISE)
-------------------------
Started from draws of the target (or from held-out data, Burda, Grosse & Salakhutdinov
2015), the schedule run backwards estimates ``Z_0 / Z`` without bias, so its ``log Z`` is
biased *high* on average, and the log-likelihood it implies is conservative.
:func:`log_likelihood` reports both estimates of the average held-out log-likelihood.

The whole run is one compiled ``lax.scan`` over the temperatures with all chains (and
batch members) advanced together; only the chain states and one log weight per chain are
kept (besides the schedule itself and one PRNG key per temperature), so memory does not
grow with the number of temperatures times the state size.
"""

from __future__ import annotations

import math
from functools import partial
from statistics import NormalDist
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from jax.scipy.special import logsumexp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from numpyro_ebm.distributions.base import EnergyBasedDistribution, is_concrete, softplus
from numpyro_ebm.distributions.boltzmann import (
    BoltzmannMachine,
    IsingLattice,
    IsingModel,
)
from numpyro_ebm.distributions.gaussian_rbm import GaussianBernoulliRBM
from numpyro_ebm.distributions.potts import PottsLattice, PottsModel, one_hot
from numpyro_ebm.distributions.rbm import BernoulliRBM, bernoulli_draw

__all__ = [
    "AISResult",
    "LogLikelihoodResult",
    "ais",
    "linear_schedule",
    "log_likelihood",
    "log_partition_lower_bound",
    "rbm_schedule",
]

SUPPORTED = (
    "BernoulliRBM, GaussianBernoulliRBM, BoltzmannMachine, IsingModel, IsingLattice, "
    "PottsModel, PottsLattice"
)


# ---------------------------------------------------------------------- schedules
def rbm_schedule() -> np.ndarray:
    """The classic RBM schedule of Salakhutdinov & Murray (2008): 500 inverse temperatures
    evenly in ``[0, 0.5)``, 4,000 in ``[0.5, 0.9)`` and 10,000 in ``[0.9, 1]``; 14,500 in all.

    >>> betas = rbm_schedule()
    >>> betas.shape, float(betas[0]), float(betas[-1])
    ((14500,), 0.0, 1.0)
    """
    return np.concatenate(
        [
            np.linspace(0.0, 0.5, 500, endpoint=False),
            np.linspace(0.5, 0.9, 4000, endpoint=False),
            np.linspace(0.9, 1.0, 10000),
        ]
    )


def linear_schedule(num_temperatures: int) -> np.ndarray:
    """``num_temperatures`` inverse temperatures evenly spaced from 0 to 1 (both included).

    >>> linear_schedule(5).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if int(num_temperatures) != num_temperatures or num_temperatures < 2:
        raise ValueError(
            f"num_temperatures must be an integer >= 2 (0 and 1 included); got "
            f"{num_temperatures!r}."
        )
    return np.linspace(0.0, 1.0, int(num_temperatures))


def _check_betas(betas: Any) -> np.ndarray:
    arr = np.asarray(betas, dtype=np.float64)
    problem = None
    if arr.ndim != 1 or arr.size < 2:
        problem = f"a 1-D array of at least 2 values; got shape {arr.shape}"
    elif not np.all(np.isfinite(arr)):
        problem = "finite"
    elif arr[0] != 0.0 or arr[-1] != 1.0:
        problem = f"from exactly 0 to exactly 1; got {arr[0]:g} to {arr[-1]:g}"
    elif np.any(np.diff(arr) <= 0):
        bad = int(np.flatnonzero(np.diff(arr) <= 0)[0])
        problem = f"strictly increasing; betas[{bad + 1}] = {arr[bad + 1]:g} <= {arr[bad]:g}"
    if problem:
        raise ValueError(
            f"betas must be {problem}. Pass e.g. numpyro_ebm.infer.ais.linear_schedule(1000) "
            f"or schedule='rbm'."
        )
    return arr


def _resolve_schedule(schedule: Any, num_temperatures: int | None) -> np.ndarray:
    if isinstance(schedule, str):
        if schedule == "rbm":
            if num_temperatures is not None:
                raise ValueError(
                    "num_temperatures goes with schedule='linear'; schedule='rbm' always has "
                    "14,500 temperatures."
                )
            return rbm_schedule()
        if schedule == "linear":
            if num_temperatures is None:
                raise ValueError("schedule='linear' needs num_temperatures, e.g. 1000.")
            return linear_schedule(num_temperatures)
        raise ValueError(
            f"schedule must be 'rbm', 'linear' or an array of betas; got {schedule!r}."
        )
    if num_temperatures is not None:
        raise ValueError("num_temperatures goes with schedule='linear', not with explicit betas.")
    return _check_betas(schedule)


# ---------------------------------------------------------------------- results
class AISResult(NamedTuple):
    """The outcome of :func:`ais`.

    Attributes
    ----------
    log_partition : jax.Array
        The estimate of ``log Z``, shape ``batch_shape``.
    log_partition_interval : tuple of jax.Array
        ``(lower, upper)`` in log space at coverage ``level`` (asymmetric; see the module
        docstring); ``lower`` (forward) or ``upper`` (reverse) may be infinite.
    ess : jax.Array
        Effective sample size of the weights, ``(sum w)^2 / sum w^2``, shape ``batch_shape``.
    log_weights : jax.Array
        Per-chain log weights, shape ``(num_chains,) + batch_shape``: estimates of
        ``log(Z / Z_0)`` (forward) or ``log(Z_0 / Z)`` (reverse).
    log_partition_base : jax.Array
        ``log Z_0`` of the base model, shape ``batch_shape``.
    num_temperatures : int
        Number of inverse temperatures, 0 and 1 included.
    reverse : bool
        Whether the schedule ran from the target to the base.
    level : float
        Coverage of ``log_partition_interval``.
    trace_betas : numpy.ndarray or None
        With ``num_checkpoints``: the inverse temperature reached at each checkpoint.
    log_weight_trace : jax.Array or None
        With ``num_checkpoints``: the log weights accumulated up to each checkpoint, shape
        ``(num_checkpoints, num_chains) + batch_shape``; the last row is ``log_weights``.
    """

    log_partition: jax.Array
    log_partition_interval: tuple[jax.Array, jax.Array]
    ess: jax.Array
    log_weights: jax.Array
    log_partition_base: jax.Array
    num_temperatures: int
    reverse: bool
    level: float
    trace_betas: np.ndarray | None = None
    log_weight_trace: jax.Array | None = None

    def to_arviz(self):
        """The log weights as an ``arviz.InferenceData``.

        AIS chains are independent weighted draws, not a Markov chain, so they are laid out
        as the draws of one chain: ``sample_stats.log_weight`` has dims ``(chain, draw) +
        batch`` with ``chain = 1`` and ``draw = num_chains``; the estimate, its interval,
        the effective sample size and the base ``log Z_0`` are in the ``attrs`` of the
        ``InferenceData`` (lists, one entry per batch member).
        """
        import arviz as az

        log_weights = np.asarray(self.log_weights)
        lo, hi = self.log_partition_interval
        attrs = {
            "log_partition": np.ravel(self.log_partition).tolist(),
            "log_partition_lower": np.ravel(lo).tolist(),
            "log_partition_upper": np.ravel(hi).tolist(),
            "ess": np.ravel(self.ess).tolist(),
            "log_partition_base": np.ravel(self.log_partition_base).tolist(),
            "num_temperatures": int(self.num_temperatures),
            "reverse": bool(self.reverse),
            "level": float(self.level),
        }
        batch_dims = [f"batch_{i}" for i in range(log_weights.ndim - 1)]
        return az.from_dict(
            sample_stats={"log_weight": log_weights[None]},
            dims={"log_weight": batch_dims},
            attrs=attrs,
        )


class LogLikelihoodResult(NamedTuple):
    """The outcome of :func:`log_likelihood`: average log-likelihood per data point.

    Attributes
    ----------
    forward : jax.Array
        ``mean(-E(data)) - log Z_hat`` with the forward AIS estimate (on average too high,
        since forward AIS underestimates ``log Z``), shape ``batch_shape``.
    reverse : jax.Array
        The RAISE estimate: the mean over data points of the reverse-annealing estimate of
        each point's log-likelihood, one reverse chain per point (on average too low: a
        conservative estimate), shape ``batch_shape``.
    exact : jax.Array or None
        The exact value when the model enumerates in at most ``2**20`` states, else None.
    forward_result, reverse_result : AISResult
        The two underlying runs (the reverse one started from ``data``).
    """

    forward: jax.Array
    reverse: jax.Array
    exact: jax.Array | None
    forward_result: AISResult
    reverse_result: AISResult


# ---------------------------------------------------------------------- the base
class _Base(NamedTuple):
    target: EnergyBasedDistribution  # possibly rebuilt with per-site fields (lattices)
    params: dict  # energy parameters of the base model, shaped like the target's
    fields: jax.Array  # what the base energy reads (see _base_energy)
    hidden_fields: jax.Array  # Bernoulli RBMs: the base's hidden bias; else a placeholder
    log_partition: jax.Array  # log of sum_x exp(-base_energy(x)), shape batch_shape
    kind: str


BASES = ("data", "model", "uniform")


def _smoothed_frequencies(data: np.ndarray, values, pseudocount: float) -> np.ndarray:
    """``(count + pseudocount) / (N + q * pseudocount)`` per unit and value, ``(..., q)``."""
    counts = np.stack([np.sum(data == v, axis=0) for v in values], -1).astype(np.float64)
    return (counts + pseudocount) / (data.shape[0] + len(values) * pseudocount)


def _check_data(dist: EnergyBasedDistribution, data: Any, name: str) -> np.ndarray:
    if not is_concrete(data):
        raise ValueError(f"{name} must be a concrete array (fit the base outside jit).")
    arr = np.asarray(data)
    event = dist.event_shape
    if arr.ndim != len(event) + 1 or arr.shape[1:] != event or arr.shape[0] < 1:
        raise ValueError(
            f"{name} must have shape (num_data,) + event_shape = (num_data,) + {event}, one "
            f"base shared by all batch members; got shape {arr.shape}."
        )
    if dist.is_discrete:
        ok = np.isin(arr, np.asarray(dist.support_values))
        if not np.all(ok):
            raise ValueError(
                f"{name} must take values in {set(dist.support_values)} for this "
                f"{type(dist).__name__}; got {np.unique(arr[~ok])[:5].tolist()}."
            )
    elif not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values; drop or impute them first.")
    return arr


def _resolve_base(base: str | None, data: Any) -> str:
    if base is None:
        return "uniform" if data is None else "data"
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES} or None; got {base!r}.")
    if base == "data" and data is None:
        raise ValueError("base='data' fits the base model to data: pass data=... as well.")
    if base != "data" and data is not None:
        raise ValueError(
            f"data is only used by base='data'; got base={base!r} and data. Drop one of them."
        )
    return base


def _make_base(
    dist: EnergyBasedDistribution, data: Any, pseudocount: float, base: str = "data"
) -> _Base:
    """The independent-unit base model of ``dist``: its fields fitted to ``data``
    (``base="data"``), the model's own fields (``"model"``) or zero (``"uniform"``)."""
    arr = None if data is None else _check_data(dist, data, "data")
    dtype = dist.chain_dtype
    batch = dist.batch_shape
    none = jnp.zeros((), dtype)

    def zeros_like_params(**keep):
        params = {k: jnp.zeros_like(v) for k, v in dist.energy_parameters().items()}
        params.update(keep)
        return params

    def total(x, event_ndim):
        return jnp.broadcast_to(jnp.sum(x, tuple(range(-event_ndim, 0))), batch)

    if isinstance(dist, GaussianBernoulliRBM):
        if base == "data":
            mean = jnp.asarray(arr.mean(0), dtype)
        elif base == "model":
            mean = dist.visible_bias
        else:
            mean = jnp.zeros_like(dist.visible_bias)
        mean = jnp.broadcast_to(mean, dist.visible_bias.shape)
        params = zeros_like_params(visible_bias=mean, visible_scale=dist.visible_scale)
        log_z = 0.5 * dist.num_visible * math.log(2 * math.pi) + total(
            jnp.log(dist.visible_scale), 1
        )
        return _Base(dist, params, mean, none, log_z, "gaussian")
    if isinstance(dist, BernoulliRBM):
        hidden = jnp.zeros_like(dist.hidden_bias)
        if base == "data":
            p = _smoothed_frequencies(arr, (0, 1), pseudocount)[..., 1]
            logits = jnp.asarray(np.log(p) - np.log1p(-p), dtype)
        elif base == "model":
            logits, hidden = dist.visible_bias, dist.hidden_bias
        else:
            logits = jnp.zeros((dist.num_visible,), dtype)
        bias = jnp.broadcast_to(logits, dist.visible_bias.shape)
        params = zeros_like_params(visible_bias=bias, hidden_bias=hidden)
        return _Base(dist, params, bias, hidden, total(softplus(bias), 1), "rbm")
    if isinstance(dist, IsingModel):  # dense and lattice, spins
        shape = dist.event_shape
        lattice = isinstance(dist, IsingLattice)
        if base == "data":
            p = _smoothed_frequencies(arr, (-1, 1), pseudocount)
            theta = jnp.asarray(0.5 * (np.log(p[..., 1]) - np.log(p[..., 0])), dtype)
        elif base == "model":
            own = dist._site_param(dist.field, dist._field_per_site) if lattice else dist.fields
            theta = jnp.broadcast_to(own, batch + shape).astype(dtype)
        else:
            theta = jnp.zeros(shape, dtype)
        if lattice:
            if base == "data":
                if not dist._field_per_site:  # the fitted base needs a field per site
                    site_field = dist._site_param(dist.field, False)
                    dist = IsingModel.lattice(
                        shape,
                        dist.coupling,
                        jnp.broadcast_to(site_field, batch + shape),
                        dist.periodic,
                        num_sweeps=dist.num_sweeps,
                        validate_args=False,
                    )
                field = jnp.broadcast_to(theta, dist.field.shape)
            elif base == "model":
                field = dist.field
            else:
                field = jnp.zeros_like(dist.field)
            params = {"coupling": jnp.zeros_like(dist.coupling), "field": field}
        else:
            params = zeros_like_params(fields=jnp.broadcast_to(theta, dist.fields.shape))
        log_z = total(jnp.logaddexp(theta, -theta), len(shape))
        return _Base(dist, params, theta, none, log_z, "linear")
    if isinstance(dist, BoltzmannMachine):
        if base == "data":
            p = _smoothed_frequencies(arr, (0, 1), pseudocount)[..., 1]
            theta = jnp.asarray(np.log(p) - np.log1p(-p), dtype)
        elif base == "model":
            theta = dist.fields
        else:
            theta = jnp.zeros(dist.event_shape, dtype)
        params = zeros_like_params(fields=jnp.broadcast_to(theta, dist.fields.shape))
        return _Base(dist, params, theta, none, total(softplus(theta), 1), "linear")
    if isinstance(dist, PottsModel):  # dense and lattice
        q = dist.num_states
        shape = dist.event_shape
        if base == "data":
            p = _smoothed_frequencies(arr, tuple(range(q)), pseudocount)
            theta = jnp.asarray(np.log(p), dtype)
        elif base == "model":
            theta = jnp.broadcast_to(dist.fields, batch + shape + (q,)).astype(dtype)
        else:
            theta = jnp.zeros(shape + (q,), dtype)
        if isinstance(dist, PottsLattice):
            if base == "data":
                full = batch + shape + (q,)
                dist = PottsModel.lattice(
                    shape,
                    q,
                    dist.coupling,
                    jnp.broadcast_to(dist.fields, full),
                    periodic=dist.periodic,
                    num_sweeps=dist.num_sweeps,
                    validate_args=False,
                )
                fields = jnp.broadcast_to(theta, dist.fields.shape)
            elif base == "model":
                fields = dist.fields
            else:
                fields = jnp.zeros_like(dist.fields)
            params = {"coupling": jnp.zeros_like(dist.coupling), "fields": fields}
        else:
            params = zeros_like_params(fields=jnp.broadcast_to(theta, dist.fields.shape))
        log_z = total(logsumexp(theta, -1), len(shape))
        return _Base(dist, params, theta, none, log_z, "potts")
    raise ValueError(
        f"ais supports {SUPPORTED}; got a {type(dist).__name__}. For a user energy, "
        "estimate log Z by enumeration (numpyro_ebm.exact_log_partition) when it is small."
    )


def _base_energy(kind: str, fields: jax.Array, x: jax.Array, num_states: int) -> jax.Array:
    """The energy of the independent-unit base (its latent part aside), shape
    ``x.shape[:-event_ndim]``; ``sum_x exp(-base_energy(x))`` is ``_Base.log_partition``."""
    if kind == "rbm":
        return -jnp.sum(x * fields, -1)
    if kind == "gaussian":
        raise AssertionError("handled with the model's scales")
    if kind == "potts":
        event_ndim = fields.ndim - 1
        onehot = one_hot(x, num_states, fields.dtype)
        return -jnp.sum(onehot * fields, tuple(range(-event_ndim - 1, 0)))
    event_ndim = fields.ndim
    return -jnp.sum(x * fields, tuple(range(-event_ndim, 0)))


# ---------------------------------------------------------------------- the run
def _interpolate(target, base_params, beta):
    params = {
        name: (1 - beta) * base_params[name] + beta * value
        for name, value in target.energy_parameters().items()
    }
    return target.with_parameters(**params)


class _Kahan(NamedTuple):
    total: jax.Array
    compensation: jax.Array


def _kahan_add(acc: _Kahan, x: jax.Array) -> _Kahan:
    y = x - acc.compensation
    t = acc.total + y
    return _Kahan(t, (t - acc.total) - y)


@partial(jax.jit, static_argnames=("kind", "reverse", "mesh", "num_checkpoints"))
def _run(
    rng_key,
    target,
    base_params,
    fields,
    hidden_fields,
    betas,
    initial,
    *,
    kind,
    reverse,
    mesh=None,
    num_checkpoints=0,
):
    dtype = target.chain_dtype
    betas = betas.astype(dtype)
    num_states = getattr(target, "num_states", 2)

    if kind == "gaussian":

        def base_energy(x):
            z = (x - fields) / target.visible_scale
            return 0.5 * jnp.sum(z * z, -1)

    else:

        def base_energy(x):
            return _base_energy(kind, fields, x, num_states)

    def hidden_logits(pre, beta):
        """The hidden units' logits on the path: ``(1 - beta) c_0 + beta (c + v W)``."""
        return (1 - beta) * hidden_fields + beta * pre

    def log_ratio(x, beta_to, beta_from):
        """``log f_to(x) - log f_from(x)`` on the path (see the module docstring)."""
        if kind == "rbm":
            pre = target.visible_to_hidden(x)
            linear = jnp.sum(x * (target.visible_bias - fields), -1)
            hidden = jnp.sum(
                softplus(hidden_logits(pre, beta_to)) - softplus(hidden_logits(pre, beta_from)),
                -1,
            )
            return (beta_to - beta_from) * linear + hidden
        te_to = target.tempered_energy(x, beta_to)
        te_from = target.tempered_energy(x, beta_from)
        return -(te_to - te_from) + (beta_to - beta_from) * base_energy(x)

    def transition(key, x, beta):
        if kind == "rbm":
            key_h, key_v = random.split(key)
            h = bernoulli_draw(key_h, hidden_logits(target.visible_to_hidden(x), beta))
            logits = (1 - beta) * fields + beta * target.hidden_to_visible(h)
            return bernoulli_draw(key_v, logits)
        return _interpolate(target, base_params, beta).gibbs_sweep(key, x, 1.0)

    def step(carry, inputs):
        x, acc = carry
        beta_from, beta_to, key = inputs
        if reverse:
            x = transition(key, x, beta_from)
            acc = _kahan_add(acc, log_ratio(x, beta_to, beta_from))
        else:
            acc = _kahan_add(acc, log_ratio(x, beta_to, beta_from))
            x = transition(key, x, beta_to)
        return (x, acc), None

    key_init, key_run = random.split(rng_key)
    if reverse:
        x = initial.astype(dtype)
        schedule = (betas[::-1][:-1], betas[::-1][1:])
    else:
        # One sweep of the base model (no couplings) is an exact draw from it.
        base = _interpolate(target, base_params, jnp.zeros((), dtype))
        num_chains = initial.shape[0]
        x = base.gibbs_sweep(key_init, target.random_state(key_init, (num_chains,)), 1.0)
        if mesh is not None:  # split the chains over the mesh; the draws do not change
            spec = PartitionSpec(mesh.axis_names[0], *([None] * (x.ndim - 1)))
            x = lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
        schedule = (betas[:-1], betas[1:])
    lead = x.shape[: x.ndim - len(target.event_shape)]
    zero = jnp.zeros(lead, dtype)
    num_steps = betas.shape[0] - 1
    keys = random.split(key_run, num_steps)
    carry = (x, _Kahan(zero, zero))
    if num_checkpoints:
        # The same steps in num_checkpoints equal segments (the last ones padded with steps
        # that change nothing), keeping the log weights at the end of each segment.
        seg = -(-num_steps // num_checkpoints)
        pad = seg * num_checkpoints - num_steps
        active = jnp.arange(seg * num_checkpoints) < num_steps

        def padded(a):
            return jnp.concatenate([a, jnp.repeat(a[-1:], pad, 0)]).reshape(
                (num_checkpoints, seg) + a.shape[1:]
            )

        def masked_step(carry, inputs):
            *inner, on = inputs
            new, _ = step(carry, inner)
            return jax.tree.map(lambda a, b: jnp.where(on, a, b), new, carry), None

        def segment(carry, inputs):
            carry, _ = lax.scan(masked_step, carry, inputs)
            return carry, carry[1].total

        inputs = (
            *(padded(a) for a in schedule),
            padded(keys),
            active.reshape(num_checkpoints, seg),
        )
        (x, acc), trace = lax.scan(segment, carry, inputs)
    else:
        (x, acc), _ = lax.scan(step, carry, (*schedule, keys))
        trace = None
    # log Z_0 = (latent constant of the base) + log Z of its energy on the units of x.
    if kind == "rbm":
        latent = jnp.sum(softplus(hidden_fields), -1)
    else:
        latent = -target.tempered_energy(x[0], jnp.zeros((), dtype))
    return acc.total, latent, trace


@partial(jax.jit, static_argnames=("level", "reverse"))
def _summarize(log_weights, log_z0, level, reverse):
    n = log_weights.shape[0]
    top = jnp.max(log_weights, 0)
    w = jnp.exp(log_weights - top)
    mean = jnp.mean(w, 0)
    se = jnp.std(w, 0, ddof=1) / math.sqrt(n) if n > 1 else jnp.full_like(mean, jnp.inf)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    log_mean = top + jnp.log(mean)
    hi = top + jnp.log(mean + z * se)
    lo_arg = mean - z * se
    lo = jnp.where(lo_arg > 0, top + jnp.log(jnp.where(lo_arg > 0, lo_arg, 1.0)), -jnp.inf)
    ess = jnp.sum(w, 0) ** 2 / jnp.sum(w * w, 0)
    if reverse:  # the weights estimate Z_0 / Z
        return log_z0 - log_mean, (log_z0 - hi, log_z0 - lo), ess
    return log_z0 + log_mean, (log_z0 + lo, log_z0 + hi), ess


def ais(
    rng_key: jax.Array,
    distribution: EnergyBasedDistribution,
    *,
    num_chains: int = 100,
    schedule: Any = "rbm",
    num_temperatures: int | None = None,
    data: Any = None,
    initial_state: Any = None,
    level: float = 0.95,
    base_pseudocount: float = 1.0,
    mesh: Mesh | None = None,
    base: str | None = None,
    num_checkpoints: int = 0,
) -> AISResult:
    r"""Estimate ``log Z`` of ``distribution`` by annealed importance sampling.

    See the module docstring for the path, the base model, the interval and the reverse
    direction.

    Parameters
    ----------
    rng_key : jax.Array
        A PRNG key.
    distribution : EnergyBasedDistribution
        A ``BernoulliRBM``, ``GaussianBernoulliRBM``, ``BoltzmannMachine``, ``IsingModel``
        (dense or lattice) or ``PottsModel`` (dense or lattice); any ``batch_shape`` (every
        batch member gets its own chains and estimate).
    num_chains : int
        Independent annealing runs per batch member (default 100).
    schedule : {"rbm", "linear"} or ArrayLike
        ``"rbm"``: the classic 14,500-temperature schedule (:func:`rbm_schedule`);
        ``"linear"``: ``num_temperatures`` evenly spaced betas; or an explicit array of
        strictly increasing betas from 0 to 1.
    num_temperatures : int, optional
        With ``schedule="linear"`` only.
    data : ArrayLike, optional
        Training data, shape ``(num_data,) + event_shape``, to fit the base model's unit
        marginals (smoothed by ``base_pseudocount`` per value). A base close to the target
        lowers the variance; the estimate is unbiased for any base.
    base : {"data", "model", "uniform"}, optional
        The base model's fields: fitted to ``data`` (the default when ``data`` is given),
        the target's own fields (``"model"``: the visible and hidden biases of a
        ``BernoulliRBM``, the fields of the other families, the visible bias as the
        Gaussian means of a ``GaussianBernoulliRBM``; only the couplings are annealed) or
        zero (``"uniform"``, the default without ``data``). Every base gives an unbiased
        estimate of ``Z``, but on large models their *paths* differ in where the chains
        must cross a sharp change of the intermediate distributions (see Notes): run two
        bases and compare.
    initial_state : ArrayLike, optional
        Run in reverse (RAISE): chains start here and anneal from the target to the base.
        Shape ``(num_chains,) + batch_shape + event_shape`` (or ``(num_chains,) +
        event_shape``): exact draws of the target, or held-out data for a conservative
        estimate. ``num_chains`` is then read from its first axis.
    level : float
        Coverage of the interval (default 0.95).
    base_pseudocount : float
        Additive smoothing of the base's fitted frequencies (default 1).
    mesh : jax.sharding.Mesh, optional
        Split the forward chains across the devices of this 1-D mesh (for example
        ``numpyro_ebm.sharding.chain_mesh()``; ``num_chains`` a multiple of its size). The
        draws are those of one device. A reverse run follows the sharding of
        ``initial_state`` instead (``numpyro_ebm.sharding.shard_chains``).
    num_checkpoints : int
        Keep the log weights at this many evenly spaced points of the schedule (default 0:
        none), in ``AISResult.log_weight_trace``; the spread of the log weights along the
        path shows where the chains fall out of equilibrium, i.e. where temperatures are
        needed. Memory grows with ``num_checkpoints``, not with the schedule's length.

    Returns
    -------
    AISResult
        ``log_partition`` (attach it with ``distribution.with_log_partition``), its
        interval, the weights' effective sample size and the per-chain log weights.

    Notes
    -----
    Always read ``ess`` next to the estimate: when it is a small fraction of
    ``num_chains``, a few chains carry the estimate, its interval is not to be trusted and
    the estimate is most likely too low; add temperatures (and chains).

    A high ``ess`` is necessary, not sufficient. Forward AIS underestimates ``log Z`` when
    the chains miss a mode of the target that the path only reveals late: every chain then
    looks alike, the weights are even, and the estimate is low by an amount no interval
    shows. On two briefly trained 784 x 500 RBMs (``BENCHMARKS.md``, section 7b) the
    ``"data"`` and ``"model"`` bases differed by 31 to 87 nats, each the higher one on one
    model; the low estimate of one of them had the best-behaved weights of all runs and
    lay 54 nats below :func:`log_partition_lower_bound`. Since a forward estimate exceeds
    ``log Z`` by ``t`` nats with probability at most ``exp(-t)``, the higher of two
    estimates is the better one; a reverse (RAISE) run from data bounds the
    log-likelihood from the other side (:func:`log_likelihood`).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import BernoulliRBM, ais, exact_log_partition
    >>> w = 0.5 * jax.random.normal(jax.random.key(0), (12, 4))
    >>> rbm = BernoulliRBM(w)
    >>> result = ais(jax.random.key(1), rbm, num_chains=64, schedule="linear",
    ...              num_temperatures=200)
    >>> lo, hi = result.log_partition_interval
    >>> bool(lo <= exact_log_partition(rbm) <= hi)
    True
    >>> rbm.with_log_partition(result.log_partition).is_normalized
    True
    """
    if not isinstance(distribution, EnergyBasedDistribution):
        raise ValueError(
            f"distribution must be one of {SUPPORTED}; got {type(distribution).__name__}."
        )
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level}.")
    if not base_pseudocount > 0:
        raise ValueError(f"base_pseudocount must be positive; got {base_pseudocount}.")
    betas = _resolve_schedule(schedule, num_temperatures)
    base = _make_base(distribution, data, float(base_pseudocount), _resolve_base(base, data))
    target = base.target
    dtype = target.chain_dtype
    reverse = initial_state is not None
    if reverse:
        initial = jnp.asarray(initial_state)
        event = target.event_shape
        full = target.batch_shape + event
        if initial.ndim < len(event) + 1 or initial.shape[1:] not in (event, full):
            raise ValueError(
                f"initial_state must have shape (num_chains,) + batch_shape + event_shape = "
                f"(num_chains,) + {full} (or (num_chains,) + {event}); got shape "
                f"{initial.shape}."
            )
        target._check_value(initial)
        initial = jnp.broadcast_to(initial, initial.shape[:1] + full).astype(dtype)
    else:
        if int(num_chains) != num_chains or num_chains < 2:
            raise ValueError(
                f"num_chains must be an integer >= 2 (the interval needs a spread); got "
                f"{num_chains!r}."
            )
        initial = jnp.zeros((int(num_chains), 0), dtype)  # only its length is used
    if int(num_checkpoints) != num_checkpoints or not 0 <= num_checkpoints < betas.size:
        raise ValueError(
            f"num_checkpoints must be an integer from 0 (no trace) to the number of steps, "
            f"{betas.size - 1}; got {num_checkpoints!r}."
        )
    num_checkpoints = int(num_checkpoints)
    log_weights, latent, trace = _run(
        rng_key,
        target,
        base.params,
        base.fields,
        base.hidden_fields,
        jnp.asarray(betas, dtype),
        initial,
        kind=base.kind,
        reverse=reverse,
        mesh=None if reverse else mesh,
        num_checkpoints=num_checkpoints,
    )
    trace_betas = None
    if num_checkpoints:
        steps = betas.size - 1
        seg = -(-steps // num_checkpoints)
        ends = np.minimum(seg * np.arange(1, num_checkpoints + 1), steps)
        trace_betas = (betas[::-1] if reverse else betas)[ends]
    log_z0 = jnp.broadcast_to(latent + base.log_partition, target.batch_shape).astype(dtype)
    estimate, interval, ess = _summarize(log_weights, log_z0, level=float(level), reverse=reverse)
    return AISResult(
        log_partition=estimate,
        log_partition_interval=interval,
        ess=ess,
        log_weights=log_weights,
        log_partition_base=log_z0,
        num_temperatures=int(betas.size),
        reverse=reverse,
        level=float(level),
        trace_betas=trace_betas,
        log_weight_trace=trace,
    )


def log_partition_lower_bound(
    distribution: EnergyBasedDistribution,
    states: Any,
    *,
    rng_key: jax.Array | None = None,
    num_sweeps: int = 0,
    beta: float = 10.0,
) -> jax.Array:
    r"""A deterministic lower bound on ``log Z``: ``logsumexp(-E(x))`` over the distinct
    ``states``.

    ``Z`` sums ``exp(-E(x))`` over all states, so any set of distinct states bounds it from
    below, without Monte Carlo error. States near the modes make the bound tight: with
    ``num_sweeps``, every state is also moved by that many sweeps of the model's
    ``gibbs_sweep`` at inverse temperature ``beta`` (a near-greedy ascent of
    ``-E`` for large ``beta``) and the states reached are added to the set. An AIS
    estimate below this bound is wrong by at least the difference, whatever its interval
    and effective sample size say (forward AIS misses modes silently: see :func:`ais`).

    Parameters
    ----------
    distribution : EnergyBasedDistribution
        A discrete model with ``batch_shape == ()``.
    states : ArrayLike
        Shape ``(num_states,) + event_shape``, values in the model's support; for example
        the training data. Duplicates are counted once.
    rng_key : jax.Array, optional
        Needed with ``num_sweeps > 0``.
    num_sweeps : int
        Sweeps of ascent from every state (default 0: the states as given).
    beta : float
        Inverse temperature of the ascent (default 10).

    Returns
    -------
    jax.Array
        The bound, a scalar.

    Examples
    --------
    >>> import jax
    >>> from numpyro_ebm import BernoulliRBM, exact_log_partition
    >>> from numpyro_ebm.infer.ais import log_partition_lower_bound
    >>> rbm = BernoulliRBM(0.5 * jax.random.normal(jax.random.key(0), (8, 3)))
    >>> data = rbm.sample(jax.random.key(1), (20,))
    >>> bool(log_partition_lower_bound(rbm, data) <= exact_log_partition(rbm))
    True
    """
    if not isinstance(distribution, EnergyBasedDistribution) or not distribution.is_discrete:
        raise ValueError(
            "distribution must be a discrete EnergyBasedDistribution (a set of points does "
            f"not bound the integral of a density); got {type(distribution).__name__}."
        )
    if distribution.batch_shape != ():
        raise ValueError(
            f"distribution must have batch_shape (); got {distribution.batch_shape}. Bound "
            "each batch member separately."
        )
    if int(num_sweeps) != num_sweeps or num_sweeps < 0:
        raise ValueError(f"num_sweeps must be a non-negative integer; got {num_sweeps!r}.")
    if num_sweeps and rng_key is None:
        raise ValueError("num_sweeps > 0 needs rng_key=jax.random.key(...).")
    if not beta > 0:
        raise ValueError(f"beta must be positive, e.g. 10; got {beta}.")
    arr = _check_data(distribution, states, "states")
    candidates = [arr]
    if num_sweeps:
        x = jnp.asarray(arr).astype(distribution.chain_dtype)

        @jax.jit
        def ascend(key, x):
            def body(x, key):
                return distribution.gibbs_sweep(key, x, beta), None

            return lax.scan(body, x, random.split(key, int(num_sweeps)))[0]

        reached = np.asarray(ascend(rng_key, x)).astype(arr.dtype)
        candidates.append(reached)
    distinct = np.unique(np.concatenate(candidates).reshape(-1, *arr.shape[1:]), axis=0)
    values = jnp.asarray(distinct).astype(distribution.chain_dtype)
    return logsumexp(-distribution.energy(values))


def log_likelihood(
    rng_key: jax.Array,
    distribution: EnergyBasedDistribution,
    data: Any,
    *,
    num_chains: int = 100,
    schedule: Any = "rbm",
    num_temperatures: int | None = None,
    base_data: Any = None,
    level: float = 0.95,
    base: str | None = None,
) -> LogLikelihoodResult:
    r"""Average log-likelihood of held-out ``data``, estimated in both directions.

    ``forward`` uses forward AIS (``num_chains`` chains): ``mean(-E(data)) - log Z_hat``,
    too high on average. ``reverse`` runs one reverse (RAISE) chain per data point,
    started at the point, and averages the points' estimated log-likelihoods
    ``-E(v) - log Z_0 + log w_rev(v)``: too low on average, so the truth lies between the
    two when both runs have converged in expectation.

    Parameters
    ----------
    rng_key : jax.Array
        A PRNG key.
    distribution : EnergyBasedDistribution
        As for :func:`ais`.
    data : ArrayLike
        Held-out data, shape ``(num_data,) + event_shape``.
    num_chains, schedule, num_temperatures, level
        As for :func:`ais` (``num_chains`` for the forward run).
    base_data : ArrayLike, optional
        Data to fit the base model to (default: ``data``).
    base : {"data", "model", "uniform"}, optional
        As for :func:`ais` (default ``"data"``: the base fitted to ``base_data``).

    Returns
    -------
    LogLikelihoodResult

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import BernoulliRBM, log_likelihood
    >>> rbm = BernoulliRBM(0.5 * jax.random.normal(jax.random.key(0), (10, 3)))
    >>> data = rbm.sample(jax.random.key(1), (50,))
    >>> ll = log_likelihood(jax.random.key(2), rbm, data, schedule="linear",
    ...                     num_temperatures=300)
    >>> bool(abs(ll.forward - ll.exact) < 0.1 and abs(ll.reverse - ll.exact) < 0.1)
    True
    """
    arr = _check_data(distribution, data, "data")
    base_data = arr if base_data is None else base_data
    key_fwd, key_rev = random.split(rng_key)
    kwargs = dict(schedule=schedule, num_temperatures=num_temperatures, level=level)
    if base in (None, "data"):
        kwargs["data"] = base_data
    else:
        kwargs["base"] = base
    forward = ais(key_fwd, distribution, num_chains=num_chains, **kwargs)
    reverse = ais(key_rev, distribution, initial_state=arr, **kwargs)
    values = jnp.asarray(arr).astype(distribution.chain_dtype)
    mean_log_f = jnp.mean(-distribution.energy(values), 0)
    exact = None
    try:
        enumerable = distribution.num_enumerated_states <= 2**20
    except NotImplementedError:
        enumerable = False
    if enumerable:
        from numpyro_ebm.exact import exact_log_partition

        exact = mean_log_f - exact_log_partition(distribution)
    per_point_log_z = reverse.log_partition_base - reverse.log_weights  # (num_data,) + batch
    return LogLikelihoodResult(
        forward=mean_log_f - forward.log_partition,
        reverse=mean_log_f - jnp.mean(per_point_log_z, 0),
        exact=exact,
        forward_result=forward,
        reverse_result=reverse,
    )
