"""Negative-phase estimators: where the draws for ``grad log Z`` come from.

The gradient of a log-likelihood is ``Delta1 - Delta2`` (positive phase minus negative
phase); ``Delta2 = grad log Z = -E_model[dE/dtheta]`` needs draws from the model. Every
estimator here has one interface, pure and jittable, with the chain state explicit:

.. code-block:: python

    state = estimator.init(rng_key, distribution, data)
    samples, state, info = estimator.step(rng_key, state, distribution, data)
    loss = -distribution.with_negative_samples(samples).log_prob(data).mean()

``samples`` has shape ``(num_samples,) + batch_shape + event_shape``. For RBMs the energy of
the samples is the free energy (hidden units summed out), so the gradient is the
Rao-Blackwellized one.

- :class:`CD` (contrastive divergence, CD-k): chains start at the data batch and run ``k``
  sweeps. Biased (it does not follow ``grad log Z`` unless ``k`` is large), cheap.
- :class:`PCD` (persistent CD, Tieleman 2008): chains carried across parameter updates.
- :class:`ParallelTempering`: persistent replicas at inverse temperatures
  ``1 = beta_0 > ... > beta_{M-1}``, adjacent swaps after each sweep, swap rates reported.

Estimators are frozen dataclasses (hashable), so they can be closed over or passed as static
arguments to ``jax.jit``. What they run on their chains between updates is a *transition*
(``transition=``): block Gibbs by default (:class:`~numpyro_ebm.infer.GibbsTransition`), or
any object with the same ``init(rng_key, distribution, position)``,
``step(rng_key, chain_state, distribution, beta)`` and ``position(chain_state)`` methods,
whose chain-state leaves carry the chain axes first.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax, random

from numpyro_ebm.distributions.base import EnergyBasedDistribution
from numpyro_ebm.infer.gibbs import GibbsTransition, mean_activation

__all__ = ["CD", "PCD", "EstimatorInfo", "EstimatorState", "ParallelTempering"]


class EstimatorState(NamedTuple):
    """Chains of an estimator.

    chains : the transition's chain state (for block Gibbs the configurations), leading axes
        ``(num_chains,)`` (PCD) or ``(num_temperatures, num_chains)`` (parallel tempering);
        an empty array for CD, whose chains start at the data.
    step : number of updates so far (alternates the swap pairs of parallel tempering).
    swap_accepts : accepted swaps per adjacent temperature pair, summed over chains and
        steps (parallel tempering; empty otherwise).
    swap_attempts : attempted swaps per adjacent pair (same layout).
    """

    chains: Any
    step: jax.Array
    swap_accepts: jax.Array
    swap_attempts: jax.Array


class EstimatorInfo(NamedTuple):
    """Cheap per-step summaries: mean energy of the returned samples and, for parallel
    tempering, the acceptance probability of each adjacent swap this step (NaN for pairs
    not attempted).

    Per chain (shape ``(num_chains,) + batch_shape``, the ``beta = 1`` replicas for parallel
    tempering; for CD one chain per example of the batch): ``chain_energy`` (the free energy
    for RBMs) and ``chain_mean_activation`` (mean of the units, the magnetization for Ising
    spins); ``accept_prob`` and ``diverging`` of the last transition step when the transition
    reports them (:class:`~numpyro_ebm.infer.RelaxedHMC`), else ``None``. See
    :mod:`numpyro_ebm.diagnostics`.
    """

    energy: jax.Array
    swap_rate: jax.Array
    chain_energy: jax.Array | None = None
    chain_mean_activation: jax.Array | None = None
    accept_prob: jax.Array | None = None
    diverging: jax.Array | None = None


def _info(distribution, x, chains, swap_rate, replica=None) -> EstimatorInfo:
    """Per-chain summaries of the samples ``x`` (chain state ``chains``; ``replica`` picks
    the ``beta = 1`` replicas of a tempering ladder)."""
    energy = distribution.energy(x)
    accept = getattr(chains, "accept_prob", None)
    diverging = getattr(chains, "diverging", None)
    if replica is not None:
        accept = None if accept is None else accept[replica]
        diverging = None if diverging is None else diverging[replica]
    activation = mean_activation(distribution, x)
    return EstimatorInfo(jnp.mean(energy), swap_rate, energy, activation, accept, diverging)


def _sweeps(rng_key, chains, distribution, num_sweeps, transition, beta=1.0):
    def body(chains, key):
        return transition.step(key, chains, distribution, beta), None

    chains, _ = lax.scan(body, chains, random.split(rng_key, num_sweeps))
    return chains


def _empty(dtype=jnp.float32):
    return jnp.zeros((0,), dtype)


def _check_positive(name: str, value: int) -> int:
    if int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def _data_for(distribution: EnergyBasedDistribution, data: Any) -> jax.Array:
    data = jnp.asarray(data)
    expected = distribution.batch_shape + distribution.event_shape
    if data.ndim != len(expected) + 1 or data.shape[1:] != expected:
        raise ValueError(
            f"data must have shape (num_examples,) + batch_shape + event_shape = "
            f"(num_examples,) + {expected}; got shape {data.shape}."
        )
    return data.astype(distribution.chain_dtype)


@dataclasses.dataclass(frozen=True)
class CD:
    """Contrastive divergence: ``num_sweeps`` Gibbs sweeps from the data batch (CD-k).

    Its gradient is biased toward the data (the chains never get far from it); the bias
    shrinks as ``num_sweeps`` grows. Prefer :class:`PCD` when the likelihood matters.
    """

    num_sweeps: int = 1
    transition: Any = GibbsTransition()

    def __post_init__(self):
        _check_positive("num_sweeps", self.num_sweeps)

    def init(self, rng_key, distribution, data=None) -> EstimatorState:
        del rng_key, data
        dtype = distribution.chain_dtype
        return EstimatorState(_empty(dtype), jnp.zeros((), jnp.int32), _empty(), _empty())

    def step(self, rng_key, state, distribution, data):
        if data is None:
            raise ValueError("CD needs the data batch: its chains start at the data.")
        key_init, key_run = random.split(rng_key)
        chains = self.transition.init(key_init, distribution, _data_for(distribution, data))
        chains = _sweeps(key_run, chains, distribution, self.num_sweeps, self.transition)
        x = self.transition.position(chains)
        info = _info(distribution, x, chains, _empty())
        return x, state._replace(step=state.step + 1), info


@dataclasses.dataclass(frozen=True)
class PCD:
    """Persistent contrastive divergence (Tieleman 2008): ``num_chains`` chains that persist
    across parameter updates, ``num_sweeps`` sweeps per update.

    ``init_from_data=True`` (default) starts the chains at random data examples when data is
    given to :meth:`init`, else at uniformly random states.
    """

    num_chains: int = 100
    num_sweeps: int = 1
    init_from_data: bool = True
    transition: Any = GibbsTransition()

    def __post_init__(self):
        _check_positive("num_chains", self.num_chains)
        _check_positive("num_sweeps", self.num_sweeps)

    def init(self, rng_key, distribution, data=None) -> EstimatorState:
        key_pick, key_init = random.split(rng_key)
        if data is not None and self.init_from_data:
            data = _data_for(distribution, data)
            idx = random.randint(key_pick, (self.num_chains,), 0, data.shape[0])
            x = data[idx]
        else:
            x = distribution.random_state(key_pick, (self.num_chains,))
        chains = self.transition.init(key_init, distribution, x)
        return EstimatorState(chains, jnp.zeros((), jnp.int32), _empty(), _empty())

    def step(self, rng_key, state, distribution, data=None):
        del data
        chains = _sweeps(rng_key, state.chains, distribution, self.num_sweeps, self.transition)
        x = self.transition.position(chains)
        info = _info(distribution, x, chains, _empty())
        return x, state._replace(chains=chains, step=state.step + 1), info


def geometric_betas(num_temperatures: int, min_beta: float) -> jax.Array:
    """``num_temperatures`` inverse temperatures from 1 down to ``min_beta``, geometrically."""
    if num_temperatures == 1:
        return jnp.ones((1,))
    return min_beta ** (jnp.arange(num_temperatures) / (num_temperatures - 1))


@dataclasses.dataclass(frozen=True)
class ParallelTempering:
    """Persistent parallel tempering (replica exchange).

    Each of ``num_chains`` independent ladders holds one replica per inverse temperature
    ``betas[0] = 1 > betas[1] > ...``; a step runs ``num_sweeps`` Gibbs sweeps on every
    replica at its own temperature (``gibbs_sweep`` with ``beta``), then proposes swaps
    between adjacent temperatures, even pairs and odd pairs on alternate steps, accepted
    with probability ``min(1, exp(u_i(x_i) + u_j(x_j) - u_i(x_j) - u_j(x_i)))``, ``u_k`` the
    tempered energy at ``betas[k]`` (for RBMs the tempered *free* energy). The ``beta = 1``
    replicas are the samples.

    Parameters
    ----------
    num_chains : int
        Independent ladders.
    num_temperatures : int
        Used with ``min_beta`` when ``betas`` is not given: geometric spacing.
    min_beta : float
    betas : tuple of float, optional
        Explicit decreasing inverse temperatures starting at 1.
    num_sweeps : int
    """

    num_chains: int = 100
    num_temperatures: int = 10
    min_beta: float = 0.1
    betas: tuple[float, ...] | None = None
    num_sweeps: int = 1
    transition: Any = GibbsTransition()

    def __post_init__(self):
        _check_positive("num_chains", self.num_chains)
        _check_positive("num_sweeps", self.num_sweeps)
        if not getattr(self.transition, "exchangeable", True):
            raise ValueError(
                f"transition {type(self.transition).__name__} keeps state tied to one "
                "temperature, so its replicas cannot be exchanged; use GibbsTransition() or "
                "RelaxedHMC() with ParallelTempering."
            )
        if self.betas is not None:
            betas = tuple(float(b) for b in self.betas)
            if betas[0] != 1.0 or any(b <= 0 for b in betas) or any(
                later >= earlier for earlier, later in itertools.pairwise(betas)
            ):
                raise ValueError(
                    "betas must start at 1.0 and strictly decrease, staying positive; got "
                    f"{self.betas}."
                )
            object.__setattr__(self, "betas", betas)
        else:
            _check_positive("num_temperatures", self.num_temperatures)
            if not 0.0 < self.min_beta < 1.0:
                raise ValueError(f"min_beta must lie in (0, 1); got {self.min_beta}.")

    def ladder(self) -> jax.Array:
        """The inverse temperatures, shape ``(num_temperatures,)``."""
        if self.betas is not None:
            return jnp.asarray(self.betas)
        return geometric_betas(self.num_temperatures, self.min_beta)

    def init(self, rng_key, distribution, data=None) -> EstimatorState:
        del data
        key_x, key_init = random.split(rng_key)
        m = self.ladder().shape[0]
        x = distribution.random_state(key_x, (m, self.num_chains))
        chains = self.transition.init(key_init, distribution, x)
        zeros = jnp.zeros((max(m - 1, 0),), jnp.float32)
        return EstimatorState(chains, jnp.zeros((), jnp.int32), zeros, zeros)

    def _betas_for(self, distribution, dtype):
        betas = self.ladder().astype(dtype)
        extra = 1 + len(distribution.batch_shape)  # chains + batch axes
        return betas.reshape(betas.shape + (1,) * extra)

    def step(self, rng_key, state, distribution, data=None):
        del data
        key_sweep, key_swap = random.split(rng_key)
        dtype = distribution.chain_dtype
        betas = self._betas_for(distribution, dtype)
        chains = _sweeps(
            key_sweep, state.chains, distribution, self.num_sweeps, self.transition, betas
        )
        x = self.transition.position(chains)
        m = betas.shape[0]
        if m == 1:
            info = _info(distribution, x[0], chains, _empty(), replica=0)
            return x[0], state._replace(chains=chains, step=state.step + 1), info
        # u[k, l]: tempered energy of replica l at temperature k, for l in {k-1, k, k+1}.
        own = distribution.tempered_energy(x, betas)
        up = distribution.tempered_energy(x[:-1], betas[1:])  # replica k at beta_{k+1}
        down = distribution.tempered_energy(x[1:], betas[:-1])  # replica k+1 at beta_k
        log_accept = own[:-1] + own[1:] - up - down  # (m - 1, chains) + batch
        accept_prob = jnp.exp(jnp.minimum(log_accept, 0.0))
        parity = state.step % 2
        pair = jnp.arange(m - 1)
        active = (pair % 2 == parity).reshape((m - 1,) + (1,) * (log_accept.ndim - 1))
        u = random.uniform(key_swap, log_accept.shape, dtype)
        swap = active & (u < accept_prob)
        # Pairs of one parity are disjoint: replica k moves to k+1 if pair k swaps, to k-1
        # if pair k-1 swaps.
        no = jnp.zeros((1,) + swap.shape[1:], bool)
        from_above = jnp.concatenate([swap, no], 0)  # replica k takes x[k+1]
        from_below = jnp.concatenate([no, swap], 0)  # replica k takes x[k-1]

        def exchange(leaf):
            # Swap whole replicas (every leaf of the transition's state moves with them).
            extra = (1,) * (leaf.ndim - from_above.ndim)
            fa = from_above.reshape(from_above.shape + extra)
            fb = from_below.reshape(from_below.shape + extra)
            up = jnp.concatenate([leaf[1:], leaf[-1:]], 0)
            down = jnp.concatenate([leaf[:1], leaf[:-1]], 0)
            return jnp.where(fa, up, jnp.where(fb, down, leaf))

        chains = jax.tree.map(exchange, chains)
        x = self.transition.position(chains)
        reduce_axes = tuple(range(1, accept_prob.ndim))
        active_pairs = (pair % 2 == parity).astype(jnp.float32)
        attempts = active_pairs * accept_prob[0].size
        accepts = jnp.sum(swap, axis=reduce_axes).astype(jnp.float32)
        rate = jnp.where(active_pairs > 0, jnp.mean(accept_prob, axis=reduce_axes), jnp.nan)
        new_state = EstimatorState(
            chains,
            state.step + 1,
            state.swap_accepts + accepts,
            state.swap_attempts + attempts,
        )
        info = _info(distribution, x[0], chains, rate, replica=0)
        return x[0], new_state, info

    @staticmethod
    def swap_rates(state: EstimatorState) -> jax.Array:
        """Fraction of accepted swaps per adjacent temperature pair so far."""
        return state.swap_accepts / jnp.maximum(state.swap_attempts, 1.0)

