r"""Energy-based priors inside NumPyro models: block updates of the EBM sites, NUTS for the rest.

A model such as

.. code-block:: python

    def model(y):
        v = numpyro.sample("v", BernoulliRBM(W, b, c))        # binary image prior
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Normal(v, sigma).to_event(1), obs=y)

has the posterior conditional of an EBM site ``v`` (every other site held fixed)

.. math::

    \pi(v) \propto e^{-E(v)}\, L(v), \qquad
    \log L(v) = \sum_{\text{sites } s \neq v} \log p_s(\text{value}_s \mid \ldots, v),

where ``L`` collects every other factor of the model that depends on ``v``. When ``L``
factorizes per unit, ``L(v) = prod_i L_i(v_i)``, the *local evidence* of unit ``i``,

.. math::

    l_i = \log L(v_i = \text{high}) - \log L(v_i = \text{low}),

does not depend on the other units, and adding it to the EBM's own conditional log-odds gives
the exact conditional: for an RBM (hidden units ``h`` as auxiliary variables) ``v | h`` has
logits ``b + W h + l``; for Boltzmann machines and Ising models each colour class has logits
``(high - low)(h + J x) + l``. :class:`EBMSiteGibbs` computes ``l`` for every unit in one
vectorized pass. When unit ``i`` enters only element ``i`` of the other sites' elementwise
log-density terms (before numpyro sums them over event dimensions; for example
``Normal(v, sigma)``), ``l`` is read off those terms at all-low and all-high values of the
site (:func:`per_unit_evidence`): two evaluations of the model, ``O(n)``. ``init`` verifies
that structure on concrete values (a Jacobian that must be diagonal at a random relaxed
value, and agreement with the general pass at a random configuration) and records the sites
in ``per_unit_sites``; otherwise the general pass evaluates the model at ``v`` and at ``v``
with each single unit flipped (:func:`unit_evidence`, ``vmap``-ed): ``n + 1`` evaluations,
``O(n^2)`` for an ``n``-unit likelihood.

Whether ``L`` factorizes decides the update (``factorized``):

``True``
    Declared by the user: exact block-Gibbs updates with ``l`` computed once per step.
``None`` (default)
    The same block proposals, each followed by a Metropolis-Hastings test with ``l``
    recomputed at the proposal. Exact for *any* likelihood; when ``L`` does factorize the
    proposal is the exact conditional and every proposal is accepted (``accept_prob == 1``),
    so the only price is a second evidence pass (on the elementwise path, where ``l`` does
    not depend on ``v``, just the two model evaluations of the test). A low
    ``accept_prob`` says the likelihood couples units: use ``False``.
``False``
    Gibbs-with-gradients (Grathwohl et al. 2021): ``num_flips`` Metropolis-Hastings single-unit
    flips per step, the unit to flip drawn from ``softmax(d / 2)`` where
    ``d_i = (x_i' - x_i) d log pi / d x_i`` is the first-order estimate (gradient of the
    relaxed conditional ``-E(x) + log L(x)``) of the change of the log density from flipping
    ``i``. Needs an energy and a likelihood differentiable in a relaxed (real-valued) ``x``.

Every update leaves the exact conditional invariant; :class:`EBMGibbs` alternates them with
NUTS (or HMC) on the continuous sites, through NumPyro's composite ``Gibbs`` kernel.

References
----------
Grathwohl, Swersky, Hashemi, Duvenaud, Maddison (2021), "Oops I took a gradient: scalable
sampling for discrete distributions", ICML.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from numpyro.distributions import ExpandedDistribution, Independent, MaskedDistribution
from numpyro.handlers import seed, trace
from numpyro.infer import NUTS
from numpyro.infer.gibbs import (
    GIBBS_SITES_KWARG,
    Gibbs,
    GibbsState,
    conditioned,
    prototype_trace,
    with_conditioning,
)
from numpyro.infer.hmc import HMC
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import identity

from numpyro_ebm.distributions.base import EnergyBasedDistribution
from numpyro_ebm.distributions.rbm import BernoulliRBM, bernoulli_draw
from numpyro_ebm.infer.gibbs import _batched_key

__all__ = [
    "EBMGibbs",
    "EBMGibbsState",
    "EBMSiteGibbs",
    "EBMSiteState",
    "ebm_latent_sites",
    "gwg_flip_log_probs",
    "per_unit_evidence",
    "unit_evidence",
]


# ---------------------------------------------------------------------------- model access
def ebm_latent_sites(model_trace: Any) -> tuple[str, ...]:
    """Unobserved sample sites whose distribution is an :class:`EnergyBasedDistribution`
    (also under ``numpyro.plate``). Usable as the sites of a block of NumPyro's ``Gibbs``."""
    return tuple(
        name
        for name, site in model_trace.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and isinstance(_unwrap(site["fn"]), EnergyBasedDistribution)
    )


def _unwrap(fn: Any) -> Any:
    while isinstance(fn, ExpandedDistribution | MaskedDistribution):
        fn = fn.base_dist
    return fn


def _is_masked(fn: Any) -> bool:
    while isinstance(fn, ExpandedDistribution | MaskedDistribution):
        if isinstance(fn, MaskedDistribution):
            return True
        fn = fn.base_dist
    return False


def _trace_at(model, model_args, model_kwargs, values) -> dict:
    """Trace of the (conditioned) model with ``values`` fixed; every latent site must be in
    ``values`` or in the conditioning already carried by ``model_kwargs``."""
    kwargs = with_conditioning(model_kwargs, values)
    return trace(seed(model, rng_seed=0)).get_trace(*model_args, **kwargs)


def _elementwise_log_prob(fn: Any, value: Any) -> tuple[jax.Array, int]:
    """``fn.log_prob(value)`` before the sums over the dimensions that ``to_event`` (numpyro's
    ``Independent``) reinterprets, masks applied: ``(terms, num_summed)`` with ``terms`` of
    shape ``fn.batch_shape + S``, ``len(S) == num_summed``, whose sum over ``S`` is
    ``fn.log_prob(value)``."""
    if isinstance(fn, Independent):
        terms, num_summed = _elementwise_log_prob(fn.base_dist, value)
        return terms, num_summed
    if isinstance(fn, MaskedDistribution):
        terms, num_summed = _elementwise_log_prob(fn.base_dist, value)
        mask = jnp.asarray(fn._mask)
        mask = mask.reshape(mask.shape + (1,) * num_summed)
        return jnp.where(mask, terms, 0.0), num_summed
    if isinstance(fn, ExpandedDistribution):
        terms, num_summed = _elementwise_log_prob(fn.base_dist, value)
        trailing = terms.shape[terms.ndim - num_summed :] if num_summed else ()
        return jnp.broadcast_to(terms, tuple(fn.batch_shape) + trailing), num_summed
    return jnp.asarray(fn.log_prob(value)), 0


def _site_terms(site: dict) -> jax.Array:
    """The elementwise log-density terms of a sample site (scale applied), see
    :func:`_elementwise_log_prob`."""
    terms, num_summed = _elementwise_log_prob(site["fn"], site["value"])
    if site.get("scale") is not None:
        scale = jnp.asarray(site["scale"])
        terms = scale.reshape(scale.shape + (1,) * num_summed) * terms
    return terms


def _sum_log_probs(model_trace: dict, exclude: Sequence[str] = ()) -> jax.Array:
    total = jnp.zeros(())
    for name, site in model_trace.items():
        if site["type"] != "sample" or name in exclude:
            continue
        log_prob = site["fn"].log_prob(site["value"])
        if site.get("scale") is not None:
            log_prob = site["scale"] * log_prob
        total = total + jnp.sum(log_prob)
    return total


# ---------------------------------------------------------------------------- pure pieces
def unit_evidence(
    log_rest: Callable[[jax.Array], jax.Array], x: jax.Array, low: Any, high: Any
) -> tuple[jax.Array, jax.Array]:
    """Per-unit local evidence ``l_i = log L(x_i = high) - log L(x_i = low)`` in one pass.

    ``log_rest(x)`` is ``log L(x)`` (a scalar); it is evaluated at ``x`` and, ``vmap``-ed, at
    ``x`` with each single unit flipped. When ``L`` factorizes per unit, ``l_i`` does not
    depend on the other units; otherwise it is the evidence *at* ``x``.

    Parameters
    ----------
    log_rest : callable
        ``x -> log L(x)`` for ``x`` of the shape of ``x``.
    x : jax.Array
        Current configuration (floating dtype, values ``low``/``high``), any shape.
    low, high : float
        The two unit values.

    Returns
    -------
    (evidence, log_rest_x) : the evidence, shape of ``x``, and ``log L(x)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_ebm.infer.priors import unit_evidence
    >>> log_rest = lambda x: jnp.sum(jnp.where(x > 0, jnp.log(0.8), jnp.log(0.2)))
    >>> ev, _ = unit_evidence(log_rest, jnp.asarray([0.0, 1.0]), 0, 1)
    >>> [round(float(e), 4) for e in ev]  # log(0.8 / 0.2) for both units
    [1.3863, 1.3863]
    """
    flat = x.reshape(-1)
    n = flat.shape[0]
    flipped = jnp.where(jnp.eye(n, dtype=bool), (low + high) - flat[None, :], flat[None, :])
    base = log_rest(x)
    others = jax.vmap(lambda f: log_rest(f.reshape(x.shape)))(flipped)
    evidence = jnp.where(flat == high, base - others, others - base)
    return evidence.reshape(x.shape), base


def per_unit_evidence(
    model: Callable,
    model_args: tuple,
    model_kwargs: dict,
    values: dict[str, Any],
    name: str,
    sites: Sequence[str],
    x: jax.Array,
    low: Any,
    high: Any,
) -> jax.Array:
    """Per-unit local evidence of the EBM site ``name`` read off elementwise: O(n).

    The model is traced twice, with every unit of ``name`` low and with every unit high (the
    other latent sites at ``values``), and the elementwise log-density terms of ``sites``
    (before numpyro's sums over event dimensions; masks and scales applied) are summed over
    their leading axes down to the shape of ``x`` and subtracted. Equals
    :func:`unit_evidence` when unit ``i`` of ``name`` enters only element ``i`` of those
    terms and no other site depends on ``name``; :class:`EBMSiteGibbs` verifies that at
    ``init`` before taking this path.

    Parameters
    ----------
    model : callable
        A model conditioned through ``numpyro.infer.gibbs.conditioned``.
    model_args, model_kwargs :
        The model's arguments.
    values : dict
        Values of the other latent sites.
    name : str
        The EBM site.
    sites : sequence of str
        Sites whose terms end with the shape of ``x``, unit ``i`` entering element ``i``.
    x : jax.Array
        A value of the site (only its shape and dtype are used).
    low, high : float
        The two unit values.

    Returns
    -------
    jax.Array
        ``l``, the shape of ``x``.

    Examples
    --------
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer.gibbs import conditioned
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.infer.priors import per_unit_evidence
    >>> def model():
    ...     v = numpyro.sample("v", BernoulliRBM(jnp.zeros((2, 1))))
    ...     numpyro.sample("y", dist.Normal(v, 1.0).to_event(1), obs=jnp.asarray([1.0, 0.0]))
    >>> ev = per_unit_evidence(conditioned(model), (), {}, {}, "v", ["y"], jnp.zeros(2), 0, 1)
    >>> [round(float(e), 4) for e in ev]  # (y - 0)^2 / 2 - (y - 1)^2 / 2 = y - 1/2
    [0.5, -0.5]
    """
    ndim = x.ndim

    def terms(value):
        model_trace = _trace_at(model, model_args, model_kwargs, {**values, name: value})
        total = jnp.zeros(x.shape, x.dtype)
        for site in sites:
            t = _site_terms(model_trace[site])
            total = total + jnp.sum(t, axis=tuple(range(t.ndim - ndim)))
        return total

    return terms(jnp.full(x.shape, high, x.dtype)) - terms(jnp.full(x.shape, low, x.dtype))


def _verified_per_unit_sites(model, name, fn, model_args, model_kwargs):
    """Sites carrying the per-unit evidence of the EBM site ``name`` elementwise, or ``None``.

    On concrete values (a prototype trace from a fixed key; conditioning values that are
    tracers are redrawn), two checks, both required:

    1. at a random relaxed value ``x0`` strictly between ``low`` and ``high``, the Jacobian of
       every other site's elementwise terms with respect to ``x0`` is zero, or the site's
       terms end with the shape of ``x`` and the Jacobian is diagonal over it (element ``i``
       depends on unit ``i`` only);
    2. at a random binary value, :func:`per_unit_evidence` over those sites equals the
       general pass :func:`unit_evidence` to within float rounding (this also catches a
       dependence through non-differentiable operations, which the Jacobian misses).

    A likelihood that couples units (``y ~ Normal(v.sum(), 1)``, a permuted or a broadcast
    mean) fails one of the two. Both are checks at one point (and at the prototype values of
    the other sites): a likelihood whose coupling of units switches on only elsewhere would
    pass them; ``factorized=None`` keeps a Metropolis-Hastings test that stays exact then.
    """
    conditioning = {
        key: value
        for key, value in model_kwargs.get(GIBBS_SITES_KWARG, {}).items()
        if not isinstance(value, jax.core.Tracer)
    }
    kwargs = {**model_kwargs, GIBBS_SITES_KWARG: conditioning}
    proto = prototype_trace(model, random.key(0), model_args, kwargs)
    values = {
        key: site["value"]
        for key, site in proto.items()
        if site["type"] == "sample" and not site["is_observed"] and key != name
    }
    shape = tuple(jnp.shape(proto[name]["value"]))
    dtype = fn.chain_dtype
    low, high = (float(v) for v in fn.support_values)
    num_units = math.prod(shape)
    rng = np.random.default_rng(0)

    def all_terms(x):
        model_trace = _trace_at(model, model_args, kwargs, {**values, name: x})
        return {
            key: _site_terms(site)
            for key, site in model_trace.items()
            if site["type"] == "sample" and key != name
        }

    x0 = jnp.asarray(low + (high - low) * rng.uniform(0.2, 0.8, shape), dtype)
    terms, jacobian = jax.jit(lambda x: (all_terms(x), jax.jacfwd(all_terms)(x)))(x0)
    off_diagonal = ~np.eye(num_units, dtype=bool)
    sites = []
    for key, t in terms.items():
        aligned = t.ndim >= len(shape) and tuple(t.shape[t.ndim - len(shape) :]) == shape
        j = np.asarray(jacobian[key])
        if not aligned:
            if np.any(j != 0):
                return None
            continue
        if np.any(j.reshape(-1, num_units, num_units)[:, off_diagonal] != 0):
            return None
        sites.append(key)

    def log_rest(x):
        return _sum_log_probs(_trace_at(model, model_args, kwargs, {**values, name: x}), (name,))

    x1 = jnp.asarray(np.where(rng.uniform(size=shape) < 0.5, low, high), dtype)

    @jax.jit
    def both(x):
        general, base = unit_evidence(log_rest, x, low, high)
        fast = per_unit_evidence(model, model_args, kwargs, values, name, sites, x, low, high)
        return general, base, fast

    general, base, fast = both(x1)
    general, fast = np.asarray(general, np.float64), np.asarray(fast, np.float64)
    # float rounding of the two sums of the general pass: a few ulps of their magnitude
    tolerance = 100 * float(jnp.finfo(dtype).eps) * (abs(float(base)) + np.abs(general).max() + 1)
    if not np.all(np.abs(fast - general) <= tolerance):
        return None
    return tuple(sites)


def gwg_flip_log_probs(grad: jax.Array, x: jax.Array, low: Any, high: Any) -> jax.Array:
    """Log-probabilities of the Gibbs-with-gradients proposal: which unit to flip.

    ``log softmax(d / 2)`` with ``d_i = (x_i' - x_i) * grad_i`` (``x_i'`` the flipped value),
    the first-order estimate of the change of ``log pi`` from flipping unit ``i``. Shapes:
    ``grad`` and ``x`` flat ``(n,)``; returns ``(n,)``.
    """
    d = ((low + high) - 2.0 * x) * grad
    return jax.nn.log_softmax(0.5 * d)


def _bernoulli_log_prob(value_is_high, logits, mask) -> jax.Array:
    log_probs = jnp.where(value_is_high, -jax.nn.softplus(-logits), -jax.nn.softplus(logits))
    return jnp.sum(jnp.where(mask, log_probs, 0.0))


# ---------------------------------------------------------------------------- block kernel
class EBMSiteState(NamedTuple):
    """State of :class:`EBMSiteGibbs`.

    z : the EBM sites' values (``{name: array}``, the sites' sample dtype)
    hidden : RBM sites' hidden units (auxiliary variables of the last update), by site
    potential_energy : ``-log p(all sites)`` at ``z`` under the current conditioning (EBM
        sites' ``log Z`` included only where it is known); NaN inside :class:`EBMGibbs` with
        an inner kernel, which reports that kernel's (saving two model evaluations a step)
    accept_prob : mean Metropolis-Hastings acceptance of the last update (1 for exact Gibbs)
    rng_key : key for the next step
    """

    z: dict[str, jax.Array]
    hidden: dict[str, jax.Array]
    potential_energy: jax.Array
    accept_prob: jax.Array
    rng_key: jax.Array


class EBMSiteGibbs(MCMCKernel):
    """Block updates of the energy-based sites of a NumPyro model, the others held fixed.

    A block kernel for NumPyro's composite ``numpyro.infer.Gibbs`` (see :class:`EBMGibbs`
    for the usual pairing with NUTS); on a model whose latent sites are all EBM sites it also
    runs alone under ``numpyro.infer.MCMC``. One step updates every EBM site once, in trace
    order. See the module docstring for the three update modes (``factorized``).

    Parameters
    ----------
    model : callable
        The NumPyro model.
    factorized : bool or None
        ``True``: the rest of the model factorizes per unit of every EBM site (declared;
        exact block Gibbs). ``None`` (default): block proposals with a Metropolis-Hastings
        test (exact for any likelihood). ``False``: Gibbs-with-gradients flips.
    num_flips : int, optional
        Gibbs-with-gradients flips per step (``factorized=False``); default: the number of
        units of the site.

    Notes
    -----
    Supported families: :class:`~numpyro_ebm.BernoulliRBM` (hidden units as auxiliary
    variables), and binary families with colour classes and ``conditional_logits``
    (``BoltzmannMachine``, ``IsingModel``, ``IsingModel.lattice``). Gibbs-with-gradients
    works for any binary family whose energy is differentiable in a relaxed value.
    """

    sample_field = "z"

    def __init__(
        self,
        model: Callable,
        *,
        factorized: bool | None = None,
        num_flips: int | None = None,
    ):
        if factorized not in (True, False, None):
            raise ValueError(f"factorized must be True, False or None; got {factorized!r}.")
        if num_flips is not None and int(num_flips) < 1:
            raise ValueError(f"num_flips must be a positive integer; got {num_flips}.")
        self._model = model
        self.factorized = factorized
        self.num_flips = None if num_flips is None else int(num_flips)
        self._sites: tuple[str, ...] = ()
        # False inside EBMGibbs with an inner kernel, whose potential energy is reported
        self._track_potential = True
        #: ``{EBM site: names of the sites read elementwise, or None}``, set by ``init``
        self.per_unit_sites: dict[str, tuple[str, ...] | None] = {}

    @property
    def model(self):
        return self._model

    @property
    def default_fields(self) -> tuple[str, ...]:
        return ("z",)

    def wrap_model(self, wrapper):
        kernel = copy.copy(self)
        kernel._model = wrapper(self._model)
        kernel._sites = ()
        kernel.per_unit_sites = {}
        return kernel

    def get_constrain_fn(self, model_args, model_kwargs):
        return identity

    def postprocess_fn(self, model_args, model_kwargs):
        return identity

    def get_diagnostics_str(self, state) -> str:
        return f"ebm accept {float(jnp.mean(state.accept_prob)):.3g}"

    # ------------------------------------------------------------------ init
    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        if self._model is None:
            raise ValueError("EBMSiteGibbs needs a model.")
        if _batched_key(rng_key):
            raise ValueError(
                "EBMSiteGibbs runs one chain per key; for several chains use chain_method="
                "'sequential', 'parallel' or jax.vmap, not 'vectorized'."
            )
        model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
        self._model = conditioned(self._model)
        rng_key, key_trace = random.split(rng_key)
        model_trace = prototype_trace(self._model, key_trace, model_args, model_kwargs)
        sites = ebm_latent_sites(model_trace)
        if not sites:
            raise ValueError(
                "the model has no latent site whose distribution is a numpyro_ebm "
                "EnergyBasedDistribution; sample one with numpyro.sample(name, ebm) and no obs."
            )
        init_params = {} if init_params is None else dict(init_params)
        others = [
            name
            for name, site in model_trace.items()
            if site["type"] == "sample" and not site["is_observed"] and name not in sites
        ]
        if others:
            raise ValueError(
                f"EBMSiteGibbs updates only the EBM sites {list(sites)}; the latent sites "
                f"{others} need another kernel: use EBMGibbs (NUTS for them)."
            )
        for name in sites:
            site = model_trace[name]
            if _is_masked(site["fn"]) or site.get("scale") is not None:
                raise ValueError(
                    f"site {name!r} is masked or scaled (numpyro.handlers.mask/scale or "
                    "Distribution.mask); its block updates use the energy-based model's own "
                    "conditionals, which a mask or scale would change. Remove the mask/scale "
                    "from the EBM site (mask or scale the observation sites instead)."
                )
            self._check_family(name, _unwrap(site["fn"]))
        self._sites = sites
        self.per_unit_sites = {}
        if self.factorized is not False:
            for name in sites:
                fn = _unwrap(model_trace[name]["fn"])
                self.per_unit_sites[name] = self._find_per_unit_sites(
                    name, fn, model_args, model_kwargs
                )
        z = {name: jnp.asarray(init_params.get(name, model_trace[name]["value"])) for name in sites}
        hidden = {}
        for name in sites:
            fn = _unwrap(model_trace[name]["fn"])
            if isinstance(fn, BernoulliRBM):
                hidden[name] = jnp.zeros(z[name].shape[:-1] + (fn.num_hidden,), fn.chain_dtype)
        pe = self._potential(z, model_args, model_kwargs)
        return EBMSiteState(z, hidden, pe, jnp.ones(()), rng_key)

    def _find_per_unit_sites(self, name, fn, model_args, model_kwargs):
        """The sites whose elementwise log-density terms carry the per-unit evidence of the
        EBM site ``name`` (the O(n) path), or ``None`` where that is not verified."""
        errors = (TypeError, ValueError, IndexError, NotImplementedError)
        try:
            with jax.ensure_compile_time_eval():
                return _verified_per_unit_sites(self._model, name, fn, model_args, model_kwargs)
        except errors:  # a model that cannot be traced concretely: the general pass
            return None

    def _check_family(self, name: str, fn: Any) -> None:
        values = tuple(fn.support_values)
        if len(values) != 2:
            raise ValueError(
                f"site {name!r} is a {type(fn).__name__} with {len(values)} values per unit; "
                "EBMSiteGibbs updates binary families only (RBMs, Boltzmann machines, Ising "
                "models). Use numpyro's DiscreteHMCGibbs for this site."
            )
        blocked = isinstance(fn, BernoulliRBM) or (
            hasattr(fn, "update_blocks") and hasattr(fn, "conditional_logits")
        )
        if self.factorized is not False and not blocked:
            raise ValueError(
                f"site {name!r} is a {type(fn).__name__}, which has no block structure "
                "(hidden layer or colour classes) for block updates; pass factorized=False "
                "(Gibbs-with-gradients flips)."
            )

    def _potential(self, z, model_args, model_kwargs) -> jax.Array:
        if not self._track_potential:
            return jnp.full((), jnp.nan)
        return -_sum_log_probs(_trace_at(self._model, model_args, model_kwargs, z))

    def refresh(self, state, model_args, model_kwargs):
        if not self._track_potential:
            return state
        pe = self._potential(state.z, model_args, model_kwargs)
        return state._replace(potential_energy=pe)

    # ------------------------------------------------------------------ sample
    def sample(self, state, model_args, model_kwargs):
        model_kwargs = {} if model_kwargs is None else model_kwargs
        rng_key, *keys = random.split(state.rng_key, len(self._sites) + 1)
        z, hidden = dict(state.z), dict(state.hidden)
        accepts = []
        for name, key in zip(self._sites, keys, strict=True):
            fn = _unwrap(_trace_at(self._model, model_args, model_kwargs, z)[name]["fn"])
            dtype = fn.chain_dtype
            low, high = (float(v) for v in fn.support_values)

            def log_rest(x, name=name):
                values = {**z, name: x}
                tr = _trace_at(self._model, model_args, model_kwargs, values)
                return _sum_log_probs(tr, exclude=(name,))

            x = z[name].astype(dtype)
            per_unit = self.per_unit_sites.get(name)
            if per_unit is not None:  # O(n): read off the per-unit terms, at any x
                fixed = per_unit_evidence(
                    self._model, model_args, model_kwargs, z, name, per_unit, x, low, high
                )

                def evidence_fn(x, fixed=fixed):
                    return fixed
            else:  # O(n^2): n + 1 evaluations of the rest of the model, batched

                def evidence_fn(x, log_rest=log_rest, low=low, high=high):
                    return unit_evidence(log_rest, x, low, high)[0]

            if self.factorized is False:
                x, accept = self._gwg(key, fn, x, log_rest, low, high)
            elif isinstance(fn, BernoulliRBM):
                x, hidden[name], accept = self._rbm_update(key, fn, x, log_rest, evidence_fn)
            else:
                x, accept = self._colour_update(key, fn, x, log_rest, evidence_fn, low, high)
            z[name] = x.astype(state.z[name].dtype)
            accepts.append(accept)
        pe = self._potential(z, model_args, model_kwargs)
        accept_prob = jnp.mean(jnp.stack(accepts))
        return EBMSiteState(z, hidden, pe, accept_prob, rng_key)

    def _block(self, key, x, ebm_logits, mask, log_target, evidence, evidence_fn, low, high):
        """Update the units where ``mask`` holds from ``ebm_logits + evidence``; exact when
        ``factorized`` is True, else Metropolis-Hastings tested. ``ebm_logits`` must not
        depend on the units being updated (they are conditionally independent under the EBM).
        Returns the new ``x``, the acceptance probability and the evidence at the new ``x``."""
        key_draw, key_accept = random.split(key)
        logits = ebm_logits + evidence
        draw = jnp.where(bernoulli_draw(key_draw, logits) > 0, high, low).astype(x.dtype)
        proposal = jnp.where(mask, draw, x)
        if self.factorized:
            return proposal, jnp.ones(()), evidence
        evidence_new = evidence_fn(proposal)
        logits_new = ebm_logits + evidence_new
        forward = _bernoulli_log_prob(proposal == high, logits, mask)
        backward = _bernoulli_log_prob(x == high, logits_new, mask)
        log_ratio = log_target(proposal) - log_target(x) + backward - forward
        log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
        accept_prob = jnp.minimum(1.0, jnp.exp(log_ratio))
        accepted = random.uniform(key_accept) < accept_prob
        return (
            jnp.where(accepted, proposal, x),
            accept_prob,
            jnp.where(accepted, evidence_new, evidence),
        )

    def _rbm_update(self, key, fn: BernoulliRBM, v, log_rest, evidence_fn):
        key_h, key_v = random.split(key)
        hidden = bernoulli_draw(key_h, fn.visible_to_hidden(v))
        visible_logits = fn.hidden_to_visible(hidden)
        visible_logits = jnp.broadcast_to(visible_logits, v.shape)
        evidence = evidence_fn(v)

        def log_target(x):  # log p(v | h) + log L(v), up to a constant
            return jnp.sum(x * visible_logits) + log_rest(x)

        mask = np.ones(v.shape, bool)
        v, accept, _ = self._block(
            key_v, v, visible_logits, mask, log_target, evidence, evidence_fn, 0.0, 1.0
        )
        return v, hidden, accept

    def _colour_update(self, key, fn, x, log_rest, evidence_fn, low, high):
        num_units = int(np.prod(fn.event_shape))
        evidence = evidence_fn(x)

        def log_target(y):
            return -jnp.sum(fn.energy(y)) + log_rest(y)

        blocks = fn.update_blocks
        accepts = []
        for key_block, idx in zip(random.split(key, len(blocks)), blocks, strict=True):
            member = np.zeros((num_units,), bool)
            member[np.asarray(idx)] = True
            mask = np.broadcast_to(member.reshape(fn.event_shape), x.shape)
            logits = jnp.broadcast_to(fn.conditional_logits(x), x.shape)
            x, accept, evidence = self._block(
                key_block, x, logits, mask, log_target, evidence, evidence_fn, low, high
            )
            accepts.append(accept)
        return x, jnp.mean(jnp.stack(accepts))

    def _gwg(self, key, fn, x, log_rest, low, high):
        shape = x.shape
        num_flips = self.num_flips or int(x.size)

        def log_target(flat):
            y = flat.reshape(shape)
            return -jnp.sum(fn.energy(y)) + log_rest(y)

        value_and_grad = jax.value_and_grad(log_target)

        def step(carry, key_step):
            flat, logp, grad = carry
            key_unit, key_accept = random.split(key_step)
            log_q = gwg_flip_log_probs(grad, flat, low, high)
            i = random.categorical(key_unit, log_q)
            new = flat.at[i].set((low + high) - flat[i])
            logp_new, grad_new = value_and_grad(new)
            log_q_back = gwg_flip_log_probs(grad_new, new, low, high)[i]
            log_ratio = logp_new - logp + log_q_back - log_q[i]
            log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
            accept_prob = jnp.minimum(1.0, jnp.exp(log_ratio))
            accepted = random.uniform(key_accept) < accept_prob
            carry = (
                jnp.where(accepted, new, flat),
                jnp.where(accepted, logp_new, logp),
                jnp.where(accepted, grad_new, grad),
            )
            return carry, accept_prob

        flat = x.reshape(-1)
        logp, grad = value_and_grad(flat)
        (flat, _, _), accept_probs = lax.scan(
            step, (flat, logp, grad), random.split(key, num_flips)
        )
        return flat.reshape(shape), jnp.mean(accept_probs)


# ---------------------------------------------------------------------------- composite
class EBMGibbsState(GibbsState):
    """State of :class:`EBMGibbs`: numpyro's ``GibbsState`` (``z``, ``block_states``,
    ``rng_key``) with the fields ArviZ reads as properties, so that
    ``extra_fields=("potential_energy", "accept_prob", "diverging", "num_steps",
    "ebm_accept_prob")`` works: the first four from the NUTS/HMC block (its potential energy
    is that of the whole model at the final values, plus the log-Jacobian of the
    continuous sites' transforms), ``ebm_accept_prob`` from the EBM block."""

    __slots__ = ()

    @property
    def ebm_state(self) -> EBMSiteState:
        return self.block_states[0]

    @property
    def inner_state(self):
        return self.block_states[-1] if len(self.block_states) > 1 else None

    @property
    def potential_energy(self) -> jax.Array:
        inner = self.inner_state
        return self.ebm_state.potential_energy if inner is None else inner.potential_energy

    @property
    def accept_prob(self) -> jax.Array:
        inner = self.inner_state
        return self.ebm_state.accept_prob if inner is None else inner.accept_prob

    @property
    def diverging(self) -> jax.Array:
        inner = self.inner_state
        return jnp.zeros((), bool) if inner is None else inner.diverging

    @property
    def num_steps(self) -> jax.Array:
        inner = self.inner_state
        return jnp.zeros((), jnp.int32) if inner is None else inner.num_steps

    @property
    def ebm_accept_prob(self) -> jax.Array:
        return self.ebm_state.accept_prob


class EBMGibbs(Gibbs):
    r"""MCMC for NumPyro models with energy-based prior sites: block updates of the EBM sites
    (:class:`EBMSiteGibbs`) alternated with NUTS or HMC on the continuous sites.

    Each step: (a) every EBM site given the continuous sites (block Gibbs with per-unit
    evidence, or Gibbs-with-gradients, see ``factorized``), (b) one NUTS/HMC transition of
    the continuous sites given the EBM values. Built on NumPyro's composite
    ``numpyro.infer.Gibbs``; works under ``numpyro.infer.MCMC`` with ``chain_method``
    ``"sequential"``, ``"parallel"`` or ``jax.vmap`` (not ``"vectorized"``).

    Parameters
    ----------
    model : callable, optional
        The model; may be omitted when ``inner_kernel`` is given (its model is used).
    inner_kernel : numpyro.infer.HMC or NUTS, optional
        Kernel of the continuous sites; default ``NUTS(model)`` (on a model whose latent
        sites are all EBM sites it owns no site and does nothing; ``False`` leaves it out).
    ebm_sites : sequence of str, optional
        The EBM sites to update; default every latent site whose distribution is an
        :class:`~numpyro_ebm.EnergyBasedDistribution`.
    factorized : bool or None
        Whether the rest of the model factorizes per unit of the EBM sites; see
        :class:`EBMSiteGibbs` (default ``None``: Metropolis-Hastings-tested block
        proposals, exact for any likelihood).
    num_flips : int, optional
        Gibbs-with-gradients flips per step when ``factorized=False``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import MCMC
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.infer import EBMGibbs
    >>> rbm = BernoulliRBM(jnp.ones((4, 2)))
    >>> def model(y):
    ...     v = numpyro.sample("v", rbm)
    ...     sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    ...     numpyro.sample("y", dist.Normal(v, sigma).to_event(1), obs=y)
    >>> mcmc = MCMC(EBMGibbs(model, factorized=True), num_warmup=20, num_samples=20,
    ...             progress_bar=False)
    >>> mcmc.run(jax.random.key(0), jnp.asarray([1.0, 0.9, 0.1, 1.2]))
    >>> {k: v.shape for k, v in mcmc.get_samples().items()}
    {'sigma': (20,), 'v': (20, 4)}
    """

    _state_cls = EBMGibbsState

    def __init__(
        self,
        model: Callable | None = None,
        *,
        inner_kernel: Any = None,
        ebm_sites: Sequence[str] | None = None,
        factorized: bool | None = None,
        num_flips: int | None = None,
    ):
        if inner_kernel is not None and inner_kernel is not False:
            if not isinstance(inner_kernel, HMC):
                raise ValueError(
                    "inner_kernel must be a numpyro HMC or NUTS kernel (or False for models "
                    f"without continuous latent sites); got {type(inner_kernel).__name__}."
                )
            if model is not None and inner_kernel.model is not model:
                raise ValueError("inner_kernel must be built on the same model as model.")
            model = inner_kernel.model
        if model is None:
            raise ValueError("pass a model (or an inner_kernel built on one).")
        if inner_kernel is None:
            inner_kernel = NUTS(model)
        block = EBMSiteGibbs(model, factorized=factorized, num_flips=num_flips)
        block._track_potential = inner_kernel is False
        sites = ebm_latent_sites if ebm_sites is None else tuple(ebm_sites)
        blocks = [(block, sites)]
        if inner_kernel is not False:
            blocks.append((inner_kernel, None))
        super().__init__(blocks)
        self.inner_kernel = self._kernels[-1] if inner_kernel is not False else None
