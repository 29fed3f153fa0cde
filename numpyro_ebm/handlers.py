r"""Effect handlers that make energy-based sample sites trainable inside numpyro.

:class:`negative_phase` runs a negative-phase estimator at every observed energy-based
sample site of a model and attaches its draws to the site's distribution, so that numpyro's
``SVI`` (or any ``jax.grad`` of a numpyro log density) differentiates the log-likelihood as

.. math::

    \nabla_\theta \log p_\theta(x) = \Delta_1 - \Delta_2,\qquad
    \Delta_1 = -\nabla_\theta E_\theta(x),\qquad
    \Delta_2 = \nabla_\theta \log Z_\theta \approx
        -\frac{1}{K}\sum_{k=1}^{K} \nabla_\theta E_\theta(\tilde x_k),

with ``E`` the energy of the observed units (the free energy of RBMs) and ``x~_k`` the
estimator's draws from the model.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax, random
from numpyro.distributions import ExpandedDistribution, Independent, MaskedDistribution
from numpyro.infer import SVI
from numpyro.infer.elbo import ELBO
from numpyro.primitives import Messenger, mutable, prng_key

from numpyro_ebm.distributions.base import EnergyBasedDistribution
from numpyro_ebm.infer.estimators import CD, PCD

__all__ = ["negative_phase"]

# SVI methods that run the model; negative_phase inspects their ``loss`` (see _check_loss).
_SVI_METHOD_CODES = frozenset(
    method.__code__ for method in (SVI.init, SVI.update, SVI.stable_update, SVI.evaluate)
)


class negative_phase(Messenger):
    r"""Attach a negative-phase estimator's draws to the observed energy-based sites.

    At every *observed* sample site whose distribution is a numpyro_ebm
    :class:`~numpyro_ebm.distributions.base.EnergyBasedDistribution` (possibly expanded by a
    ``plate``, masked, or reinterpreted with ``to_event``), the handler runs one
    ``estimator.step`` on the site's observed batch and replaces the site's distribution
    ``d`` by ``d.with_negative_samples(samples)``. The value of ``log_prob`` is unchanged (the
    best known ``log Z``); its gradient becomes

    .. math::

        \nabla_\theta \log p_\theta(x_b) = \underbrace{-\nabla_\theta E_\theta(x_b)}_{\Delta_1}
        \; - \; \underbrace{\Big(-\frac{1}{K}\sum_k \nabla_\theta E_\theta(\tilde x_k)\Big)}_{
        \Delta_2}

    for every example ``x_b``, so ``Trace_ELBO``'s gradient at the site is
    ``scale * sum_b (Delta1_b - Delta2)``: numpyro's ``scale`` (``N / B`` in a subsampled
    ``plate``) and masks act on the negative phase exactly as on the positive phase,
    because the surrogate for ``log Z`` is part of every example's ``log_prob``. Parameters
    that come from latent sites (a reparameterized guide) receive the same gradient through
    the sample.

    Parameters
    ----------
    fn : callable, optional
        The model. Without it the handler is a context manager or a decorator.
    estimator : CD, PCD or ParallelTempering
        Where the draws come from (default ``PCD()``). Any object with the estimators'
        ``init(rng_key, distribution, data)`` and
        ``step(rng_key, state, distribution, data) -> (samples, state, info)`` works if it
        is hashable (a frozen dataclass): its steps are compiled with it as a static argument.
    sites : str or collection of str, optional
        Names of the sites to handle; default all observed energy-based sites. A named site
        that never appears, or that is not energy-based, raises ``ValueError``.

    Notes
    -----
    **Persistent chains.** The state of a persistent estimator (:class:`~numpyro_ebm.infer.PCD`,
    :class:`~numpyro_ebm.infer.ParallelTempering`) lives in numpyro's mutable state, at the
    site ``f"{name}_negative_phase"`` as ``{"estimator_state": EstimatorState}``. ``SVI``
    threads it through ``init`` and ``update`` (``svi_state.mutable_state``), so the chains
    persist across steps and are never re-initialized; ``SVI.init`` already runs one step.
    :class:`~numpyro_ebm.infer.CD` keeps no chains and no mutable state. The estimator runs
    on the distribution with its parameters behind ``stop_gradient``: the sweeps are not
    differentiated.

    **Random keys.** Each step draws one key with ``numpyro.prng_key()``: under ``SVI`` the
    model is seeded from ``svi_state.rng_key`` on every step, so the keys change every step
    with no host round-trip, and ``svi.init(rng_key)`` fixes the whole run. Outside a
    ``numpyro.handlers.seed`` handler there is no key, and the handler raises.

    **Several particles.** ``Trace_ELBO(num_particles=P)`` with ``P > 1`` discards
    mutable state (numpyro warns "mutable state is currently ignored"), which would restart
    persistent chains every step; with a persistent estimator the handler raises
    ``ValueError`` when ``SVI`` first runs the model (in ``svi.init``). With :class:`CD`
    each particle runs its own CD step from its own key and the gradient is the mean over
    particles of ``Delta1 - Delta2`` at that particle's latent values. ELBOs without mutable
    state support (``TraceGraph_ELBO``, ``RenyiELBO``, ...) are rejected the same way when
    the estimator is persistent.

    **The loss value.** SVI's loss is the negative log-likelihood only where ``log Z`` is
    known (the model enumerates, or a value was attached with ``with_log_partition``);
    otherwise ``log_prob`` is unnormalized and the loss is a sum of energies, whose changes
    between steps do not track the likelihood.

    **Which sites.** Unobserved energy-based sites (latent, or imputed with ``obs_mask``) are
    left alone: there is no data for a positive phase. With ``obs_mask`` numpyro names the
    observed part ``f"{name}_observed"``. Apply the handler outside ``condition`` (so that
    the site is already observed when the handler sees it) and use it for training only:
    for predictions, run the model without it.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro, optax
    >>> from numpyro.infer import SVI, Trace_ELBO
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.handlers import negative_phase
    >>> from numpyro_ebm.infer import PCD
    >>> def model(data):
    ...     W = numpyro.param("W", lambda key: 0.1 * jax.random.normal(key, (6, 3)))
    ...     b = numpyro.param("b", jnp.zeros(6))
    ...     c = numpyro.param("c", jnp.zeros(3))
    ...     with numpyro.plate("data", data.shape[0]):
    ...         numpyro.sample("v", BernoulliRBM(W, b, c), obs=data)
    >>> pattern = jnp.asarray([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    >>> flips = jax.random.bernoulli(jax.random.key(1), 0.1, (64, 6))
    >>> data = jnp.tile(pattern, (32, 1)) ^ flips
    >>> model = negative_phase(model, estimator=PCD(num_chains=50))
    >>> svi = SVI(model, lambda data: None, optax.adam(0.01), Trace_ELBO())
    >>> result = svi.run(jax.random.key(0), 200, data, progress_bar=False)
    >>> state = result.state.mutable_state["v_negative_phase"]["estimator_state"]
    >>> state.chains.shape, int(state.step)  # svi.init ran the first step
    ((50, 6), 201)
    >>> bool(result.losses[-1] < result.losses[0])
    True
    """

    def __init__(
        self,
        fn: Any = None,
        *,
        estimator: Any = None,
        sites: str | Iterable[str] | None = None,
    ):
        if estimator is None:
            estimator = PCD()
        if not (
            callable(getattr(estimator, "init", None))
            and callable(getattr(estimator, "step", None))
        ):
            raise ValueError(
                "estimator must have init(rng_key, distribution, data) and "
                "step(rng_key, state, distribution, data) methods, e.g. "
                f"numpyro_ebm.infer.PCD(); got {estimator!r}."
            )
        try:
            hash(estimator)
        except TypeError:
            raise ValueError(
                f"estimator must be hashable (a frozen dataclass, like numpyro_ebm's "
                f"estimators): its step is compiled with the estimator as a static "
                f"argument; got an unhashable {type(estimator).__name__}."
            ) from None
        if isinstance(sites, str):
            sites = (sites,)
        self.estimator = estimator
        self.sites = None if sites is None else frozenset(sites)
        self._seen: set[str] = set()
        super().__init__(fn)

    @property
    def persistent(self) -> bool:
        """Whether the estimator carries chains between steps (all but :class:`CD`)."""
        return not isinstance(self.estimator, CD)

    def __enter__(self):
        self._seen = set()
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        super().__exit__(exc_type, exc_value, traceback)
        if exc_type is None and self.sites is not None:
            missing = sorted(self.sites - self._seen)
            if missing:
                raise ValueError(
                    f"sites {missing} were not found among the sample sites of the model; "
                    "check the names (with obs_mask, numpyro names the observed part "
                    "f'{name}_observed')."
                )

    def process_message(self, msg: dict) -> None:
        if msg["type"] != "sample":
            return
        name = msg["name"]
        if self.sites is not None:
            if name not in self.sites:
                return
            self._seen.add(name)
        distribution = _energy_based_base(msg["fn"])
        if distribution is None:
            if self.sites is not None:
                raise ValueError(
                    f"site {name!r} named in sites has distribution {type(msg['fn']).__name__}, "
                    "not an energy-based distribution; remove it from sites."
                )
            return
        if not msg["is_observed"]:
            return  # latent energy-based sites have no positive phase: left alone
        data = _examples(name, distribution, msg["value"])
        rng_key = prng_key()
        if rng_key is None:
            raise ValueError(
                f"negative_phase needs a random key at site {name!r}: run the model under "
                "numpyro.handlers.seed (SVI and Predictive do this), e.g. "
                "numpyro.handlers.seed(model, rng_seed=0)."
            )
        key_init, key_step = random.split(rng_key)
        if self.persistent:
            _check_loss(name, self.estimator)
        state = _estimator_init(self.estimator, key_init, distribution, data)
        if self.persistent:
            holder = mutable(f"{name}_negative_phase", {"estimator_state": state})
            state = holder["estimator_state"]
        samples, state = _estimator_step(self.estimator, key_step, state, distribution, data)
        if self.persistent:
            # In place: the trace holds this dict, and SVI collects it as the new state.
            holder["estimator_state"] = state
        msg["fn"] = _rebuild(msg["fn"], distribution.with_negative_samples(samples))


# Compiled once per estimator and distribution structure: SVI.init and Predictive run the
# model eagerly, and under an enclosing jit these are inlined. The chains see the parameters
# as constants: the sweeps are not differentiated.
@partial(jax.jit, static_argnums=0)
def _estimator_init(estimator, rng_key, distribution, data):
    return estimator.init(rng_key, jax.tree.map(lax.stop_gradient, distribution), data)


@partial(jax.jit, static_argnums=0)
def _estimator_step(estimator, rng_key, state, distribution, data):
    frozen = jax.tree.map(lax.stop_gradient, distribution)
    samples, state, _ = estimator.step(rng_key, state, frozen, data)
    return samples, state


def _energy_based_base(fn: Any) -> EnergyBasedDistribution | None:
    """The energy-based distribution under plate/mask/to_event wrappers, or None."""
    while isinstance(fn, ExpandedDistribution | MaskedDistribution | Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, EnergyBasedDistribution) else None


def _rebuild(fn: Any, distribution: EnergyBasedDistribution) -> Any:
    """``fn`` with its energy-based base distribution replaced by ``distribution``."""
    if isinstance(fn, EnergyBasedDistribution):
        return distribution
    base = _rebuild(fn.base_dist, distribution)
    if isinstance(fn, ExpandedDistribution):
        return ExpandedDistribution(base, fn.batch_shape)
    if isinstance(fn, MaskedDistribution):
        return MaskedDistribution(base, fn._mask)
    return Independent(base, fn.reinterpreted_batch_ndims)


def _examples(name: str, distribution: EnergyBasedDistribution, value: Any) -> jax.Array:
    """The observed value as ``(num_examples,) + batch_shape + event_shape``."""
    value = jnp.asarray(value)
    tail = distribution.batch_shape + distribution.event_shape
    if value.ndim < len(tail) or value.shape[value.ndim - len(tail) :] != tail:
        raise ValueError(
            f"the observed value of site {name!r} must have shape (..., *batch_shape, "
            f"*event_shape) = (..., *{tail}) to run a negative-phase estimator on it; got "
            f"shape {value.shape}. Give the distribution the full batch_shape (or observe "
            "one value per batch element)."
        )
    return value.reshape((-1,) + tail)


def _check_loss(name: str, estimator: Any) -> None:
    """Reject ELBOs that would drop the persistent chains (found on the SVI call stack)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code in _SVI_METHOD_CODES:
            loss = getattr(frame.f_locals.get("self"), "loss", None)
            break
        frame = frame.f_back
    else:
        return
    if loss is None:
        return
    if type(loss).loss_with_mutable_state is ELBO.loss_with_mutable_state:
        raise ValueError(
            f"{type(loss).__name__} does not support numpyro.mutable state, where "
            f"negative_phase keeps the persistent chains of {type(estimator).__name__} at site "
            f"{name!r}; use Trace_ELBO or TraceMeanField_ELBO, or the CD estimator, which "
            "keeps no chains."
        )
    num_particles = getattr(loss, "num_particles", 1)
    if num_particles > 1:
        raise ValueError(
            f"{type(loss).__name__}(num_particles={num_particles}) discards numpyro.mutable "
            f"state, where negative_phase keeps the persistent chains of "
            f"{type(estimator).__name__} at site {name!r}: they would restart every step. "
            "Use num_particles=1 (the negative phase already averages over the estimator's "
            "chains), or the CD estimator, which keeps no chains and supports several "
            "particles."
        )
