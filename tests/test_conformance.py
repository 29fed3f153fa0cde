"""Generic conformance tests run over every case of the registry (tests/cases.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import CASES
from helpers import chi_square_pvalue, state_codes

from numpyro_ebm import all_states, exact_log_partition

ids = [c.id for c in CASES]
DISCRETE = [c for c in CASES if c.discrete]


@pytest.fixture(params=CASES, ids=ids)
def case(request):
    return request.param


def test_shapes_and_sample(case):
    d = case.build()
    assert d.batch_shape == case.batch_shape and d.event_shape == case.event_shape
    x = d.sample(jax.random.key(0), (3,))
    assert x.shape == (3,) + case.batch_shape + case.event_shape
    assert bool(jnp.all(d.support(x)))
    lp = d.log_prob(x)
    assert lp.shape == (3,) + case.batch_shape
    assert bool(jnp.all(jnp.isfinite(lp)))


def test_infer_shapes(case):
    if case.infer_shapes is None:
        pytest.skip("no constructor shapes to infer from (classmethod or user energy)")
    d = case.build()
    assert type(d).infer_shapes(**case.infer_shapes) == (d.batch_shape, d.event_shape)


def test_jit_vmap_scan_round_trip(case):
    d = case.build()
    x = d.sample(jax.random.key(1), (5,))
    eager = d.log_prob(x)
    np.testing.assert_allclose(jax.jit(lambda d, x: d.log_prob(x))(d, x), eager, rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(d.log_prob)(x), eager, rtol=1e-5)
    same = jax.jit(lambda d: d)(d)
    assert type(same) is type(d)
    assert (same.batch_shape, same.event_shape) == (d.batch_shape, d.event_shape)
    np.testing.assert_allclose(same.log_prob(x), eager, rtol=1e-5)

    def body(carry, _):
        return carry, carry.log_prob(x)

    carried, out = jax.lax.scan(body, d, None, length=2)
    np.testing.assert_allclose(out[-1], eager, rtol=1e-5)
    np.testing.assert_allclose(carried.log_prob(x), eager, rtol=1e-5)
    leaves, treedef = jax.tree.flatten(d)
    np.testing.assert_allclose(jax.tree.unflatten(treedef, leaves).log_prob(x), eager, rtol=1e-5)
    # a sweep under jit with the distribution as an argument
    x0 = d.random_state(jax.random.key(2), (4,))
    x1 = jax.jit(lambda d, k, x: d.gibbs_sweep(k, x))(d, jax.random.key(3), x0)
    assert x1.shape == x0.shape


def test_bad_parameters_raise_value_error_naming_the_argument(case):
    for overrides, name in case.bad:
        with pytest.raises(ValueError, match=name):
            case.build(**overrides)


@pytest.mark.parametrize("case", DISCRETE, ids=[c.id for c in DISCRETE])
def test_enumerate_support_is_per_unit(case):
    d = case.build()
    values = d.enumerate_support(expand=False)
    assert values.shape[0] == len(d.support_values) and values.size == len(d.support_values)
    expanded = d.enumerate_support()
    assert expanded.shape == (len(d.support_values),) + d.batch_shape + d.event_shape


@pytest.mark.parametrize("case", DISCRETE, ids=[c.id for c in DISCRETE])
def test_exact_normalization_float64(case, x64):
    d = case.build64()
    assert d.chain_dtype == jnp.float64
    states = all_states(d)
    states = states.reshape(states.shape[:1] + (1,) * len(d.batch_shape) + states.shape[1:])
    np.testing.assert_allclose(jax.nn.logsumexp(d.log_prob(states), axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(
        exact_log_partition(d), jax.nn.logsumexp(d.unnormalized_log_prob(states), axis=0),
        rtol=1e-12,
    )


@pytest.mark.parametrize("case", DISCRETE, ids=[c.id for c in DISCRETE])
def test_bad_values_raise(case):
    d = case.build()
    bad = jnp.full(case.batch_shape + case.event_shape, 7)
    with pytest.raises(ValueError, match="value"):
        d.log_prob(bad)
    with pytest.raises(ValueError, match="shape"):
        d.log_prob(jnp.zeros(case.event_shape[:-1] + (case.event_shape[-1] + 1,)))


@pytest.mark.parametrize("case", DISCRETE, ids=[c.id for c in DISCRETE])
def test_sample_matches_exact_distribution(case):
    """Chi-square goodness of fit of 3000 independent draws (each the end of a 60-sweep
    chain) per batch member against the enumerated distribution; p > 1e-3 (false-alarm
    probability 1e-3 per member under exact sampling)."""
    d = case.build(num_sweeps=60)
    draws = np.asarray(d.sample(jax.random.key(4), (3000,)))
    states = all_states(d)
    states_b = states.reshape(states.shape[:1] + (1,) * len(d.batch_shape) + states.shape[1:])
    probs = np.exp(np.asarray(d.log_prob(states_b), np.float64))
    flat_draws = draws.reshape((3000, -1) + d.event_shape)
    flat_probs = probs.reshape(probs.shape[0], -1)
    for i in range(flat_draws.shape[1]):
        codes = state_codes(flat_draws[:, i], d.support_values)
        assert chi_square_pvalue(codes, flat_probs[:, i]) > 1e-3
