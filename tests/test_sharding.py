"""Chains sharded over several devices give the same draws as on one device.

tests/conftest.py forces 4 host devices on CPU. Chain positions are compared bit for bit:
random bits in JAX do not depend on sharding, and a unit's conditional probability comes
from the same inputs (a rounding difference in a matrix product could flip a draw only with
probability about 1e-7 per draw; these fixed seeds do not hit one, so a failure here is a
real difference). Energies are compared to float32 rounding: they come out of matrix
products over a smaller block of chains per device, whose kernel may sum in a different
order (and means over chains are reduced across devices).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import chi_square_pvalue
from jax.sharding import PartitionSpec
from numpyro.infer import MCMC

from numpyro_ebm import BernoulliRBM, BoltzmannMachine, IsingModel, ais
from numpyro_ebm.distributions.rbm import uniform
from numpyro_ebm.infer import PCD, BlockGibbs, ParallelTempering, gibbs
from numpyro_ebm.sharding import (
    chain_mesh,
    sample_sharded,
    shard_chains,
    shard_estimator_state,
)

DEVICES = jax.devices()
NUM_CHAINS = 8  # a multiple of 1, 2, 4 and 8 devices

pytestmark = pytest.mark.skipif(
    len(DEVICES) < 2,
    reason="needs several devices: XLA_FLAGS=--xla_force_host_platform_device_count=4 "
    "(tests/conftest.py sets it before JAX starts)",
)

# Energies: a few float32 ulps of values of order 10 (sums of 5-16 terms).
ENERGY_RTOL, ENERGY_ATOL = 1e-5, 1e-5
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


def make_rbm(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return BernoulliRBM(
        jax.random.normal(k1, (6, 5)),
        0.5 * jax.random.normal(k2, (6,)),
        0.5 * jax.random.normal(k3, (5,)),
    )


def make_bm(seed=1):
    k1, k2 = jax.random.split(jax.random.key(seed))
    j = jax.random.normal(k1, (7, 7))
    j = jnp.triu(j, 1) + jnp.triu(j, 1).T
    return BoltzmannMachine(j, 0.3 * jax.random.normal(k2, (7,)))  # dense: per-unit scan


MODELS = {
    "rbm": make_rbm,
    "dense_bm": make_bm,
    "ising_lattice": lambda: IsingModel.lattice((6, 6), coupling=0.4, field=0.1),
}


def assert_on_all_devices(x):
    assert x.sharding.device_set == set(DEVICES)
    assert not x.sharding.is_fully_replicated


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gibbs_kernel_sharded_equals_unsharded(name):
    model = MODELS[name]()
    state = gibbs.init(model, model.random_state(jax.random.key(1), (NUM_CHAINS,)))
    run = jax.jit(lambda k, s: gibbs.kernel(k, s, model, num_sweeps=25))
    key = jax.random.key(2)
    plain, _ = run(key, state)
    sharded_state = shard_chains(state)
    sharded, _ = run(key, sharded_state)
    assert_on_all_devices(sharded.position)
    assert_on_all_devices(sharded.energy)
    np.testing.assert_array_equal(np.asarray(sharded.position), np.asarray(plain.position))
    np.testing.assert_allclose(sharded.energy, plain.energy, rtol=ENERGY_RTOL, atol=ENERGY_ATOL)
    # Independent chains need no communication between devices.
    hlo = run.lower(key, sharded_state).compile().as_text()
    assert not [op for op in COLLECTIVES if op in hlo]


def run_estimator(estimator, state, model, num_steps=12):
    step = jax.jit(lambda k, s: estimator.step(k, s, model))
    infos = []
    for i in range(num_steps):
        samples, state, info = step(jax.random.fold_in(jax.random.key(7), i), state)
        infos.append(info)
    return samples, state, infos


@pytest.mark.parametrize(
    "estimator",
    [
        PCD(num_chains=NUM_CHAINS, num_sweeps=2),
        ParallelTempering(num_chains=NUM_CHAINS, num_temperatures=4, min_beta=0.3),
    ],
    ids=["pcd", "parallel_tempering"],
)
def test_estimator_steps_sharded_equal_unsharded(estimator):
    rbm = make_rbm()
    state = estimator.init(jax.random.key(3), rbm)
    samples, plain, plain_infos = run_estimator(estimator, state, rbm)
    sharded_samples, sharded, sharded_infos = run_estimator(
        estimator, shard_estimator_state(estimator, state), rbm
    )
    assert_on_all_devices(sharded_samples)
    assert_on_all_devices(sharded.chains)
    np.testing.assert_array_equal(np.asarray(sharded_samples), np.asarray(samples))
    np.testing.assert_array_equal(np.asarray(sharded.chains), np.asarray(plain.chains))
    # Swap decisions compare a uniform with exp(energy differences); identical counts.
    np.testing.assert_array_equal(sharded.swap_accepts, plain.swap_accepts)
    np.testing.assert_array_equal(sharded.swap_attempts, plain.swap_attempts)
    for a, b in zip(sharded_infos, plain_infos, strict=True):
        np.testing.assert_allclose(a.energy, b.energy, rtol=ENERGY_RTOL, atol=ENERGY_ATOL)
        np.testing.assert_allclose(a.swap_rate, b.swap_rate, rtol=1e-5, atol=1e-6)
    if isinstance(estimator, ParallelTempering):
        assert np.all(np.asarray(sharded.swap_accepts) > 0)  # swaps actually happened


def test_block_gibbs_mcmc_vectorized_sharded():
    rbm = make_rbm()
    init = rbm.random_state(jax.random.key(4), (NUM_CHAINS,))

    def run(init_params):
        mcmc = MCMC(
            BlockGibbs(rbm),
            num_warmup=5,
            num_samples=20,
            num_chains=NUM_CHAINS,
            chain_method="vectorized",
            progress_bar=False,
        )
        mcmc.run(jax.random.key(5), init_params=init_params)
        return mcmc

    plain = run(init)
    sharded = run(shard_chains(init))
    assert_on_all_devices(sharded.last_state.z["x"])
    np.testing.assert_array_equal(
        np.asarray(sharded.get_samples(group_by_chain=True)["x"]),
        np.asarray(plain.get_samples(group_by_chain=True)["x"]),
    )


def test_sample_sharded_equals_sample():
    model = IsingModel.lattice((4, 4), coupling=0.3, num_sweeps=10)
    draws = sample_sharded(model, jax.random.key(6), (NUM_CHAINS, 2))
    assert_on_all_devices(draws)
    assert draws.dtype == model.sample(jax.random.key(6), (1,)).dtype
    np.testing.assert_array_equal(
        np.asarray(draws), np.asarray(model.sample(jax.random.key(6), (NUM_CHAINS, 2)))
    )


def test_shard_chains_pytree_axis_and_replicated_leaves():
    tree = {"x": jnp.zeros((3, NUM_CHAINS, 2)), "count": jnp.zeros(())}
    placed = shard_chains(tree, axis=1)
    assert placed["x"].sharding.spec == PartitionSpec(None, "chains", None)
    assert placed["count"].sharding.is_fully_replicated
    mesh = chain_mesh(DEVICES[:2])
    assert shard_chains(jnp.zeros((4, 3)), mesh=mesh).sharding.device_set == set(DEVICES[:2])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="multiple of"):
        shard_chains(jnp.zeros((len(DEVICES) + 1, 3)))
    with pytest.raises(ValueError, match="sample_shape"):
        sample_sharded(make_rbm(), jax.random.key(0), (len(DEVICES) + 1,))
    with pytest.raises(ValueError, match="devices"):
        chain_mesh([])


def test_reverse_ais_sharded_equals_unsharded():
    """Reverse AIS (RAISE) starts its chains at ``initial_state``: sharding that array runs
    the whole annealing sharded. Log weights are sums of energy differences over the
    schedule (float32 rounding of matrix products per step), so they are compared to a
    tolerance a few ulps of their size times the 50 steps."""
    rbm = make_rbm()
    draws = rbm.sample(jax.random.key(8), (NUM_CHAINS,))
    kwargs = {"schedule": "linear", "num_temperatures": 50}
    plain = ais(jax.random.key(9), rbm, initial_state=draws, **kwargs)
    sharded = ais(jax.random.key(9), rbm, initial_state=shard_chains(draws), **kwargs)
    assert_on_all_devices(sharded.log_weights)
    np.testing.assert_allclose(sharded.log_weights, plain.log_weights, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(sharded.log_partition, plain.log_partition, rtol=1e-5)


def test_forward_ais_with_a_mesh_equals_one_device():
    """Forward AIS creates its chains itself; ``mesh=`` splits them over the devices. The
    same draws, so the log weights agree to float32 rounding of the per-step sums (as
    above)."""
    rbm = make_rbm()
    kwargs = {"schedule": "linear", "num_temperatures": 50, "num_chains": NUM_CHAINS}
    plain = ais(jax.random.key(9), rbm, **kwargs)
    sharded = ais(jax.random.key(9), rbm, mesh=chain_mesh(), **kwargs)
    assert_on_all_devices(sharded.log_weights)
    np.testing.assert_allclose(sharded.log_weights, plain.log_weights, rtol=1e-5, atol=1e-4)


def test_uniforms_two_per_block_are_uniform_independent_and_shard_invariant():
    """The samplers' float32 uniforms (two per threefry block): the top 4 bits of the two
    uniforms of one block (units j and j + m/2) must be jointly uniform over 16 x 16 cells
    (chi-square, 1e-3 false-alarm rate), lie on the 2**-24 grid in [0, 1), and not depend on
    how the chain axis is sharded."""
    shape = (NUM_CHAINS * 64, 101)  # odd last axis: the last block's second word is unused
    u = jax.jit(lambda k: uniform(k, shape, jnp.float32))
    draws = np.asarray(u(jax.random.key(10)))
    assert draws.min() >= 0 and draws.max() < 1
    np.testing.assert_array_equal(draws * 2**24, np.floor(draws * 2**24))
    half = (shape[1] + 1) // 2
    first, second = draws[:, : shape[1] - half], draws[:, half:]
    cells = (np.floor(16 * first) * 16 + np.floor(16 * second)).astype(np.int64).ravel()
    assert chi_square_pvalue(cells, np.full(256, 1 / 256)) > 1e-3
    sharded_in = shard_chains(jnp.zeros(shape))
    sharded = jax.jit(lambda k, x: x + uniform(k, x.shape, x.dtype))(jax.random.key(10), sharded_in)
    assert_on_all_devices(sharded)
    np.testing.assert_array_equal(np.asarray(sharded), draws)


@pytest.mark.parametrize("shape", [(7,), (4, 5), (2, 3, 5)])
def test_uniforms_in_float64_are_jax_random_uniform(x64, shape):
    """float64 uniforms come from the library's fused hash but must equal jax.random's, bit
    for bit (the same blocks, the same 52 mantissa bits), on plain and typed keys."""
    for key in (jax.random.key(3), jax.random.PRNGKey(4), jax.random.key(2**31 + 5)):
        np.testing.assert_array_equal(
            jax.jit(lambda k: uniform(k, shape, jnp.float64))(key),
            jax.random.uniform(key, shape, jnp.float64),
        )
