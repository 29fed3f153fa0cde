r"""EBM priors under plain NUTS: the binary site relaxed by the Gaussian integral trick.

For a binary pairwise prior (Boltzmann machine, Ising model, or an RBM as the Boltzmann
machine over ``(v, h)``) the whitened relaxation of :mod:`numpyro_ebm.infer.relaxed_hmc`
(MATH.md section 5) makes ``p(s)`` (in its ``{0, 1}`` form) the marginal of

.. math::

    p(s, u) \propto \exp\big(-\tfrac12 \lVert u\rVert^2 + s^\top (L u + b)\big),
    \qquad s \in \{0, 1\}^n,\ u \in \mathbb{R}^n .

When the rest of the model factorizes per unit, ``L(s) = L(0) \prod_i e^{s_i l_i}`` with
``l_i`` the local evidence of unit ``i`` (zero for hidden units), so the binary units sum
out of the joint in closed form, unit by unit:

.. math::

    \sum_s p(s, u)\, L(s) \propto e^{-\lVert u\rVert^2/2}\, L(0)
    \prod_i \big(1 + e^{(L u + b)_i + l_i}\big),
    \qquad
    p(s \mid u, \ldots) = \prod_i \operatorname{Bernoulli}\big(\sigma((L u + b)_i + l_i)\big).

:func:`relax` rewrites a model accordingly: the EBM site is replaced by the continuous
auxiliary site ``u`` (``<site>_relaxed``), ``L(0)`` is the rest of the model evaluated with
every unit low, and ``l`` is read off elementwise from a second, hidden evaluation with every
unit high (the O(n) per-unit path of :mod:`numpyro_ebm.infer.priors`, verified at
construction). NUTS then runs on ``u`` and the continuous sites; the marginal posterior of
the continuous sites is exact, and :meth:`RelaxedModel.recover` draws the binary site
exactly from ``p(s | u, ...)`` for every posterior draw. The model also records
``<site>_probs``, ``p(s_i = 1 | u, ...)`` per unit of the site (for an RBM, of the visible
units): their posterior mean is a Rao-Blackwellized estimate of the marginals.

The relaxation (an eigendecomposition and a Cholesky factorization of the couplings) is
computed once, at construction, from the prior's concrete parameters: they must not depend
on other latent sites.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import random
from numpyro.handlers import block, condition, trace
from numpyro.infer.gibbs import conditioned, prototype_trace

from numpyro_ebm.distributions.base import softplus
from numpyro_ebm.infer.priors import (
    _is_masked,
    _site_terms,
    _unwrap,
    _verified_per_unit_sites,
)
from numpyro_ebm.infer.relaxed_hmc import _form_of, relaxation

__all__ = ["RelaxedModel", "relax"]


def summable_site(model, site, model_args, model_kwargs, check_family, user, needs):
    """Validate the binary EBM ``site`` of ``model`` for summing its units out one by one
    (``relax``, ``collapse``): a latent, unmasked, unscaled, unbatched site whose family
    ``check_family`` accepts (it raises otherwise), and a rest of the model verified to
    factorize per unit. Returns ``(distribution, shape, per_unit_sites)``; the errors name
    ``user`` (the function) and ``needs`` (what needs the per-unit terms)."""
    model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
    model_trace = prototype_trace(conditioned(model), random.key(0), model_args, model_kwargs)
    if site not in model_trace or model_trace[site]["is_observed"]:
        raise ValueError(f"site must be a latent sample site of the model; got {site!r}.")
    fn = model_trace[site]["fn"]
    if _is_masked(fn) or model_trace[site].get("scale") is not None:
        raise ValueError(
            f"site {site!r} is masked or scaled; remove the mask/scale from the EBM site."
        )
    distribution = _unwrap(fn)
    check_family(distribution)
    shape = tuple(jnp.shape(model_trace[site]["value"]))
    if tuple(distribution.batch_shape) or shape != tuple(distribution.event_shape):
        raise ValueError(
            f"site {site!r} has batch shape {shape[: len(shape) - len(distribution.event_shape)]}"
            f"; {user} supports a single (unbatched, unplated) prior. Use EBMGibbs instead."
        )
    with jax.ensure_compile_time_eval():
        sites = _verified_per_unit_sites(
            conditioned(model), site, distribution, model_args, model_kwargs
        )
    if sites is None:
        raise ValueError(
            f"the rest of the model does not factorize per unit of site {site!r} (a unit "
            "enters other units' log-density terms, or a site that is not elementwise); "
            f"{needs} needs per-unit terms. Use EBMGibbs(model, factorized=None) instead."
        )
    return distribution, shape, tuple(sites)


def summed_out_evidence(model, site, low, high, per_unit_sites, args, kwargs) -> jax.Array:
    """Inside a model that sums the binary ``site`` out unit by unit: run the rest of
    ``model`` with every unit ``low`` (its sites registered with the outer handlers, so
    they contribute ``log L(low)`` and the other sites' priors) and, hidden from the outer
    handlers, with every unit ``high``; return the per-unit evidence
    ``l = log L(unit high) - log L(unit low)`` read off the elementwise terms of
    ``per_unit_sites`` (verified per unit beforehand), shape ``low.shape``."""
    with trace() as low_trace:
        block(condition(model, {site: low}), hide=[site])(*args, **kwargs)
    values = {
        name: s["value"] for name, s in low_trace.items() if s["type"] == "sample" and name != site
    }
    with block():
        high_trace = trace(condition(model, {**values, site: high})).get_trace(*args, **kwargs)
    evidence = jnp.zeros(low.shape, low.dtype)
    for name in per_unit_sites:
        diff = _site_terms(high_trace[name]) - _site_terms(low_trace[name])
        evidence = evidence + jnp.sum(diff, axis=tuple(range(diff.ndim - low.ndim)))
    return evidence


class RelaxedModel:
    """A NumPyro model whose binary EBM site is relaxed (see :func:`relax`); callable with
    the original model's arguments.

    Attributes
    ----------
    site : str
        The relaxed EBM site; ``aux_site`` (``site + "_relaxed"``) is its continuous
        replacement and ``probs_site`` (``site + "_probs"``) the per-unit probabilities.
    per_unit_sites : tuple of str
        The sites read elementwise for the per-unit evidence.
    """

    def __init__(self, model, site, distribution, per_unit_sites, shape, shift):
        self.model = model
        self.site = site
        self.aux_site = f"{site}_relaxed"
        self.probs_site = f"{site}_probs"
        self.per_unit_sites = per_unit_sites
        self._distribution = distribution
        self._form = _form_of(distribution)
        self._relaxation = relaxation(distribution, shift=shift)
        self._shape = shape
        low, high = (float(v) for v in distribution.support_values)
        self._low, self._high = low, high

    def _unit_logits(self, u, evidence):
        """``(L u + b)_i + l_i`` over the relaxed units, and over the site's units."""
        logits = self._relaxation.logits(u)
        flat = evidence.reshape(-1).astype(logits.dtype)
        num_visible = flat.shape[0]
        if self._form.kind == "rbm":
            zeros = jnp.zeros((logits.shape[-1] - num_visible,), logits.dtype)
            full = jnp.concatenate([flat, zeros] if self._form.visible_first else [zeros, flat])
        else:
            full = flat
        logits = logits + full
        site_logits = self._form.position_of(logits) if self._form.kind == "rbm" else logits
        return logits, site_logits.reshape(self._shape)

    def __call__(self, *args, **kwargs):
        num_units = self._relaxation.num_units
        dtype = self._relaxation.bias.dtype
        u = numpyro.sample(self.aux_site, dist.Normal(jnp.zeros(num_units, dtype), 1.0).to_event(1))
        low = jnp.full(self._shape, self._low, dtype)
        high = jnp.full(self._shape, self._high, dtype)
        evidence = summed_out_evidence(
            self.model, self.site, low, high, self.per_unit_sites, args, kwargs
        )
        logits, site_logits = self._unit_logits(u, evidence)
        numpyro.factor(f"{self.site}_units", jnp.sum(softplus(logits)))
        numpyro.deterministic(self.probs_site, jax.nn.sigmoid(site_logits))

    def recover(self, rng_key, samples: dict[str, Any]) -> jax.Array:
        """Exact draws of the binary site, one per posterior draw: ``s ~ p(s | u, ...)``.

        Parameters
        ----------
        rng_key : jax.Array
            Key of the draws.
        samples : dict
            Posterior samples of the relaxed model (``MCMC.get_samples()``, any leading
            shape), holding ``probs_site``.

        Returns
        -------
        jax.Array
            Values of the site, shape ``leading + site shape`` (the site's sample dtype).
        """
        probs = jnp.asarray(samples[self.probs_site])
        draws = random.uniform(rng_key, probs.shape, probs.dtype) < probs
        values = jnp.where(draws, self._high, self._low)
        return values.astype(self._distribution.sample_dtype)


def relax(
    model: Callable,
    site: str,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    *,
    shift: float | None = None,
) -> RelaxedModel:
    r"""Replace the binary EBM site ``site`` of ``model`` by its Gaussian-integral relaxation,
    the binary units summed out per unit, for plain NUTS.

    Parameters
    ----------
    model : callable
        The NumPyro model.
    site : str
        A latent site whose distribution is a ``BoltzmannMachine``, an ``IsingModel`` (or a
        small ``IsingLattice``) or a ``BernoulliRBM``, without batch shape.
    model_args, model_kwargs :
        Arguments with which the per-unit factorization of the rest of the model is verified
        (as in :class:`~numpyro_ebm.infer.EBMSiteGibbs`; it is assumed to hold for the
        arguments the relaxed model is later run with).
    shift : float, optional
        Margin of the diagonal shift, see :func:`~numpyro_ebm.infer.relaxation`.

    Returns
    -------
    RelaxedModel
        The relaxed model (same arguments as ``model``).

    Raises
    ------
    ValueError
        If the site is not such a prior, or the rest of the model does not factorize per
        unit of it (use :class:`~numpyro_ebm.infer.EBMGibbs` then).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import MCMC, NUTS
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.infer import relax
    >>> def model(y):
    ...     v = numpyro.sample("v", BernoulliRBM(jnp.ones((4, 2))))
    ...     sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    ...     numpyro.sample("y", dist.Normal(v, sigma).to_event(1), obs=y)
    >>> y = jnp.asarray([1.0, 0.9, 0.1, 1.2])
    >>> relaxed = relax(model, "v", (y,))
    >>> mcmc = MCMC(NUTS(relaxed), num_warmup=20, num_samples=20, progress_bar=False)
    >>> mcmc.run(jax.random.key(0), y)
    >>> v = relaxed.recover(jax.random.key(1), mcmc.get_samples())
    >>> v.shape, sorted(set(v.ravel().tolist())) <= [0, 1]
    ((20, 4), True)
    """
    distribution, shape, sites = summable_site(
        model, site, model_args, model_kwargs, _form_of, "relax", "the relaxation"
    )
    return RelaxedModel(model, site, distribution, sites, shape, shift)
