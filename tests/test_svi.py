"""Training energy-based sites with numpyro's SVI through the negative_phase handler.

The gradient tests reproduce SVI's gradient by hand with the very same negative samples: a
persistent estimator's samples are its chains after the step, which SVI returns in
``svi_state.mutable_state``; SVI runs ``optax.sgd(1.0)``, so ``params0 - params1`` is its
gradient. They run in float64, where both sides agree to rounding.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.handlers import mask, seed, substitute, trace
from numpyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from numpyro.infer.autoguide import AutoNormal

from numpyro_ebm import BernoulliRBM, LogPartitionGradientError, exact_log_partition
from numpyro_ebm.handlers import negative_phase
from numpyro_ebm.infer import CD, PCD, ParallelTempering

NUM_VISIBLE, NUM_HIDDEN, NUM_EXAMPLES = 6, 4, 40
DATA = jax.random.bernoulli(jax.random.key(1), 0.5, (NUM_EXAMPLES, NUM_VISIBLE)).astype(jnp.int32)
_rng = np.random.default_rng(0)
INIT = {
    "W": 0.5 * _rng.normal(size=(NUM_VISIBLE, NUM_HIDDEN)),
    "b": 0.3 * _rng.normal(size=NUM_VISIBLE),
    "c": 0.3 * _rng.normal(size=NUM_HIDDEN),
}
SITE = "v_negative_phase"


def no_guide(data):
    pass


def param_model(data, subsample_size=None):
    """An RBM with parameters as numpyro.param sites, observed in a plate."""
    W = numpyro.param("W", jnp.asarray(INIT["W"]))
    b = numpyro.param("b", jnp.asarray(INIT["b"]))
    c = numpyro.param("c", jnp.asarray(INIT["c"]))
    with numpyro.plate("data", data.shape[0], subsample_size=subsample_size) as idx:
        numpyro.sample("v", BernoulliRBM(W, b, c), obs=data[idx])


def rbm_of(params):
    return BernoulliRBM(params["W"], params["b"], params["c"])


def sgd_svi(model, guide=no_guide, data=DATA):
    """SVI with sgd(1.0), its initial state and a compiled update."""
    svi = SVI(model, guide, optax.sgd(1.0), Trace_ELBO())
    return svi, svi.init(jax.random.key(3), data), jax.jit(svi.update)


def gradient(svi, state0, state1):
    """SVI's gradient in the unconstrained parameters (sgd with step size 1)."""
    u0 = svi.optim.get_params(state0.optim_state)
    u1 = svi.optim.get_params(state1.optim_state)
    return jax.tree.map(jnp.subtract, u0, u1)


def assert_trees_close(actual, expected):
    assert set(actual) == set(expected)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, atol=1e-6)


@jax.jit
@jax.grad
def hand_gradient(params, samples):
    """Gradient of the fit-style loss N * (-mean_b log p(x_b)) with the negative samples
    attached: -sum_b (Delta1_b - Delta2)."""
    rbm = rbm_of(params).with_negative_samples(samples)
    return -NUM_EXAMPLES * jnp.mean(rbm.log_prob(DATA))


# ---------------------------------------------------------------------------- the guard
def test_without_handler_a_large_rbm_raises_log_partition_gradient_error():
    """64 x 20 has 2**20 states to enumerate: log Z is unknown and SVI must not silently
    train on the positive phase alone. With the handler the same model trains."""

    def model(data):
        W = numpyro.param("W", jnp.zeros((64, 20)))
        numpyro.sample("v", BernoulliRBM(W), obs=data)

    data = jnp.zeros((8, 64), jnp.int32)
    svi = SVI(model, no_guide, optax.adam(1e-2), Trace_ELBO())
    state = svi.init(jax.random.key(0), data)
    with pytest.raises(LogPartitionGradientError, match="with_negative_samples"):
        svi.update(state, data)
    svi = SVI(negative_phase(model, estimator=CD()), no_guide, optax.adam(1e-2), Trace_ELBO())
    state, loss = jax.jit(svi.update)(svi.init(jax.random.key(0), data), data)
    assert np.isfinite(loss) and np.all(np.isfinite(svi.get_params(state)["W"]))


# ---------------------------------------------------------------------------- PCD
@dataclasses.dataclass(frozen=True)
class KeyRecording:
    """A PCD whose state also keeps the key of its last step, to replay the step by hand."""

    inner: PCD

    def init(self, rng_key, distribution, data):
        return self.inner.init(rng_key, distribution, data), jax.random.key_data(rng_key)

    def step(self, rng_key, state, distribution, data):
        samples, inner, info = self.inner.step(rng_key, state[0], distribution, data)
        return samples, (inner, jax.random.key_data(rng_key)), info


def test_pcd_gradient_is_the_hand_gradient_and_chains_persist(x64):
    """One step: SVI's gradient is sum_b (Delta1_b - Delta2) with the chains SVI returns,
    exactly jax.grad of -N * mean(rbm.with_negative_samples(chains).log_prob(data)), and the
    loss is the exact negative log-likelihood (the model enumerates). Every step: the chains
    are exactly one PCD step (replayed with the step's key) from the chains SVI carried in,
    at that step's parameters: carried, never re-initialized."""
    estimator = KeyRecording(PCD(num_chains=64))
    svi, state, update = sgd_svi(negative_phase(param_model, estimator=estimator))
    for step in (2, 3, 4):  # svi.init ran step 1
        before, _ = state.mutable_state[SITE]["estimator_state"]
        params = svi.get_params(state)
        new_state, loss = update(state, DATA)
        after, key_data = new_state.mutable_state[SITE]["estimator_state"]
        assert int(after.step) == step
        replay, _, _ = estimator.inner.step(
            jax.random.wrap_key_data(key_data), before, rbm_of(params), DATA
        )
        np.testing.assert_array_equal(after.chains, replay)
        assert not np.array_equal(after.chains, before.chains)
        expected = hand_gradient(params, after.chains)
        assert_trees_close(gradient(svi, state, new_state), expected)
        np.testing.assert_allclose(loss, -jnp.sum(rbm_of(params).log_prob(DATA)), rtol=1e-12)
        state = new_state


def test_parallel_tempering_gradient_and_swap_statistics(x64):
    """The beta = 1 replicas are the negative samples; the ladder's swap counts accumulate
    in the mutable state across steps (pairs alternate, 16 ladders per attempt)."""
    pt = ParallelTempering(num_chains=16, betas=(1.0, 0.7, 0.4))
    svi, state, update = sgd_svi(negative_phase(param_model, estimator=pt))
    for _ in range(4):
        params = svi.get_params(state)
        new_state, _ = update(state, DATA)
        chains = new_state.mutable_state[SITE]["estimator_state"].chains
        assert chains.shape == (3, 16, NUM_VISIBLE)
        expected = hand_gradient(params, chains[0])
        assert_trees_close(gradient(svi, state, new_state), expected)
        state = new_state
    pt_state = state.mutable_state[SITE]["estimator_state"]
    assert int(pt_state.step) == 5
    np.testing.assert_array_equal(pt_state.swap_attempts, [16 * 3, 16 * 2])
    assert np.all(ParallelTempering.swap_rates(pt_state) > 0)


def test_subsampled_masked_plate_scales_both_phases_alike(x64):
    """In a plate of size N subsampled to B the gradient is N/B * sum_batch (Delta1_b -
    Delta2): the surrogate for log Z is part of every example's log_prob, so numpyro's scale
    applies to it. Masked-out examples contribute neither phase."""
    idx = jnp.arange(5, 15)  # B = 10 of N = 40, fixed by substituting the plate's indices
    keep = jnp.arange(10) % 3 != 0

    def model(data):
        with mask(mask=keep):
            param_model(data, subsample_size=idx.shape[0])

    model = substitute(model, data={"data": idx})
    svi, state0, update = sgd_svi(negative_phase(model, estimator=PCD(num_chains=64)))
    state1, _ = update(state0, DATA)
    samples = state1.mutable_state[SITE]["estimator_state"].chains

    def hand_loss(params):
        rbm = rbm_of(params).with_negative_samples(samples)
        log_lik = jnp.where(keep, rbm.log_prob(DATA[idx]), 0.0)
        return -(NUM_EXAMPLES / idx.shape[0]) * jnp.sum(log_lik)

    expected = jax.grad(hand_loss)(svi.get_params(state0))
    assert_trees_close(gradient(svi, state0, state1), expected)


def latent_model(data):
    """The RBM with its weights a latent site (standard normal prior), minibatches of 8."""
    W = numpyro.sample("W", dist.Normal(0, 1).expand((NUM_VISIBLE, NUM_HIDDEN)).to_event(2))
    b = numpyro.param("b", jnp.asarray(INIT["b"]))
    c = numpyro.param("c", jnp.asarray(INIT["c"]))
    with numpyro.plate("data", data.shape[0], subsample_size=8) as idx:
        numpyro.sample("v", BernoulliRBM(W, b, c), obs=data[idx])


def test_latent_weights_with_autonormal_match_the_hand_gradient(x64):
    """Weights from a latent site, AutoNormal guide: the negative phase reaches the guide's
    loc and scale through the reparameterized draw of W. The hand loss redraws W from the
    guide with the key SVI gives it (update splits svi_state.rng_key, Trace_ELBO splits the
    step key into model and guide seeds)."""
    idx = jnp.arange(8)
    guide = AutoNormal(latent_model)
    model = negative_phase(substitute(latent_model, data={"data": idx}), estimator=PCD(32))
    svi, state0, update = sgd_svi(model, guide)
    state1, loss = update(state0, DATA)
    samples = state1.mutable_state[SITE]["estimator_state"].chains
    _, key_step = jax.random.split(state0.rng_key)
    _, guide_seed = jax.random.split(key_step)

    def hand_loss(unconstrained):
        params = svi.constrain_fn(unconstrained)
        guide_trace = trace(substitute(seed(guide, guide_seed), params)).get_trace(DATA)
        W = guide_trace["W"]["value"]
        log_q = guide_trace["W"]["fn"].log_prob(W)
        log_prior = dist.Normal(0, 1).log_prob(W).sum()
        rbm = BernoulliRBM(W, params["b"], params["c"]).with_negative_samples(samples)
        log_lik = NUM_EXAMPLES / idx.shape[0] * jnp.sum(rbm.log_prob(DATA[idx]))
        return -(log_prior + log_lik - log_q)

    value, expected = jax.value_and_grad(hand_loss)(svi.optim.get_params(state0.optim_state))
    np.testing.assert_allclose(loss, value, rtol=1e-12)
    grad = gradient(svi, state0, state1)
    assert set(grad) == {"W_auto_loc", "W_auto_scale", "b", "c"}
    assert_trees_close(grad, expected)
    assert np.all(np.isfinite(grad["W_auto_scale"])) and np.any(grad["W_auto_scale"] != 0)


# ---------------------------------------------------------------------------- particles
def test_persistent_estimator_with_unsupported_elbo_is_rejected_at_init():
    model = negative_phase(param_model, estimator=PCD(num_chains=8))
    svi = SVI(model, no_guide, optax.adam(0.01), Trace_ELBO(num_particles=2))
    with pytest.raises(ValueError, match="num_particles=1"):
        svi.init(jax.random.key(0), DATA)
    svi = SVI(model, no_guide, optax.adam(0.01), TraceGraph_ELBO())
    with pytest.raises(ValueError, match="mutable"):
        svi.init(jax.random.key(0), DATA)


def test_cd_with_several_particles_averages_the_particles_gradients():
    """CD keeps no mutable state, so every (vmapped) particle runs its own CD step with its
    own key; the gradient is Delta1 - mean_p Delta2_p. Against 16 one-particle gradients
    (mean m, standard deviation s per entry) the 4-particle gradient g has
    g - m ~ N(0, s^2 (1/4 + 1/16)): every weight entry within 5 such standard deviations
    (false alarm ~1e-5 over 24 entries). Summing instead of averaging the particles, or
    dropping Delta2, moves entries by many."""
    model = negative_phase(param_model, estimator=CD())
    svi = SVI(model, no_guide, optax.sgd(1.0), Trace_ELBO(num_particles=4))
    state0 = svi.init(jax.random.key(0), DATA)
    assert state0.mutable_state is None
    state1, loss = jax.jit(svi.update)(state0, DATA)
    g = np.asarray(gradient(svi, state0, state1)["W"])
    np.testing.assert_allclose(loss, -jnp.sum(rbm_of(INIT).log_prob(DATA)), rtol=1e-5)

    single = SVI(model, no_guide, optax.sgd(1.0), Trace_ELBO())
    s0 = single.init(jax.random.key(0), DATA)

    @jax.jit
    @jax.vmap
    def one_particle(rng_key):
        s1, _ = single.update(s0._replace(rng_key=rng_key), DATA)
        return gradient(single, s0, s1)["W"]

    singles = np.asarray(one_particle(jax.random.split(jax.random.key(1), 16)))
    z = (g - singles.mean(0)) / (singles.std(0, ddof=1) * np.sqrt(1 / 4 + 1 / 16))
    assert np.max(np.abs(z)) < 5, z


# ---------------------------------------------------------------------------- sites
def test_site_selection_and_unobserved_sites():
    rbm = BernoulliRBM(INIT["W"])

    def model(data=None):
        numpyro.sample("x", dist.Normal(0, 1))
        numpyro.sample("v", rbm, obs=data)
        numpyro.sample("u", rbm.expand((3,)))  # latent: left alone

    # As a context manager; CD draws one chain per example and keeps no mutable state.
    with seed(rng_seed=0), trace() as tr, negative_phase(estimator=CD()):
        model(DATA)
    assert tr["v"]["fn"].negative_samples.shape == DATA.shape
    assert tr["u"]["fn"].base_dist.negative_samples is None
    assert SITE not in tr
    # Unobserved (as under Predictive): untouched, even when named.
    tr = trace(seed(negative_phase(model, sites="v"), 0)).get_trace()
    assert tr["v"]["fn"].negative_samples is None
    with pytest.raises(ValueError, match="not found"):
        seed(negative_phase(model, sites=["v", "w"]), 0)(DATA)
    with pytest.raises(ValueError, match="not an energy-based"):
        seed(negative_phase(model, sites="x"), 0)(DATA)
    with pytest.raises(ValueError, match="estimator"):
        negative_phase(model, estimator="pcd")
    with pytest.raises(ValueError, match="seed"):
        negative_phase(lambda: numpyro.sample("v", rbm, obs=DATA))()


def test_observed_value_must_end_with_batch_and_event_shape():
    rbm = BernoulliRBM(jnp.zeros((2, NUM_VISIBLE, NUM_HIDDEN)))  # batch_shape (2,)

    def model():
        numpyro.sample("v", rbm, obs=DATA[:2, :5])

    with pytest.raises(ValueError, match="site 'v'"):
        seed(negative_phase(model), 0)()


# ---------------------------------------------------------------------------- learning
def test_pcd_svi_learns_a_known_rbm():
    """16 x 8 RBM, 1000 exact draws from a known RBM. 300 SVI steps (adam, minibatches of
    100, PCD with 100 chains) raise the exact average log-likelihood from the initial
    model's (16 log 1/2 = -11.09) to within 0.6 nat of the generating model's (-5.27). Eight
    seeds of the run end in [-5.61, -5.58]: the margin covers the run's randomness."""
    num_visible, num_hidden, n = 16, 8, 1000
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(0), 5)
    true = BernoulliRBM(
        1.5 * jax.random.normal(k1, (num_visible, num_hidden)),
        0.5 * jax.random.normal(k2, (num_visible,)) - 0.5,
        0.5 * jax.random.normal(k3, (num_hidden,)),
    )
    # Exact draws: h from its marginal (2**8 states), then v | h.
    codes = jnp.arange(2**num_hidden)[:, None] >> jnp.arange(num_hidden)[::-1]
    hidden = (codes & 1).astype(jnp.float32)
    log_w = hidden @ true.hidden_bias + jnp.sum(jax.nn.softplus(true.hidden_to_visible(hidden)), -1)
    h = hidden[jax.random.categorical(k4, log_w, shape=(n,))]
    data = jax.random.bernoulli(k5, jax.nn.sigmoid(true.hidden_to_visible(h))).astype(jnp.int32)
    w0 = 0.01 * jax.random.normal(jax.random.key(7), (num_visible, num_hidden))

    def model(data):
        W = numpyro.param("W", w0)
        b = numpyro.param("b", jnp.zeros(num_visible))
        c = numpyro.param("c", jnp.zeros(num_hidden))
        with numpyro.plate("data", data.shape[0], subsample_size=100) as idx:
            numpyro.sample("v", BernoulliRBM(W, b, c), obs=data[idx])

    def avg_log_likelihood(rbm):
        return float(jnp.mean(-rbm.energy(data)) - exact_log_partition(rbm))

    svi = SVI(
        negative_phase(model, estimator=PCD(num_chains=100)),
        no_guide,
        optax.adam(0.02),
        Trace_ELBO(),
    )
    result = svi.run(jax.random.key(1), 300, data, progress_bar=False)
    start = avg_log_likelihood(BernoulliRBM(w0))
    learned = avg_log_likelihood(rbm_of(result.params))
    target = avg_log_likelihood(true)
    assert start < target - 5
    assert learned > target - 0.6, (start, learned, target)
