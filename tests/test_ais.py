"""Annealed importance sampling against exact enumeration on tiny models.

Statistical tolerances: the AIS estimate of ``Z`` is unbiased, so its central-limit interval
(``ais(level=...)``) covers the exact value with the stated probability once the weights are
well behaved (effective sample size near the number of chains, checked alongside); each
coverage check uses ``level=0.999``, a false-alarm rate of about 1e-3 per check. Bias checks
use z-scores over independent repeats (batch members) against 4 standard errors
(one-sided false-alarm rate about 3e-5).
"""

import itertools

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_ebm import (
    AISResult,
    BernoulliRBM,
    BoltzmannMachine,
    EnergyDistribution,
    GaussianBernoulliRBM,
    IsingModel,
    PottsModel,
    ais,
    all_states,
    exact_log_partition,
    log_likelihood,
)
from numpyro_ebm.infer.ais import linear_schedule, rbm_schedule

LEVEL = 0.999  # coverage of the intervals checked: false alarm ~1e-3 per check
Z_BIAS = 4.0  # one-sided z threshold of the bias checks: false alarm ~3e-5


def make_rbm(num_visible=24, num_hidden=8, scale=0.6, seed=0, batch=()):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    w = scale * jax.random.normal(k1, (num_visible, num_hidden))
    b = 0.5 * jax.random.normal(k2, (num_visible,))
    c = 0.5 * jax.random.normal(k3, (num_hidden,))
    if batch:
        w = jnp.broadcast_to(w, batch + w.shape)
    return BernoulliRBM(w, b, c)


def exact_rbm_draws(rbm, num_draws, seed):
    """Exact draws of an RBM's visible units: ``h`` from its enumerated marginal, then
    ``v | h``."""
    h_all = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=rbm.num_hidden)))
    log_p_h = h_all @ rbm.hidden_bias + jnp.sum(jax.nn.softplus(rbm.hidden_to_visible(h_all)), -1)
    k1, k2 = jax.random.split(jax.random.key(seed))
    h = h_all[jax.random.categorical(k1, log_p_h, shape=(num_draws,))]
    p_v = jax.nn.sigmoid(rbm.hidden_to_visible(h))
    return (jax.random.uniform(k2, p_v.shape) < p_v).astype(jnp.int32)


def symmetric(n, scale, seed):
    a = scale * jax.random.normal(jax.random.key(seed), (n, n))
    return jnp.triu(a, 1) + jnp.triu(a, 1).T


# One small model per family.
CASES = {
    "rbm_24x8": lambda: make_rbm(),
    "boltzmann_10": lambda: BoltzmannMachine(
        symmetric(10, 0.4, 1), 0.2 * jax.random.normal(jax.random.key(2), (10,))
    ),
    "ising_lattice_4x4": lambda: IsingModel.lattice((4, 4), 0.4, 0.1),
    "potts_lattice_3x3": lambda: PottsModel.lattice((3, 3), 3, 0.6),
    "potts_dense_6": lambda: PottsModel(
        symmetric(6, 0.5, 3), 0.3 * jax.random.normal(jax.random.key(4), (6, 3))
    ),
    "gaussian_rbm_5x4": lambda: GaussianBernoulliRBM(
        0.6 * jax.random.normal(jax.random.key(5), (5, 4)),
        0.3 * jnp.ones(5),
        0.1 * jnp.ones(4),
        0.8,
    ),
}


@pytest.fixture(scope="module")
def rbm_run():
    rbm = make_rbm()
    data = rbm.sample(jax.random.key(10), (200,))
    result = ais(
        jax.random.key(11),
        rbm,
        num_chains=100,
        schedule="linear",
        num_temperatures=500,
        data=data,
        level=LEVEL,
    )
    return rbm, result


@pytest.mark.parametrize("name", sorted(CASES))
def test_interval_covers_exact(name, rbm_run):
    """The exact log Z lies in the reported interval, which is informative (narrow) and
    backed by well-behaved weights (ESS close to the number of chains)."""
    if name == "rbm_24x8":
        model, result = rbm_run
    else:
        model = CASES[name]()
        # Uniform states exercise the fitted-base code path (a data-free base is used by
        # the other tests); any base gives an unbiased estimate.
        data = model.random_state(jax.random.key(20), (100,)).astype(model.sample_dtype)
        result = ais(
            jax.random.key(21),
            model,
            num_chains=100,
            schedule="linear",
            num_temperatures=1000,
            data=data,
            level=LEVEL,
        )
    exact = float(exact_log_partition(model))
    lo, hi = (float(x) for x in result.log_partition_interval)
    assert result.log_partition.shape == model.batch_shape == ()
    assert result.log_weights.shape == (100,)
    assert lo <= exact <= hi, (lo, float(result.log_partition), hi, exact)
    assert lo < float(result.log_partition) < hi
    assert hi - lo < 0.2  # informative: a vacuous interval would pass the coverage check
    assert float(result.ess) > 50


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_base_covers_exact(name):
    """``base="model"`` (the target's own fields, only the couplings annealed; for RBMs the
    hidden biases too, a different path and base constant) gives the exact log Z within
    its interval, as the other bases do; same settings and thresholds as above."""
    model = CASES[name]()
    result = ais(
        jax.random.key(22),
        model,
        num_chains=100,
        schedule="linear",
        num_temperatures=1000,
        base="model",
        level=LEVEL,
    )
    exact = float(exact_log_partition(model))
    lo, hi = (float(x) for x in result.log_partition_interval)
    assert lo <= exact <= hi, (lo, float(result.log_partition), hi, exact)
    assert hi - lo < 0.2
    assert float(result.ess) > 50


def test_checkpoint_trace():
    """The trace keeps the log weights at evenly spaced points without changing the run:
    its last row is the final log weights, and the estimate is that of an untraced run
    with the same key (99 steps in 7 segments of 15, the last one padded)."""
    rbm = make_rbm(12, 4)
    kwargs = dict(num_chains=16, schedule="linear", num_temperatures=100)
    plain = ais(jax.random.key(3), rbm, **kwargs)
    traced = ais(jax.random.key(3), rbm, num_checkpoints=7, **kwargs)
    assert plain.trace_betas is None and plain.log_weight_trace is None
    assert traced.log_weight_trace.shape == (7, 16)
    np.testing.assert_allclose(
        traced.trace_betas, linear_schedule(100)[[15, 30, 45, 60, 75, 90, 99]]
    )
    # Same draws, same arithmetic per step; only float32 rounding of the fused loop may
    # differ (relative 1e-6 of log weights of order 10).
    np.testing.assert_allclose(traced.log_weight_trace[-1], traced.log_weights, rtol=0, atol=0)
    np.testing.assert_allclose(traced.log_weights, plain.log_weights, rtol=1e-6, atol=1e-5)
    # The spread of the accumulated log weights can only be read from a trace that starts
    # at zero spread: at beta = 0.15 it is far below the final spread's upper bound.
    assert float(jnp.std(traced.log_weight_trace[0])) < float(jnp.std(traced.log_weights)) + 1e-6
    reverse = ais(
        jax.random.key(4),
        rbm,
        initial_state=rbm.sample(jax.random.key(5), (8,)),
        num_checkpoints=3,
        **kwargs,
    )
    np.testing.assert_allclose(reverse.trace_betas, [1 - 33 / 99, 1 - 66 / 99, 0.0], atol=1e-12)
    np.testing.assert_allclose(reverse.log_weight_trace[-1], reverse.log_weights, atol=0)


def test_lower_bound():
    """The bound is deterministic: below the exact log Z for any states, equal to it over
    all states, blind to duplicates, and no lower after an ascent (the ascent's states are
    added to the given ones)."""
    from numpyro_ebm import all_states, log_partition_lower_bound

    for model in (make_rbm(10, 4), CASES["ising_lattice_4x4"]()):
        exact = float(exact_log_partition(model))
        data = model.random_state(jax.random.key(30), (40,)).astype(model.sample_dtype)
        bound = float(log_partition_lower_bound(model, data))
        twice = float(log_partition_lower_bound(model, jnp.concatenate([data, data])))
        ascended = float(
            log_partition_lower_bound(model, data, rng_key=jax.random.key(31), num_sweeps=20)
        )
        assert bound < exact and bound == twice
        assert bound <= ascended < exact
    rbm = make_rbm(10, 4)
    every = float(log_partition_lower_bound(rbm, all_states(rbm)))
    np.testing.assert_allclose(every, float(exact_log_partition(rbm)), rtol=1e-6)
    with pytest.raises(ValueError, match="needs rng_key"):
        log_partition_lower_bound(rbm, jnp.zeros((3, 10), jnp.int32), num_sweeps=3)
    with pytest.raises(ValueError, match="discrete"):
        log_partition_lower_bound(CASES["gaussian_rbm_5x4"](), jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="batch_shape"):
        log_partition_lower_bound(make_rbm(6, 2, batch=(2,)), jnp.zeros((3, 6), jnp.int32))


def test_rbm_with_many_hidden_units():
    """784 visible x 20 hidden units (2**20 exact states): a piecewise schedule like the
    classic one, given as explicit betas, covers the exact value with an informative
    interval."""
    rbm = make_rbm(num_visible=784, num_hidden=20, scale=0.1, seed=3)
    betas = np.concatenate([np.linspace(0, 0.5, 50, endpoint=False), np.linspace(0.5, 1, 450)])
    result = ais(jax.random.key(0), rbm, num_chains=100, schedule=betas, level=LEVEL)
    lo, hi = (float(x) for x in result.log_partition_interval)
    assert lo <= float(exact_log_partition(rbm)) <= hi
    assert hi - lo < 1.0 and float(result.ess) > 30
    assert result.num_temperatures == 500


REPEATS = 64  # independent repeats, as batch members of one model
SHORT, LONG = 4, 1000  # temperatures of a poor and of a good schedule


@pytest.fixture(scope="module")
def repeated_rbm():
    return make_rbm(scale=1.0, seed=1, batch=(REPEATS,))


@pytest.fixture(scope="module")
def short_forward(repeated_rbm):
    return ais(
        jax.random.key(1),
        repeated_rbm,
        num_chains=4,
        schedule="linear",
        num_temperatures=SHORT,
    )


def test_error_shrinks_with_temperatures(repeated_rbm, short_forward):
    """The mean absolute error over REPEATS independent repeats drops from SHORT to LONG
    temperatures by more than Z_BIAS standard errors of the difference."""
    exact = exact_log_partition(repeated_rbm)
    long = ais(
        jax.random.key(2), repeated_rbm, num_chains=4, schedule="linear", num_temperatures=LONG
    )
    short_err = np.abs(np.asarray(short_forward.log_partition - exact))
    long_err = np.abs(np.asarray(long.log_partition - exact))
    se = np.sqrt((short_err.var(ddof=1) + long_err.var(ddof=1)) / REPEATS)
    assert short_err.mean() - long_err.mean() > Z_BIAS * se, (short_err, long_err)


def test_forward_and_reverse_bracket_the_exact_value(repeated_rbm, short_forward):
    """With a short schedule, forward AIS underestimates log Z and reverse AIS started at
    exact draws of the model overestimates it, each by more than Z_BIAS standard errors
    over REPEATS independent repeats."""
    exact = np.asarray(exact_log_partition(repeated_rbm))
    single = make_rbm(scale=1.0, seed=1)
    draws = exact_rbm_draws(single, 4 * REPEATS, seed=2).reshape(4, REPEATS, 24)
    reverse = ais(
        jax.random.key(3),
        repeated_rbm,
        initial_state=draws,
        schedule="linear",
        num_temperatures=SHORT,
    )
    assert reverse.reverse and reverse.log_weights.shape == (4, REPEATS)
    for result, sign in ((short_forward, -1), (reverse, 1)):
        err = sign * (np.asarray(result.log_partition) - exact)
        assert err.mean() > Z_BIAS * err.std(ddof=1) / np.sqrt(REPEATS), (sign, err)


def test_reverse_from_exact_draws_covers_exact():
    """Reverse AIS on a family without latent units (the generic path), started at exact
    draws: its interval covers the exact log Z and is informative."""
    model = CASES["boltzmann_10"]()
    states = all_states(model)
    log_p = -model.energy(states)
    idx = jax.random.categorical(jax.random.key(30), log_p, shape=(100,))
    result = ais(
        jax.random.key(31),
        model,
        initial_state=states[idx],
        schedule="linear",
        num_temperatures=1000,
        level=LEVEL,
    )
    lo, hi = (float(x) for x in result.log_partition_interval)
    assert result.reverse and result.log_weights.shape == (100,)
    assert lo <= float(exact_log_partition(model)) <= hi
    assert hi - lo < 0.2 and float(result.ess) > 50


def test_log_likelihood_reverse_is_conservative():
    """RAISE, one reverse chain per data point, is below the exact log-likelihood on
    average, by more than Z_BIAS standard errors over the points at a short schedule; the
    reported averages are the per-point formulas and the exact value is exact."""
    rbm = make_rbm(scale=1.0, seed=1)
    data = exact_rbm_draws(rbm, 1024, seed=3)
    ll = log_likelihood(jax.random.key(4), rbm, data, schedule="linear", num_temperatures=SHORT)
    exact_point = -rbm.energy(data) - exact_log_partition(rbm)
    np.testing.assert_allclose(ll.exact, np.mean(exact_point), rtol=1e-5)
    rev = ll.reverse_result
    assert rev.reverse and rev.log_weights.shape == (1024,)
    per_point = -rbm.energy(data) - (rev.log_partition_base - rev.log_weights)
    np.testing.assert_allclose(ll.reverse, np.mean(per_point), rtol=1e-5)
    gap = np.asarray(per_point - exact_point)
    assert gap.mean() < -Z_BIAS * gap.std(ddof=1) / 32, gap
    mean_log_f = np.mean(-rbm.energy(data))
    np.testing.assert_allclose(ll.forward, mean_log_f - ll.forward_result.log_partition, rtol=1e-5)


def test_attached_result_normalizes_log_prob(rbm_run):
    """After with_log_partition, log_prob sums to one up to the estimate's own error."""
    model = CASES["boltzmann_10"]()
    result = ais(jax.random.key(5), model, num_chains=100, schedule="linear", num_temperatures=1000)
    attached = model.with_log_partition(result.log_partition)
    states = all_states(model)
    total = float(jax.scipy.special.logsumexp(attached.log_prob(states)))
    lo, hi = result.log_partition_interval
    assert float(result.log_partition) - float(hi) <= total <= float(result.log_partition) - lo
    assert abs(total) < 0.1


def test_float64(x64):
    rbm = make_rbm(num_visible=12, num_hidden=4)
    assert rbm.weights.dtype == jnp.float64
    result = ais(
        jax.random.key(0), rbm, num_chains=50, schedule="linear", num_temperatures=200, level=LEVEL
    )
    assert result.log_partition.dtype == result.log_weights.dtype == jnp.float64
    lo, hi = result.log_partition_interval
    assert lo <= exact_log_partition(rbm) <= hi


def test_to_arviz(rbm_run):
    _, result = rbm_run
    idata = result.to_arviz()
    assert isinstance(idata, az.InferenceData)
    lw = idata.sample_stats["log_weight"]
    assert lw.dims == ("chain", "draw") and lw.shape == (1, 100)
    np.testing.assert_allclose(lw.values[0], result.log_weights)
    attrs = idata.attrs
    assert attrs["num_temperatures"] == 500 and not attrs["reverse"]
    np.testing.assert_allclose(attrs["log_partition"], [float(result.log_partition)])


def test_result_is_a_pytree(rbm_run):
    _, result = rbm_run
    assert isinstance(result, AISResult)
    leaves = jax.tree.leaves(result)
    assert any(getattr(x, "shape", None) == (100,) for x in leaves)


def test_schedules():
    betas = rbm_schedule()
    assert betas.shape == (14500,) and betas[0] == 0 and betas[-1] == 1
    assert np.all(np.diff(betas) > 0)
    assert np.sum(betas < 0.5) == 500 and np.sum((betas >= 0.5) & (betas < 0.9)) == 4000
    np.testing.assert_allclose(linear_schedule(3), [0.0, 0.5, 1.0])


@pytest.mark.parametrize(
    "betas, match",
    [
        ([0.0, 0.5, 0.9], "exactly 1"),
        ([0.1, 1.0], "exactly 0"),
        ([0.0, 0.6, 0.4, 1.0], "strictly increasing"),
        ([[0.0, 1.0]], "1-D"),
        ([0.0, np.nan, 1.0], "finite"),
        ([1.0], "1-D"),
    ],
)
def test_bad_betas_rejected(betas, match):
    with pytest.raises(ValueError, match=f"betas must be.*{match}"):
        ais(jax.random.key(0), make_rbm(6, 2), schedule=betas)


def test_bad_arguments_rejected():
    rbm = make_rbm(6, 2)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="schedule must be"):
        ais(key, rbm, schedule="geometric")
    with pytest.raises(ValueError, match="needs num_temperatures"):
        ais(key, rbm, schedule="linear")
    with pytest.raises(ValueError, match="num_temperatures must be an integer >= 2"):
        ais(key, rbm, schedule="linear", num_temperatures=1)
    with pytest.raises(ValueError, match="num_chains must be"):
        ais(key, rbm, num_chains=1)
    with pytest.raises(ValueError, match=r"data must have shape \(num_data,\)"):
        ais(key, rbm, data=jnp.ones((3, 5), jnp.int32))
    with pytest.raises(ValueError, match="data must take values in"):
        ais(key, rbm, data=2 * jnp.ones((3, 6), jnp.int32))
    with pytest.raises(ValueError, match="initial_state must have shape"):
        ais(key, rbm, initial_state=jnp.ones((6,), jnp.int32))
    with pytest.raises(ValueError, match="level must be"):
        ais(key, rbm, level=95)
    with pytest.raises(ValueError, match="base must be one of"):
        ais(key, rbm, base="empirical")
    with pytest.raises(ValueError, match="pass data=... as well"):
        ais(key, rbm, base="data")
    with pytest.raises(ValueError, match="data is only used by base='data'"):
        ais(key, rbm, base="model", data=jnp.ones((3, 6), jnp.int32))
    with pytest.raises(ValueError, match="num_checkpoints must be"):
        ais(key, rbm, schedule="linear", num_temperatures=10, num_checkpoints=10)
    custom = EnergyDistribution(lambda x: jnp.sum(x), (3,), support_values=(0, 1))
    with pytest.raises(ValueError, match="ais supports"):
        ais(key, custom)
