"""RBM priors collapsed given their hidden units (CollapsedGibbs), against enumeration."""

import itertools

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import log_density
from test_priors import NOISE, PRIOR_SCALE, exact_posterior

from numpyro_ebm import BernoulliRBM, BoltzmannMachine, all_states
from numpyro_ebm.infer import CollapsedGibbs, collapse


def make_model(prior):
    def model(y=None):
        v = numpyro.sample("v", prior)
        mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
        numpyro.sample("y", dist.Normal(v + mu, NOISE).to_event(1), obs=y)

    return model


def small_rbm(num_hidden, seed):
    keys = jax.random.split(jax.random.key(seed), 3)
    return BernoulliRBM(
        1.2 * jax.random.normal(keys[0], (6, num_hidden)),
        0.3 * jax.random.normal(keys[1], (6,)),
        0.2 * jax.random.normal(keys[2], (num_hidden,)),
    )


Y = [0.9, 0.1, 1.2, -0.2, 0.4, 0.8]


def binary_states(n):
    return jnp.asarray(list(itertools.product([0.0, 1.0], repeat=n)))


def bernoulli_log_prob(x, logits):
    """log prod_i Bernoulli(x_i; sigmoid(logits_i)), for every row of ``x``."""
    return jnp.sum(x * logits - jax.nn.softplus(logits), -1)


def test_collapsed_model_and_visible_conditional_are_exact(x64):
    """Deterministic, on a 6 x 3 RBM: at every mu of a grid, (a) the collapsed density summed
    over the 2^3 hidden states equals, up to one constant, the exact marginal density of mu
    (enumeration over the 2^6 visible states times the Gaussian likelihood), and (b) the
    mixture over h of p(h | mu, y) times the product of Bernoullis with the collapsed
    model's visible logits equals the exact p(v | mu, y) for all 64 images. Both to 1e-9:
    float64 rounding of sums of at most 64 terms of order one."""
    prior = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), small_rbm(3, 30))
    y = jnp.asarray(Y, jnp.float64)
    collapsed = collapse(make_model(prior), "v", (y,))
    assert collapsed.per_unit_sites == ("y",)
    hidden_states = binary_states(3)
    visible_states = all_states(prior).astype(jnp.float64)
    log_prior = prior.log_prob(all_states(prior))

    @jax.jit
    def at(mu):
        def collapsed_log_density(h):
            return log_density(collapsed, (y,), {}, {"v_hidden": h, "mu": mu})[0]

        log_h = jax.vmap(collapsed_log_density)(hidden_states)
        exact_joint = (
            log_prior
            + dist.Normal(visible_states + mu, NOISE).to_event(1).log_prob(y)
            + dist.Normal(0.0, PRIOR_SCALE).log_prob(mu)
        )
        exact_log = jax.scipy.special.logsumexp(exact_joint)
        logits = jax.vmap(lambda h: collapsed.visible_logits(h, {"mu": mu}, (y,)))(hidden_states)
        log_post_h = log_h - jax.scipy.special.logsumexp(log_h)
        mixture = jax.scipy.special.logsumexp(
            log_post_h[:, None]
            + jax.vmap(lambda lg: bernoulli_log_prob(visible_states, lg))(logits),
            axis=0,
        )
        return jax.scipy.special.logsumexp(log_h) - exact_log, mixture, exact_joint - exact_log

    differences = []
    for mu in np.linspace(-1.5, 1.5, 5):
        difference, mixture, exact = at(jnp.asarray(mu))
        differences.append(float(difference))
        np.testing.assert_allclose(np.exp(mixture), np.exp(exact), atol=1e-9)
    np.testing.assert_allclose(differences, differences[0], atol=1e-9)


def test_hidden_update_leaves_the_collapsed_conditional_invariant(x64):
    """No Monte Carlo: on a 6 x 3 RBM at fixed mu, the transition over the 8 hidden states
    h -> v ~ p(v | h, mu, y) -> h' ~ p(h' | v), built from the kernel's own conditionals by
    enumerating the 64 images, is stochastic and leaves pi(h) = p(h | mu, y) (from the
    collapsed model's density) invariant: pi T == pi to float64 rounding (1e-12)."""
    prior = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), small_rbm(3, 31))
    y = jnp.asarray(Y, jnp.float64)
    collapsed = collapse(make_model(prior), "v", (y,))
    hidden_states = binary_states(3)
    visible_states = binary_states(6)
    mu = jnp.asarray(0.3, jnp.float64)

    log_h = jax.vmap(lambda h: log_density(collapsed, (y,), {}, {"v_hidden": h, "mu": mu})[0])(
        hidden_states
    )
    pi = np.asarray(jax.nn.softmax(log_h))
    visible_logits = jax.vmap(lambda h: collapsed.visible_logits(h, {"mu": mu}, (y,)))(
        hidden_states
    )
    # p(v | h): (8, 64); p(h' | v): (64, 8)
    p_v = jnp.exp(jax.vmap(lambda lg: bernoulli_log_prob(visible_states, lg))(visible_logits))
    hidden_logits = jax.vmap(collapsed.hidden_logits)(visible_states)
    p_h = jnp.exp(jax.vmap(lambda lg: bernoulli_log_prob(hidden_states, lg))(hidden_logits))
    transition = np.asarray(p_v @ p_h)
    np.testing.assert_allclose(transition.sum(1), 1.0, atol=1e-12)
    assert np.abs(pi @ transition - pi).max() < 1e-12
    # not trivially invariant: the kernel moves (no state is absorbing) and pi is not uniform
    assert np.diag(transition).max() < 0.99 and pi.max() > 2 * pi.min()


def test_collapsed_gibbs_posterior_matches_enumeration():
    """CollapsedGibbs on an RBM prior (6 visible, 2 hidden) and mu, 2 chains. Posterior
    means of the 6 units and of mu against enumeration over 2^6 states times the conjugate
    integral over mu, each within 4 Monte Carlo standard errors (sd / sqrt(bulk ESS over 2
    chains)): 7 checks at 4 sigma, a family-wise false-alarm rate below 5e-4. ESS must exceed
    150 so that the checks have power. ArviZ reads the run with its sample stats."""
    prior = small_rbm(2, 20)
    y = jnp.asarray(Y)
    kernel = CollapsedGibbs(make_model(prior))
    mcmc = MCMC(
        kernel,
        num_warmup=200,
        num_samples=600,
        num_chains=2,
        chain_method=jax.vmap,
        progress_bar=False,
    )
    mcmc.run(jax.random.key(23), y, extra_fields=("potential_energy", "diverging"))
    samples = mcmc.get_samples(group_by_chain=True)
    assert set(samples) == {"v", "v_hidden", "mu"}
    v = np.asarray(samples["v"], np.float64)
    assert set(np.unique(v)) <= {0.0, 1.0}
    mean_v, sd_v, mean_mu, sd_mu = exact_posterior(prior, lambda x: x, y)
    for i in range(6):
        ess = float(az.ess(v[..., i]))
        assert ess > 150, (i, ess)
        assert abs(v[..., i].mean() - mean_v[i]) < 4 * sd_v[i] / np.sqrt(ess), i
    mu = np.asarray(samples["mu"], np.float64)
    ess = float(az.ess(mu))
    assert ess > 150
    assert abs(mu.mean() - mean_mu) < 4 * sd_mu / np.sqrt(ess)
    data = az.from_numpyro(mcmc)
    assert data.posterior["v"].shape == (2, 600, 6)
    assert "diverging" in data.sample_stats


def test_collapse_refuses_coupled_likelihoods_and_other_families():
    prior = small_rbm(2, 20)

    def summed(y=None):
        v = numpyro.sample("v", prior)
        numpyro.sample("y", dist.Normal(v.sum(), NOISE), obs=y)

    with pytest.raises(ValueError, match="does not factorize"):
        collapse(summed, "v", (jnp.asarray(1.0),))

    def dense(y=None):
        v = numpyro.sample("v", BoltzmannMachine(jnp.zeros((2, 2))))
        numpyro.sample("y", dist.Normal(v, NOISE).to_event(1), obs=y)

    with pytest.raises(ValueError, match="needs a BernoulliRBM"):
        collapse(dense, "v", (jnp.ones(2),))
    with pytest.raises(ValueError, match="latent sample site"):
        collapse(make_model(prior), "y", (jnp.ones(6),))

    with pytest.raises(ValueError, match="inner_kernel must build"):
        CollapsedGibbs(make_model(prior), inner_kernel=NUTS(make_model(prior)))

    def two(y=None):
        a = numpyro.sample("a", prior)
        b = numpyro.sample("b", prior)
        numpyro.sample("y", dist.Normal(a + b, NOISE).to_event(1), obs=y)

    with pytest.raises(ValueError, match="name the one"):
        MCMC(CollapsedGibbs(two), num_warmup=1, num_samples=1, progress_bar=False).run(
            jax.random.key(0), jnp.ones(6)
        )
