"""The block-Gibbs kernel under numpyro.infer.MCMC, and its conversion to ArviZ."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer import MCMC

from numpyro_ebm import BernoulliRBM, exact_marginals
from numpyro_ebm.infer import BlockGibbs, gibbs


def small_rbm():
    k1, k2 = jax.random.split(jax.random.key(0))
    return BernoulliRBM(jax.random.normal(k1, (5, 3)), 0.3 * jax.random.normal(k2, (5,)))


@pytest.mark.parametrize("chain_method", ["vectorized", "sequential"])
def test_mcmc_runs_block_gibbs_and_matches_marginals(chain_method):
    rbm = small_rbm()
    mcmc = MCMC(
        BlockGibbs(rbm),
        num_warmup=50,
        num_samples=2000,
        num_chains=4,
        chain_method=chain_method,
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(0), extra_fields=("energy", "potential_energy"))
    samples = mcmc.get_samples(group_by_chain=True)["x"]
    assert samples.shape == (4, 2000, 5) and samples.dtype == jnp.int32
    energy = mcmc.get_extra_fields(group_by_chain=True)["energy"]
    assert energy.shape == (4, 2000)
    np.testing.assert_allclose(energy, rbm.energy(samples), rtol=1e-5, atol=1e-5)
    # 8000 correlated draws: the standard error of each marginal is at most
    # sqrt(0.25 / ESS); with ESS >= 1000 (block Gibbs on this model mixes in a few sweeps)
    # 5 standard errors is 0.08.
    np.testing.assert_allclose(samples.mean((0, 1)), exact_marginals(rbm)[:, 1], atol=0.08)


def test_arviz_conversion_has_chain_draw_dims():
    mcmc = MCMC(BlockGibbs(small_rbm()), num_warmup=10, num_samples=100, num_chains=4,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(1), extra_fields=("energy", "potential_energy"))
    idata = az.from_numpyro(mcmc)
    assert idata.posterior["x"].dims[:2] == ("chain", "draw")
    assert idata.posterior["x"].shape == (4, 100, 5)
    # ArviZ names numpyro's potential_energy "lp" and flips its sign.
    np.testing.assert_allclose(idata.sample_stats["lp"], -idata.sample_stats["energy"], rtol=1e-6)
    summary = az.summary(idata, var_names=["x"])
    assert len(summary) == 5
    mcmc.print_summary()


def test_init_params_and_one_chain():
    rbm = small_rbm()
    kernel = BlockGibbs(rbm, site_name="v", num_sweeps=2)
    mcmc = MCMC(kernel, num_warmup=0, num_samples=3, progress_bar=False)
    mcmc.run(jax.random.key(0), init_params={"v": jnp.ones(5, jnp.int32)})
    assert mcmc.get_samples()["v"].shape == (3, 5)
    with pytest.raises(ValueError, match="init_params"):
        MCMC(kernel, num_warmup=0, num_samples=3, progress_bar=False).run(
            jax.random.key(0), init_params={"x": jnp.ones(5)}
        )


def test_many_chains_of_a_large_rbm_vectorized():
    """1,000 chains of a 784 x 500 RBM under MCMC is an ordinary workload."""
    rbm = BernoulliRBM(0.01 * jax.random.normal(jax.random.key(0), (784, 500)))
    mcmc = MCMC(BlockGibbs(rbm), num_warmup=2, num_samples=3, num_chains=1000,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0), extra_fields=("energy",))
    assert mcmc.get_samples(group_by_chain=True)["x"].shape == (1000, 3, 784)


def test_kernel_rejects_non_ebm():
    import numpyro.distributions as dist

    with pytest.raises(ValueError, match="distribution"):
        BlockGibbs(dist.Normal())


def test_pure_kernel_under_jit_and_vmap():
    rbm = small_rbm()
    state = gibbs.init(rbm, jnp.zeros((3, 5)))
    step = jax.jit(lambda k, s: gibbs.kernel(k, s, rbm, num_sweeps=4))
    new, info = step(jax.random.key(0), state)
    assert new.position.shape == (3, 5)
    np.testing.assert_allclose(info.energy, rbm.energy(new.position), rtol=1e-6)
    # vmap over keys gives independent chains with the same code path
    keys = jax.random.split(jax.random.key(1), 2)
    batched, _ = jax.vmap(lambda k: gibbs.kernel(k, state, rbm))(keys)
    assert batched.position.shape == (2, 3, 5)
