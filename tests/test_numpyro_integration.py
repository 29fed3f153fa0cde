"""EBM distributions as NumPyro sites: numpyro's own discrete kernels and Predictive."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS, DiscreteHMCGibbs, MixedHMC, Predictive
from numpyro.infer.gibbs import DiscreteGibbs

from numpyro_ebm import BernoulliRBM, all_states

SIGMA = 0.7
RBM = BernoulliRBM(
    1.2 * jax.random.normal(jax.random.key(0), (6, 3)),
    0.3 * jax.random.normal(jax.random.key(1), (6,)),
)
Y = jnp.asarray([0.9, 0.1, 1.2, -0.2, 0.4, 0.8])


def model(y=None):
    v = numpyro.sample("v", RBM)
    numpyro.sample("y", dist.Normal(v, SIGMA).to_event(1), obs=y)


def exact_posterior_marginals():
    states = all_states(RBM)
    log_post = RBM.log_prob(states) + dist.Normal(states, SIGMA).to_event(1).log_prob(Y)
    post = jnp.exp(log_post - jax.nn.logsumexp(log_post))
    return post @ states


@pytest.mark.parametrize(
    "make_kernel",
    [
        lambda: DiscreteGibbs(model),
        lambda: DiscreteGibbs(model, random_walk=True),
    ],
    ids=["gibbs", "random-walk"],
)
def test_numpyro_discrete_gibbs_accepts_rbm_site(make_kernel):
    """numpyro updates each of the 6 units separately (per-unit enumerate_support). The
    posterior marginals of 6000 draws match enumeration within 0.06: with autocorrelation,
    ESS >= 1000 here, so the standard error is <= sqrt(0.25/1000) = 0.016 and 0.06 is
    about 4 standard errors."""
    mcmc = MCMC(make_kernel(), num_warmup=500, num_samples=6000, progress_bar=False)
    mcmc.run(jax.random.key(2), Y)
    draws = mcmc.get_samples()["v"]
    assert draws.shape == (6000, 6)
    np.testing.assert_allclose(draws.mean(0), exact_posterior_marginals(), atol=0.06)


def model_with_continuous(y=None):
    shift = numpyro.sample("shift", dist.Normal(0.0, 0.3))
    v = numpyro.sample("v", RBM)
    numpyro.sample("y", dist.Normal(v + shift, SIGMA).to_event(1), obs=y)


@pytest.mark.parametrize(
    "make_kernel",
    [
        lambda: DiscreteHMCGibbs(NUTS(model_with_continuous)),
        lambda: MixedHMC(numpyro.infer.HMC(model_with_continuous, trajectory_length=1.0),
                         num_discrete_updates=6),
    ],
    ids=["discrete-hmc-gibbs", "mixed-hmc"],
)
def test_numpyro_mixed_kernels_run_on_rbm_site(make_kernel):
    mcmc = MCMC(make_kernel(), num_warmup=100, num_samples=200, progress_bar=False)
    mcmc.run(jax.random.key(3), Y)
    samples = mcmc.get_samples()
    assert samples["v"].shape == (200, 6) and samples["shift"].shape == (200,)
    assert set(np.unique(np.asarray(samples["v"]))) <= {0, 1}


def test_predictive_draws_prior_samples():
    draws = Predictive(model, num_samples=50)(jax.random.key(4))
    assert draws["v"].shape == (50, 6) and draws["y"].shape == (50, 6)
    assert set(np.unique(np.asarray(draws["v"]))) <= {0, 1}
