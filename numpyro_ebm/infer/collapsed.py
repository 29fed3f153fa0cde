r"""RBM priors with the visible units summed out: collapsed Gibbs for the continuous sites.

For a model with a :class:`~numpyro_ebm.BernoulliRBM` site ``v`` (weights ``W``, biases
``b``, ``c``) whose rest ``L(v; z)`` (every other factor, ``z`` the continuous latent sites)
factorizes per unit, ``L(v; z) = L(0; z) \prod_i e^{v_i l_i(z)}`` with ``l_i`` the local
evidence of unit ``i`` (as in :mod:`numpyro_ebm.infer.priors`), the joint of the RBM's hidden
units ``h``, the visible units and ``z`` sums over ``v`` in closed form, unit by unit:

.. math::

    p(h, z \mid y) \propto e^{c^\top h}\, L(0; z)
    \prod_i \big(1 + e^{(b + W h)_i + l_i(z)}\big),
    \qquad
    p(v \mid h, z, y) = \prod_i \operatorname{Bernoulli}\big(\sigma((b + W h)_i + l_i(z))\big).

:func:`collapse` rewrites a model accordingly (:class:`CollapsedModel`): the site ``v`` is
replaced by the hidden units (``<site>_hidden``, prior ``Bernoulli(logits=c)``) and the
factor above. :class:`CollapsedGibbs` samples the original posterior over ``(h, z, v)``
with two blocks per step:

1. ``h ~ p(h | v)`` (the RBM's conditional: the rest of the model does not depend on
   ``h``), an exact Gibbs update;
2. ``(z, v) ~ p(z, v | h)``: a NUTS (or HMC) transition of ``z`` on the collapsed density
   ``p(z | h, y)`` (``v`` summed out), then ``v`` drawn exactly from ``p(v | h, z, y)``.

Both leave the posterior invariant. ``z`` moves given the ``m`` hidden units alone, not
given the current configuration of the ``n`` visible units as in
:class:`~numpyro_ebm.infer.EBMGibbs`, so it is less tied to the other block and can mix
faster per step (a collapsed Gibbs sampler, Liu 1994). Read over ``h`` at fixed ``z``,
the two updates compose to the data-augmentation kernel
``h -> v ~ p(v | h, z, y) -> h' ~ p(h' | v)``, which leaves ``p(h | z, y)`` invariant.

The per-unit structure is verified at ``init`` on concrete values, as
:class:`~numpyro_ebm.infer.EBMSiteGibbs` does (two model evaluations give the evidence of
every unit).

References
----------
Liu (1994), "The collapsed Gibbs sampler in Bayesian computations with applications to a
gene regulation problem", Journal of the American Statistical Association 89(427).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import random
from numpyro.infer import NUTS
from numpyro.infer.gibbs import conditioned, prototype_trace, with_conditioning
from numpyro.infer.hmc import HMC
from numpyro.infer.mcmc import MCMCKernel

from numpyro_ebm.distributions.base import softplus
from numpyro_ebm.distributions.rbm import BernoulliRBM, bernoulli_draw
from numpyro_ebm.infer.gibbs import _batched_key
from numpyro_ebm.infer.priors import (
    _unwrap,
    per_unit_evidence,
)
from numpyro_ebm.infer.relaxed_priors import summable_site, summed_out_evidence

__all__ = ["CollapsedGibbs", "CollapsedGibbsState", "CollapsedModel", "collapse"]


class CollapsedModel:
    """A NumPyro model whose :class:`~numpyro_ebm.BernoulliRBM` site is summed out given the
    RBM's hidden units (see :func:`collapse`); callable with the original model's arguments.

    Attributes
    ----------
    model : callable
        The original model.
    site : str
        The collapsed RBM site; ``hidden_site`` (``site + "_hidden"``) holds the hidden units.
    distribution : BernoulliRBM
        The site's prior.
    per_unit_sites : tuple of str
        The sites read elementwise for the per-unit evidence.
    """

    def __init__(self, model, site, distribution, per_unit_sites):
        self.model = model
        self.site = site
        self.hidden_site = f"{site}_hidden"
        self.distribution = distribution
        self.per_unit_sites = tuple(per_unit_sites)

    def __call__(self, *args, **kwargs):
        rbm = self.distribution
        dtype = rbm.weights.dtype
        h = numpyro.sample(self.hidden_site, dist.Bernoulli(logits=rbm.hidden_bias).to_event(1))
        shape = (rbm.num_visible,)
        evidence = summed_out_evidence(
            self.model,
            self.site,
            jnp.zeros(shape, dtype),
            jnp.ones(shape, dtype),
            self.per_unit_sites,
            args,
            kwargs,
        )
        logits = rbm.hidden_to_visible(h) + evidence
        numpyro.factor(f"{self.site}_units", jnp.sum(softplus(logits)))

    def visible_logits(
        self, hidden: jax.Array, values: dict[str, Any], model_args: tuple = (), model_kwargs=None
    ) -> jax.Array:
        """Logits of ``p(v | h, z, y)``: ``b + W h + l(z)``, shape ``(num_visible,)``.

        Parameters
        ----------
        hidden : jax.Array
            The hidden units ``h``, shape ``(num_hidden,)``.
        values : dict
            Constrained values of the model's other latent sites ``z``.
        model_args, model_kwargs :
            The model's arguments.
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        rbm = self.distribution
        x = jnp.zeros((rbm.num_visible,), rbm.weights.dtype)
        evidence = per_unit_evidence(
            conditioned(self.model),
            model_args,
            model_kwargs,
            values,
            self.site,
            self.per_unit_sites,
            x,
            0.0,
            1.0,
        )
        return rbm.hidden_to_visible(hidden) + evidence

    def hidden_logits(self, visible: jax.Array) -> jax.Array:
        """Logits of ``p(h | v)``: ``c + v W``, shape ``(num_hidden,)``."""
        return self.distribution.visible_to_hidden(visible)


def collapse(
    model: Callable, site: str, model_args: tuple = (), model_kwargs: dict | None = None
) -> CollapsedModel:
    r"""Sum the binary units of the RBM site ``site`` of ``model`` out given its hidden units.

    Parameters
    ----------
    model : callable
        The NumPyro model.
    site : str
        A latent site whose distribution is a :class:`~numpyro_ebm.BernoulliRBM` without
        batch shape.
    model_args, model_kwargs :
        Arguments with which the per-unit factorization of the rest of the model is verified
        (as in :class:`~numpyro_ebm.infer.EBMSiteGibbs`; it is assumed to hold for the
        arguments the collapsed model is later run with).

    Returns
    -------
    CollapsedModel
        The model over ``site + "_hidden"`` and the other latent sites (same arguments as
        ``model``).

    Raises
    ------
    ValueError
        If the site is not such a prior, or the rest of the model does not factorize per
        unit of it (use :class:`~numpyro_ebm.infer.EBMGibbs` then).

    Examples
    --------
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer.util import log_density
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.infer import collapse
    >>> def model(y):
    ...     v = numpyro.sample("v", BernoulliRBM(jnp.ones((4, 2))))
    ...     sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    ...     numpyro.sample("y", dist.Normal(v, sigma).to_event(1), obs=y)
    >>> y = jnp.asarray([1.0, 0.9, 0.1, 1.2])
    >>> collapsed = collapse(model, "v", (y,))
    >>> collapsed.hidden_site, collapsed.per_unit_sites
    ('v_hidden', ('y',))
    >>> values = {"v_hidden": jnp.asarray([1.0, 0.0]), "sigma": 0.5}
    >>> bool(jnp.isfinite(log_density(collapsed, (y,), {}, values)[0]))
    True
    """

    def check_family(distribution):
        if not isinstance(distribution, BernoulliRBM):
            raise ValueError(
                f"site {site!r} has distribution {type(distribution).__name__}; collapse needs "
                "a BernoulliRBM (hidden units to condition on). Use EBMGibbs or relax instead."
            )

    distribution, _, sites = summable_site(
        model, site, model_args, model_kwargs, check_family, "collapse", "collapsing"
    )
    return CollapsedModel(model, site, distribution, sites)


class CollapsedGibbsState(NamedTuple):
    """State of :class:`CollapsedGibbs`.

    z : the continuous sites (unconstrained, as the inner kernel holds them), the hidden
        units (``<site>_hidden``) and the RBM site's values
    inner_state : the NUTS/HMC state of the continuous sites on the collapsed model
    rng_key : key for the next step

    ``potential_energy``, ``accept_prob``, ``diverging`` and ``num_steps`` are the inner
    kernel's (its potential is that of the collapsed model given the hidden units), so that
    ``extra_fields`` and ArviZ read them as usual.
    """

    z: dict[str, jax.Array]
    inner_state: Any
    rng_key: jax.Array

    @property
    def potential_energy(self) -> jax.Array:
        return self.inner_state.potential_energy

    @property
    def accept_prob(self) -> jax.Array:
        return self.inner_state.accept_prob

    @property
    def diverging(self) -> jax.Array:
        return self.inner_state.diverging

    @property
    def num_steps(self) -> jax.Array:
        return self.inner_state.num_steps


class CollapsedGibbs(MCMCKernel):
    r"""MCMC for a model with an RBM prior site and a per-unit likelihood: the hidden units
    by Gibbs, the continuous sites by NUTS with the visible units summed out, the visible
    units drawn exactly at every step (see the module docstring).

    Each step: (1) ``h ~ p(h | v)``; (2) one NUTS/HMC transition of the continuous sites on
    the collapsed density given ``h`` (:func:`collapse`); (3) ``v ~ p(v | h, z, y)``. The
    draws hold the RBM site, its hidden units (``site + "_hidden"``) and the continuous
    sites, constrained; ``sampler.model`` is the original model, so ``arviz.from_numpyro``
    and ``numpyro.infer.util.log_likelihood`` read the draws as usual. Works under
    ``numpyro.infer.MCMC`` with ``chain_method`` ``"sequential"`` or ``jax.vmap`` (not
    ``"vectorized"``). A chain starts from a draw of the RBM prior (or from ``init_params``
    holding the site and/or its hidden units), as :class:`~numpyro_ebm.infer.EBMGibbs`
    does. Deterministic sites of the model are not recorded
    (``numpyro.infer.Predictive`` on the draws gives them).

    Parameters
    ----------
    model : callable
        The model.
    site : str, optional
        The :class:`~numpyro_ebm.BernoulliRBM` site; default: the model's only latent site
        with that distribution.
    inner_kernel : callable
        Builds the kernel of the continuous sites from the collapsed model, e.g.
        ``functools.partial(NUTS, max_tree_depth=6)``; default ``NUTS``.

    Attributes
    ----------
    collapsed : CollapsedModel
        The collapsed model, set by ``init``.

    Raises
    ------
    ValueError
        At ``init``, if the site is not an unbatched ``BernoulliRBM`` or the rest of the model
        does not factorize per unit of it (use :class:`~numpyro_ebm.infer.EBMGibbs` then).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import MCMC
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.infer import CollapsedGibbs
    >>> def model(y):
    ...     v = numpyro.sample("v", BernoulliRBM(jnp.ones((4, 2))))
    ...     sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    ...     numpyro.sample("y", dist.Normal(v, sigma).to_event(1), obs=y)
    >>> mcmc = MCMC(CollapsedGibbs(model), num_warmup=20, num_samples=20, progress_bar=False)
    >>> mcmc.run(jax.random.key(0), jnp.asarray([1.0, 0.9, 0.1, 1.2]))
    >>> {k: v.shape for k, v in mcmc.get_samples().items()}
    {'sigma': (20,), 'v': (20, 4), 'v_hidden': (20, 2)}
    """

    sample_field = "z"

    def __init__(
        self,
        model: Callable,
        site: str | None = None,
        *,
        inner_kernel: Callable[[Callable], HMC] = NUTS,
    ):
        if not callable(model):
            raise ValueError(f"model must be a NumPyro model (a callable); got {model!r}.")
        if isinstance(inner_kernel, MCMCKernel) or not callable(inner_kernel):
            raise ValueError(
                "inner_kernel must build an HMC or NUTS kernel from a model, e.g. NUTS or "
                f"functools.partial(NUTS, max_tree_depth=6); got {inner_kernel!r}."
            )
        self._model = model
        self._site = site
        self._inner_kernel_fn = inner_kernel
        self._inner = None
        self.collapsed: CollapsedModel | None = None

    @property
    def model(self):
        return self._model

    @property
    def inner_kernel(self):
        """The kernel of the continuous sites (built by ``init``)."""
        return self._inner

    @property
    def default_fields(self) -> tuple[str, ...]:
        return ("z",)

    def get_diagnostics_str(self, state: CollapsedGibbsState) -> str:
        return self._inner.get_diagnostics_str(state.inner_state)

    def _find_site(self, model_trace) -> str:
        if self._site is not None:
            return self._site
        sites = [
            name
            for name, s in model_trace.items()
            if s["type"] == "sample"
            and not s["is_observed"]
            and isinstance(_unwrap(s["fn"]), BernoulliRBM)
        ]
        if len(sites) != 1:
            raise ValueError(
                f"site: the model has {len(sites)} latent BernoulliRBM sites ({sites}); "
                "name the one to collapse, e.g. CollapsedGibbs(model, site='v')."
            )
        return sites[0]

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        if _batched_key(rng_key):
            raise ValueError(
                "CollapsedGibbs runs one chain per key; for several chains use chain_method="
                "'sequential', 'parallel' or jax.vmap, not 'vectorized'."
            )
        model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
        key_trace, key_h, key_inner, key_v, rng_key = random.split(rng_key, 5)
        model_trace = prototype_trace(conditioned(self._model), key_trace, model_args, model_kwargs)
        site = self._find_site(model_trace)
        collapsed = collapse(self._model, site, model_args, model_kwargs)
        inner = self._inner_kernel_fn(conditioned(collapsed))
        if not isinstance(inner, HMC):
            raise ValueError(
                "inner_kernel must build a numpyro HMC or NUTS kernel from the collapsed "
                f"model; it built {type(inner).__name__}."
            )
        self.collapsed, self._inner = collapsed, inner
        init_params = {} if init_params is None else dict(init_params)
        # the chain starts where EBMGibbs does: an RBM draw of the site (or init_params),
        # here with the hidden units drawn from p(h | v)
        visible = init_params.pop(site, model_trace[site]["value"])
        hidden = init_params.pop(collapsed.hidden_site, None)
        if hidden is None:
            hidden = bernoulli_draw(key_h, collapsed.hidden_logits(jnp.asarray(visible)))
        hidden = jnp.asarray(hidden, collapsed.distribution.weights.dtype)
        kwargs = with_conditioning(model_kwargs, {collapsed.hidden_site: hidden})
        inner_state = inner.init(key_inner, num_warmup, init_params or None, model_args, kwargs)
        visible = self._visible(key_v, hidden, inner_state, model_args, model_kwargs, kwargs)
        z = {**inner_state.z, collapsed.hidden_site: hidden, site: visible}
        return CollapsedGibbsState(z, inner_state, rng_key)

    def _visible(
        self, rng_key, hidden, inner_state, model_args, model_kwargs, inner_kwargs
    ) -> jax.Array:
        """``v ~ p(v | h, z, y)`` at the inner kernel's current ``z`` (``inner_kwargs``: the
        model's keyword arguments conditioned on ``h``, as the inner kernel runs)."""
        values = self._inner.get_constrain_fn(model_args, inner_kwargs)(inner_state.z)
        logits = self.collapsed.visible_logits(hidden, values, model_args, model_kwargs)
        draw = bernoulli_draw(rng_key, logits)
        return draw.astype(self.collapsed.distribution.sample_dtype)

    def sample(self, state, model_args, model_kwargs):
        model_kwargs = {} if model_kwargs is None else model_kwargs
        collapsed = self.collapsed
        rng_key, key_h, key_v = random.split(state.rng_key, 3)
        hidden = bernoulli_draw(key_h, collapsed.hidden_logits(state.z[collapsed.site]))
        kwargs = with_conditioning(model_kwargs, {collapsed.hidden_site: hidden})
        # the inner state's potential and gradient were computed under the previous h
        inner_state = self._inner.refresh(state.inner_state, model_args, kwargs)
        inner_state = self._inner.sample(inner_state, model_args, kwargs)
        visible = self._visible(key_v, hidden, inner_state, model_args, model_kwargs, kwargs)
        z = {**inner_state.z, collapsed.hidden_site: hidden, collapsed.site: visible}
        return CollapsedGibbsState(z, inner_state, rng_key)

    def refresh(self, state, model_args, model_kwargs):
        """Identity: :meth:`sample` refreshes the inner kernel after the hidden units move."""
        return state

    def get_constrain_fn(self, model_args, model_kwargs):
        def fn(z):
            names = (self.collapsed.hidden_site, self.collapsed.site)
            inner_z = {k: v for k, v in z.items() if k not in names}
            constrained = self._inner.get_constrain_fn(model_args, model_kwargs)(inner_z)
            return {**constrained, **{k: z[k] for k in names}}

        return fn

    def postprocess_fn(self, model_args, model_kwargs):
        return self.get_constrain_fn(model_args, model_kwargs)
