"""Block Gibbs sampling of an energy-based distribution.

Two layers, as in blackjax:

- a pure kernel, :func:`init` and :func:`kernel`, over an explicit :class:`GibbsState`
  (``rng_key, state -> state, info``), jittable and vmappable, with any number of chains as
  leading axes of the state;
- :class:`BlockGibbs`, the same kernel as a ``numpyro.infer.mcmc.MCMCKernel`` so that
  ``numpyro.infer.MCMC`` runs it (progress bar, ``extra_fields``, ``print_summary``,
  ``arviz.from_numpyro``).

Each sweep updates every unit once, block by block: both layers of an RBM (hidden units
sampled and discarded), colour classes of Boltzmann machines, Ising and Potts models, the
Gaussian visible layer of a GB-RBM. See each family's ``gibbs_sweep``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax, random
from numpyro.infer.mcmc import MCMCKernel

from numpyro_ebm.distributions.base import EnergyBasedDistribution

__all__ = [
    "BlockGibbs",
    "BlockGibbsState",
    "GibbsInfo",
    "GibbsState",
    "GibbsTransition",
    "HiddenGibbsState",
    "HiddenGibbsTransition",
    "init",
    "kernel",
    "mean_activation",
]


class GibbsState(NamedTuple):
    """State of block-Gibbs chains.

    position : configurations, shape ``chains + batch_shape + event_shape`` in the chain dtype
    energy : ``E(position)`` (the free energy for RBMs), shape ``chains + batch_shape``
    """

    position: jax.Array
    energy: jax.Array


class GibbsInfo(NamedTuple):
    """What one call of :func:`kernel` reports, per chain, after its sweeps.

    energy : ``E(position)`` (the free energy for RBMs), shape ``chains + batch_shape``
    mean_activation : mean of the units over the event axes (the magnetization for Ising
        spins), shape ``chains + batch_shape``
    """

    energy: jax.Array
    mean_activation: jax.Array | None = None


def mean_activation(distribution: EnergyBasedDistribution, position: Any) -> jax.Array:
    """Mean of the units of ``position`` over the event axes, shape ``chains + batch_shape``
    (the magnetization for Ising spins, the mean visible activation for RBMs)."""
    position = jnp.asarray(position)
    axes = tuple(range(position.ndim - len(distribution.event_shape), position.ndim))
    return jnp.mean(position.astype(jnp.result_type(float)), axis=axes)


def init(distribution: EnergyBasedDistribution, position: Any) -> GibbsState:
    """Start chains at ``position`` (shape ``chains + batch_shape + event_shape``)."""
    position = jnp.asarray(position, dtype=distribution.chain_dtype)
    return GibbsState(position, distribution.energy(position))


def kernel(
    rng_key: jax.Array,
    state: GibbsState,
    distribution: EnergyBasedDistribution,
    *,
    beta: Any = 1.0,
    num_sweeps: int = 1,
) -> tuple[GibbsState, GibbsInfo]:
    """Run ``num_sweeps`` block-Gibbs sweeps at inverse temperature ``beta``.

    Parameters
    ----------
    rng_key : jax.Array
        One key for all chains (each sweep draws independent bits for every chain).
    state : GibbsState
    distribution : EnergyBasedDistribution
    beta : ArrayLike
        Inverse temperature, broadcasting against ``chains + batch_shape``; the sweeps leave
        ``exp(-beta * E(x))`` invariant.
    num_sweeps : int
        Sweeps per call (static).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.infer import gibbs
    >>> rbm = BernoulliRBM(jnp.zeros((4, 2)))
    >>> state = gibbs.init(rbm, jnp.zeros((10, 4)))
    >>> state, info = jax.jit(gibbs.kernel, static_argnums=2)(jax.random.key(0), state, rbm)
    >>> state.position.shape, info.energy.shape
    ((10, 4), (10,))
    """

    def body(x, key):
        return distribution.gibbs_sweep(key, x, beta), None

    if num_sweeps == 1:
        position = distribution.gibbs_sweep(rng_key, state.position, beta)
    else:
        position, _ = lax.scan(body, state.position, random.split(rng_key, num_sweeps))
    energy = distribution.energy(position)
    info = GibbsInfo(energy, mean_activation(distribution, position))
    return GibbsState(position, energy), info


@dataclasses.dataclass(frozen=True)
class GibbsTransition:
    """The block-Gibbs sweep as a *transition* for the persistent estimators.

    A transition is what an estimator runs on its chains between parameter updates; every
    transition has the same three methods (``init``, ``step``, ``position``) so estimators
    can run any of them (see :class:`numpyro_ebm.infer.RelaxedHMC` for another). The chain
    state of block Gibbs is just the configuration.
    """

    def init(self, rng_key, distribution, position):
        del rng_key
        return jnp.asarray(position, distribution.chain_dtype)

    def step(self, rng_key, state, distribution, beta=1.0):
        return distribution.gibbs_sweep(rng_key, state, beta)

    def position(self, state):
        return state


class BlockGibbsState(NamedTuple):
    """State of :class:`BlockGibbs` as numpyro sees it: ``z`` holds the sample site,
    ``energy`` and ``potential_energy`` (equal: ``E(x)``; numpyro and ArviZ know the latter
    as the negative log density, ``lp``) can be requested as ``extra_fields``, and so can
    ``mean_activation`` (mean of the units, see :func:`mean_activation`)."""

    i: jax.Array
    z: dict[str, jax.Array]
    energy: jax.Array
    potential_energy: jax.Array
    rng_key: jax.Array
    mean_activation: jax.Array | None = None


def _batched_key(rng_key: jax.Array) -> bool:
    if jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        return rng_key.ndim > 0
    return rng_key.ndim > 1


class BlockGibbs(MCMCKernel):
    """Block Gibbs on an energy-based distribution, as a numpyro ``MCMCKernel``.

    Parameters
    ----------
    distribution : EnergyBasedDistribution
        The distribution to sample (its batch dimensions are sampled jointly).
    site_name : str
        Name of the sample site in ``mcmc.get_samples()`` (default ``"x"``).
    num_sweeps : int
        Sweeps per draw (thinning inside the kernel; default 1).

    Notes
    -----
    All ``chain_method`` values work; ``"vectorized"`` runs the chains as one batched
    program and is the fast choice on one device. Draws are returned in the distribution's
    ``sample_dtype``. Extra fields: ``energy`` and ``potential_energy`` (both ``E(x)``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro.infer import MCMC
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.infer import BlockGibbs
    >>> rbm = BernoulliRBM(0.5 * jnp.ones((5, 3)))
    >>> mcmc = MCMC(BlockGibbs(rbm), num_warmup=10, num_samples=20, num_chains=4,
    ...             chain_method="vectorized", progress_bar=False)
    >>> mcmc.run(jax.random.key(0), extra_fields=("energy",))
    >>> mcmc.get_samples(group_by_chain=True)["x"].shape
    (4, 20, 5)
    """

    sample_field = "z"

    def __init__(
        self,
        distribution: EnergyBasedDistribution,
        *,
        site_name: str = "x",
        num_sweeps: int = 1,
    ):
        if not isinstance(distribution, EnergyBasedDistribution):
            raise ValueError(
                "distribution must be a numpyro_ebm EnergyBasedDistribution (for example "
                f"BernoulliRBM); got {type(distribution).__name__}."
            )
        if int(num_sweeps) < 1:
            raise ValueError(f"num_sweeps must be a positive integer; got {num_sweeps}.")
        self.distribution = distribution
        self.site_name = site_name
        self.num_sweeps = int(num_sweeps)

    @property
    def model(self):
        return None

    @property
    def default_fields(self) -> tuple[str, ...]:
        return ("z",)

    def _init_one(self, rng_key, init_position):
        key_init, rng_key = random.split(rng_key)
        if init_position is None:
            init_position = self.distribution.random_state(key_init)
        state = init(self.distribution, init_position)
        return BlockGibbsState(
            jnp.zeros((), jnp.int32),
            {self.site_name: state.position},
            state.energy,
            state.energy,
            rng_key,
            mean_activation(self.distribution, state.position),
        )

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        position = None
        if init_params is not None:
            if isinstance(init_params, dict):
                if self.site_name not in init_params:
                    raise ValueError(
                        f"init_params must be a dict with key {self.site_name!r} (the site "
                        f"name of this kernel); got keys {sorted(init_params)}."
                    )
                position = init_params[self.site_name]
            else:
                position = init_params
            position = self.distribution._check_value(position)
        if _batched_key(rng_key):
            if position is None:
                return jax.vmap(lambda k: self._init_one(k, None))(rng_key)
            position = jnp.broadcast_to(
                position,
                rng_key.shape[:1] + self.distribution.batch_shape + self.distribution.event_shape,
            )
            return jax.vmap(self._init_one)(rng_key, position)
        return self._init_one(rng_key, position)

    def _sample_one(self, state: BlockGibbsState) -> BlockGibbsState:
        rng_key, key_sweep = random.split(state.rng_key)
        position = state.z[self.site_name]
        new, info = kernel(
            key_sweep,
            GibbsState(position, state.energy),
            self.distribution,
            num_sweeps=self.num_sweeps,
        )
        return BlockGibbsState(
            state.i + 1,
            {self.site_name: new.position},
            new.energy,
            new.energy,
            rng_key,
            info.mean_activation,
        )

    def sample(self, state, model_args, model_kwargs):
        if _batched_key(state.rng_key):
            return jax.vmap(self._sample_one)(state)
        return self._sample_one(state)

    def postprocess_fn(self, model_args, model_kwargs):
        dtype = self.distribution.sample_dtype

        def cast(z):
            return {name: value.astype(dtype) for name, value in z.items()}

        return cast

    def get_diagnostics_str(self, state) -> str:
        return f"energy {float(jnp.mean(state.energy)):.4g}"


class HiddenGibbsState(NamedTuple):
    """Chains of :class:`HiddenGibbsTransition`: the visible configuration and the hidden
    layer drawn from ``p(h | visible)`` at the end of the last step."""

    visible: jax.Array
    hidden: jax.Array


@dataclasses.dataclass(frozen=True)
class HiddenGibbsTransition:
    """Block Gibbs for :class:`~numpyro_ebm.BernoulliRBM` chains that carry the hidden layer.

    Each step draws ``v ~ p(v | h)`` and then ``h ~ p(h | v)`` (a full block-Gibbs sweep of the
    joint ``p(v, h)``, tempered by ``beta``), and returns ``v``. The product ``c + v W`` of the
    returned samples is then computed once per update: the Rao-Blackwellized negative phase
    (the gradient of ``F(v)``) needs the same product under the same parameters, and under
    ``jit`` XLA computes identical products once. A PCD-1 update then costs five matrix
    products instead of the six of :class:`GibbsTransition` (which draws ``h`` from the
    visible state at the *next* parameters); both are exact block Gibbs for fixed parameters.

    The carried hidden layer belongs to the temperature it was drawn at, so replicas of this
    transition cannot be exchanged: :class:`~numpyro_ebm.infer.ParallelTempering` refuses it.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.infer import PCD, HiddenGibbsTransition
    >>> rbm = BernoulliRBM(0.1 * jnp.ones((6, 3)))
    >>> pcd = PCD(num_chains=8, transition=HiddenGibbsTransition())
    >>> state = pcd.init(jax.random.key(0), rbm)
    >>> samples, state, info = pcd.step(jax.random.key(1), state, rbm)
    >>> samples.shape, state.chains.hidden.shape
    ((8, 6), (8, 3))
    """

    exchangeable = False

    def _check(self, distribution):
        from numpyro_ebm.distributions.rbm import BernoulliRBM

        if not isinstance(distribution, BernoulliRBM):
            raise ValueError(
                "HiddenGibbsTransition runs BernoulliRBM chains only; got "
                f"{type(distribution).__name__}. Use GibbsTransition() for other families."
            )

    def init(self, rng_key, distribution, position):
        from numpyro_ebm.distributions.rbm import bernoulli_draw

        self._check(distribution)
        visible = jnp.asarray(position, distribution.chain_dtype)
        hidden = bernoulli_draw(rng_key, distribution.visible_to_hidden(visible))
        return HiddenGibbsState(visible, hidden)

    def step(self, rng_key, state, distribution, beta=1.0):
        from numpyro_ebm.distributions.rbm import bernoulli_draw, expand_beta

        self._check(distribution)
        key_v, key_h = random.split(rng_key)
        beta = expand_beta(beta)
        visible = bernoulli_draw(key_v, beta * distribution.hidden_to_visible(state.hidden))
        hidden = bernoulli_draw(key_h, beta * distribution.visible_to_hidden(visible))
        return HiddenGibbsState(visible, hidden)

    def position(self, state):
        return state.visible
