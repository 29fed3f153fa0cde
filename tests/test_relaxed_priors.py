"""EBM priors relaxed by the Gaussian integral trick, under plain NUTS, against enumeration."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpy.polynomial.hermite_e import hermegauss
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import log_density
from test_priors import NOISE, PRIOR_SCALE, exact_posterior

from numpyro_ebm import BernoulliRBM, BoltzmannMachine, PottsModel, all_states
from numpyro_ebm.infer import relax


def make_model(prior):
    def model(y=None):
        v = numpyro.sample("v", prior)
        mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
        numpyro.sample("y", dist.Normal(v + mu, NOISE).to_event(1), obs=y)

    return model


def tiny_priors():
    """Priors with 3 relaxed units each: a dense Boltzmann machine over 3 units and an RBM
    with 2 visible and 1 hidden unit."""
    couplings = jnp.asarray([[0.0, 1.2, -0.7], [1.2, 0.0, 0.5], [-0.7, 0.5, 0.0]])
    return {
        "dense-bm": (BoltzmannMachine(couplings, jnp.asarray([0.2, -0.4, 0.1])), [0.9, 0.2, 1.1]),
        "rbm": (BernoulliRBM(jnp.asarray([[1.5], [-1.0]]), jnp.asarray([0.3, -0.2])), [0.9, 0.3]),
    }


@pytest.mark.parametrize("case", ["dense-bm", "rbm"])
def test_relaxed_marginal_of_the_continuous_latent_is_exact(case, x64):
    """Deterministic: the relaxed model integrated over its 3 auxiliary dimensions (tensor
    Gauss-Hermite quadrature, 40 nodes a dimension: the integrand is a sum of exponentials
    of linear functions times the Gaussian weight, integrated to near machine precision)
    equals, up to one constant, the exact marginal density of mu (enumeration of the binary
    units times the Gaussian likelihood) at every mu."""
    prior, y = tiny_priors()[case]
    prior = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), prior)
    y = jnp.asarray(y, jnp.float64)
    model = make_model(prior)
    relaxed = relax(model, "v", (y,))
    nodes, weights = hermegauss(40)
    grid = np.stack(np.meshgrid(nodes, nodes, nodes, indexing="ij"), -1).reshape(-1, 3)
    log_w = np.log(weights)
    log_weight = (log_w[:, None, None] + log_w[None, :, None] + log_w[None, None, :]).ravel()
    states = all_states(prior).astype(jnp.float64)
    log_prior = prior.log_prob(all_states(prior))

    @jax.jit
    def log_marginals(mu):
        def relaxed_log_density(u):
            values = {"v_relaxed": u, "mu": mu}
            return log_density(relaxed, (y,), {}, values)[0] + 0.5 * jnp.sum(u * u)

        log_f = jax.vmap(relaxed_log_density)(jnp.asarray(grid))
        relaxed_log = jax.scipy.special.logsumexp(log_f + log_weight)
        exact_log = jax.scipy.special.logsumexp(
            log_prior
            + dist.Normal(states + mu, NOISE).to_event(1).log_prob(y)
            + dist.Normal(0.0, PRIOR_SCALE).log_prob(mu)
        )
        return relaxed_log - exact_log

    differences = [float(log_marginals(jnp.asarray(mu))) for mu in np.linspace(-1.5, 1.5, 5)]
    np.testing.assert_allclose(differences, differences[0], atol=1e-9)


def test_relaxed_nuts_posterior_matches_enumeration():
    """NUTS on the relaxed model of an RBM prior (6 visible, 2 hidden: 8 auxiliary
    dimensions) and mu; the binary units recovered exactly per draw. Posterior means of the
    6 units, of their Rao-Blackwellized probabilities and of mu against enumeration over
    2^6 states times the conjugate integral over mu, each within 4 Monte Carlo standard
    errors (sd / sqrt(bulk ESS over 2 chains)): 13 checks at 4 sigma, a family-wise
    false-alarm rate below 1e-3. ESS must exceed 150 so that the checks have power."""
    prior = BernoulliRBM(
        1.2 * jax.random.normal(jax.random.key(20), (6, 2)),
        0.3 * jax.random.normal(jax.random.key(21), (6,)),
        0.2 * jax.random.normal(jax.random.key(22), (2,)),
    )
    y = jnp.asarray([0.9, 0.1, 1.2, -0.2, 0.4, 0.8])
    relaxed = relax(make_model(prior), "v", (y,))
    assert relaxed.per_unit_sites == ("y",)
    mcmc = MCMC(
        NUTS(relaxed),
        num_warmup=200,
        num_samples=600,
        num_chains=2,
        chain_method=jax.vmap,
        progress_bar=False,
    )
    mcmc.run(jax.random.key(23), y)
    samples = mcmc.get_samples(group_by_chain=True)
    v = np.asarray(relaxed.recover(jax.random.key(24), samples), np.float64)
    probs = np.asarray(samples["v_probs"], np.float64)
    mean_v, sd_v, mean_mu, sd_mu = exact_posterior(prior, lambda x: x, y)
    for i in range(6):
        for draws in (v[..., i], probs[..., i]):
            ess = float(az.ess(draws))
            assert ess > 150, (i, ess)
            # the probabilities' sd is at most the units' sd: sd_v is a safe bound
            assert abs(draws.mean() - mean_v[i]) < 4 * sd_v[i] / np.sqrt(ess), i
    mu = np.asarray(samples["mu"], np.float64)
    ess = float(az.ess(mu))
    assert ess > 150
    assert abs(mu.mean() - mean_mu) < 4 * sd_mu / np.sqrt(ess)


def test_relax_refuses_coupled_likelihoods_and_other_families():
    prior = tiny_priors()["rbm"][0]

    def summed(y=None):
        v = numpyro.sample("v", prior)
        numpyro.sample("y", dist.Normal(v.sum(), NOISE), obs=y)

    with pytest.raises(ValueError, match="does not factorize"):
        relax(summed, "v", (jnp.asarray(1.0),))

    def potts(y=None):
        numpyro.sample("v", PottsModel(jnp.zeros((2, 2)), jnp.zeros((2, 2))))

    with pytest.raises(ValueError, match="BoltzmannMachine"):
        relax(potts, "v")
    with pytest.raises(ValueError, match="latent sample site"):
        relax(make_model(prior), "y", (jnp.ones(2),))
