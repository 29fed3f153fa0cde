"""numpyro_ebm.train.fit: learning, gradients, checkpoints, divergence guard, validation."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from numpyro_ebm import BernoulliRBM, exact_log_partition
from numpyro_ebm.infer import PCD, ParallelTempering
from numpyro_ebm.io import load
from numpyro_ebm.train import TrainingDivergedError, fit, load_checkpoint


def _digits():
    images = (load_digits().data > 7).astype(np.int32)
    images = images[np.random.default_rng(0).permutation(len(images))]
    return images[:1437], images[1437:]


TRAIN, TEST = _digits()
SMALL = TRAIN[:256]


def _rbm(num_visible=64, num_hidden=16, seed=1, batch=()):
    key = jax.random.key(seed)
    return BernoulliRBM(0.01 * jax.random.normal(key, (*batch, num_visible, num_hidden)))


def held_out_ll(rbm, data):
    """Exact average log-likelihood (2**16 hidden states enumerated)."""
    return float(jnp.mean(-rbm.free_energy(data)) - exact_log_partition(rbm))


@dataclasses.dataclass(frozen=True)
class CountingPCD(PCD):
    """PCD that counts how often its step is traced (a Python side effect runs only while
    JAX traces)."""

    traces: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def step(self, rng_key, state, distribution, data=None):
        self.traces.append(1)
        return super().step(rng_key, state, distribution, data)


def test_fit_raises_exact_held_out_likelihood_and_compiles_once():
    """64 x 16 RBM on binarized digits: 8 short epochs lift the exact held-out
    log-likelihood from about -44 nats (near-uniform initial model: 64 log 2 = 44.4) to
    about -24 (measured); the 10-nat margin is far beyond run-to-run variation (a fraction
    of a nat) but well short of what training achieves, so the test fails only if learning
    is broken. The epoch program must be traced once for all epochs."""
    rbm = _rbm()
    estimator = CountingPCD(num_chains=100)
    before = held_out_ll(rbm, TEST)
    model, history = fit(
        jax.random.key(0),
        rbm,
        TRAIN,
        estimator=estimator,
        optimizer=optax.adam(1e-2),
        num_epochs=8,
        batch_size=32,
        eval_data=TEST,
        eval_every=4,
        progress_bar=False,
    )
    after = held_out_ll(model, TEST)
    assert after > before + 10, (before, after)
    assert len(estimator.traces) == 1  # one trace, no recompilation between epochs
    # The history records the exact held-out log-likelihood on evaluation epochs.
    assert history.eval_metric_name == "log_likelihood"
    np.testing.assert_array_equal(history.epoch, np.arange(1, 9))
    assert np.isnan(history.eval_metric[[0, 1, 2, 4, 5, 6]]).all()
    np.testing.assert_allclose(history.eval_metric[-1], after, rtol=1e-5)
    assert history.loss.shape == history.wall_time.shape == (8,)
    assert history.swap_rate.shape == (8, 0)
    assert type(model) is BernoulliRBM and model.weights.shape == (64, 16)


def test_fit_gradient_is_delta1_minus_delta2_of_the_same_chains(tmp_path):
    """One update, plain SGD with rate 1 on the whole batch: the parameter change equals
    the log-likelihood gradient written out by hand from the chains PCD produced (saved
    in the checkpoint): Delta1 - Delta2 = mean_data v p(h|v)^T - mean_chains v p(h|v)^T."""
    data = SMALL[:64]
    rbm = BernoulliRBM(
        0.3 * jax.random.normal(jax.random.key(3), (64, 8)),
        0.1 * jax.random.normal(jax.random.key(4), (64,)),
        0.1 * jax.random.normal(jax.random.key(5), (8,)),
    )
    path = tmp_path / "one_step.npz"
    model, _ = fit(
        jax.random.key(0),
        rbm,
        data,
        estimator=PCD(num_chains=50),
        optimizer=optax.sgd(1.0),
        num_epochs=1,
        batch_size=64,
        checkpoint=path,
        progress_bar=False,
    )
    chains = load_checkpoint(path).chain_leaves[0]  # PCD's chain state: the samples used
    assert chains.shape == (50, 64)

    def stats(v):
        v = jnp.asarray(v, jnp.float32)
        h = jax.nn.sigmoid(rbm.hidden_bias + v @ rbm.weights)
        return v.T @ h / len(v), v.mean(0), h.mean(0)

    pos, neg = stats(data), stats(chains)
    grads = [p - n for p, n in zip(pos, neg, strict=True)]
    changes = [
        model.weights - rbm.weights,
        model.visible_bias - rbm.visible_bias,
        model.hidden_bias - rbm.hidden_bias,
    ]
    for change, grad in zip(changes, grads, strict=True):
        np.testing.assert_allclose(change, grad, rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(grads[0]))) > 0.05  # a non-trivial gradient


def _run(path, num_epochs, callbacks=()):
    return fit(
        jax.random.key(7),
        _rbm(num_hidden=8),
        SMALL,
        estimator=PCD(num_chains=20),
        optimizer=optax.adam(1e-2),
        num_epochs=num_epochs,
        batch_size=32,
        eval_data=TEST[:50],
        checkpoint=path,
        callbacks=callbacks,
        progress_bar=False,
    )


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    straight, history = _run(tmp_path / "straight.npz", 4)

    def interrupt(epoch, distribution, history):
        if epoch == 2:
            raise KeyboardInterrupt

    resumed_path = tmp_path / "resumed.npz"
    with pytest.raises(KeyboardInterrupt):
        _run(resumed_path, 4, callbacks=[interrupt])
    assert load_checkpoint(resumed_path).epoch == 2
    resumed, resumed_history = _run(resumed_path, 4)

    for name in ("weights", "visible_bias", "hidden_bias"):
        np.testing.assert_array_equal(getattr(straight, name), getattr(resumed, name))
    a, b = load_checkpoint(tmp_path / "straight.npz"), load_checkpoint(resumed_path)
    assert a.epoch == b.epoch == 4
    for x, y in zip(a.opt_leaves + a.chain_leaves, b.opt_leaves + b.chain_leaves, strict=True):
        np.testing.assert_array_equal(x, y)
    for field in ("epoch", "loss", "grad_norm", "sample_energy", "eval_metric"):
        np.testing.assert_array_equal(getattr(history, field), getattr(resumed_history, field))
    # The checkpoint holds a loadable model: the final one.
    np.testing.assert_array_equal(load(resumed_path).weights, straight.weights)
    assert sorted(os.listdir(tmp_path)) == ["resumed.npz", "straight.npz"]  # no temp files
    # A finished run resumed again does nothing more.
    again, again_history = _run(resumed_path, 4)
    np.testing.assert_array_equal(again.weights, straight.weights)
    assert len(again_history.epoch) == 4


def test_checkpoint_from_another_model_is_refused(tmp_path):
    path = tmp_path / "ckpt.npz"
    with pytest.raises(KeyboardInterrupt):
        _run(path, 2, callbacks=[lambda *a: (_ for _ in ()).throw(KeyboardInterrupt)])
    with pytest.raises(ValueError, match="does not match this run.*different model size"):
        fit(
            jax.random.key(7),
            _rbm(num_hidden=5),
            SMALL,
            checkpoint=path,
            num_epochs=2,
            progress_bar=False,
        )
    with pytest.raises(ValueError, match="not a readable"):
        path.write_bytes(path.read_bytes()[:100])
        fit(jax.random.key(7), _rbm(num_hidden=8), SMALL, checkpoint=path, progress_bar=False)


def test_divergence_stops_with_last_finite_model(tmp_path):
    """SGD at 1e-2 for two epochs, then a learning rate growing a millionfold per update
    (1e40 overflows float32 after 7 updates): the weights blow up in the third epoch. The
    error carries the epoch-2 model, which the checkpoint also holds."""
    num_batches = len(SMALL) // 32
    schedule = optax.exponential_decay(
        1e-2, transition_steps=1, decay_rate=1e6, transition_begin=2 * num_batches
    )
    path = tmp_path / "ckpt.npz"
    with pytest.raises(TrainingDivergedError, match="Lower the learning rate") as info:
        fit(
            jax.random.key(0),
            _rbm(num_hidden=8),
            SMALL,
            estimator=PCD(num_chains=20),
            optimizer=optax.sgd(schedule),
            num_epochs=5,
            batch_size=32,
            checkpoint=path,
            checkpoint_every=5,
            progress_bar=False,
        )
    error = info.value
    assert isinstance(error, FloatingPointError)
    assert error.epoch == 2 and len(error.history.epoch) == 2
    for value in error.distribution.energy_parameters().values():
        assert bool(jnp.all(jnp.isfinite(value)))
    assert float(jnp.max(jnp.abs(error.distribution.weights))) > 0.01  # it did train
    # checkpoint_every=5 wrote nothing before; the guard saved the last finite state.
    saved = load_checkpoint(path)
    assert saved.epoch == 2
    assert all(np.isfinite(v).all() for v in saved.params.values())
    np.testing.assert_array_equal(saved.distribution.weights, error.distribution.weights)


def test_parallel_tempering_swap_rates_and_stopping_callback():
    seen = []

    def stop_after_two(epoch, distribution, history):
        seen.append((epoch, len(history.epoch), type(distribution).__name__))
        return epoch < 2  # False after the second epoch stops training

    model, history = fit(
        jax.random.key(0),
        _rbm(num_hidden=8),
        SMALL,
        estimator=ParallelTempering(num_chains=10, num_temperatures=3, min_beta=0.3),
        num_epochs=10,
        batch_size=64,
        callbacks=stop_after_two,
        progress_bar=False,
    )
    assert seen == [(1, 1, "BernoulliRBM"), (2, 2, "BernoulliRBM")]
    assert history.swap_rate.shape == (2, 2)
    assert np.all((history.swap_rate > 0) & (history.swap_rate <= 1))


def test_batched_model_and_float64(x64):
    """Two independent 16 x 4 RBMs in one batch, float64, member 1 fitted to the complement
    of member 0's images. Each member must explain its own data far better than the other
    member's (the top pixels of the digits are mostly 0, their complement mostly 1; the
    measured gap is several nats) and better than the initial model."""
    data = np.stack([SMALL[:128, :16], 1 - SMALL[:128, :16]], axis=1)  # (128, 2, 16)
    rbm = BernoulliRBM(jnp.zeros((2, 16, 4), jnp.float64) + 0.01)
    model, history = fit(
        jax.random.key(0),
        rbm,
        data,
        optimizer=optax.adam(0.05),
        num_epochs=4,
        batch_size=32,
        eval_data=data,
        progress_bar=False,
    )
    assert model.weights.dtype == jnp.float64 and model.batch_shape == (2,)
    assert history.eval_metric.shape == (4, 2)
    log_z = exact_log_partition(model)
    own = np.asarray(jnp.mean(-model.free_energy(data), 0) - log_z)
    swapped = np.asarray(jnp.mean(-model.free_energy(data[:, ::-1]), 0) - log_z)
    np.testing.assert_allclose(history.eval_metric[-1], own, rtol=1e-10)
    initial = np.asarray(jnp.mean(-rbm.free_energy(data), 0) - exact_log_partition(rbm))
    assert np.all(own > initial + 1), (own, initial)
    assert np.all(own > swapped + 3), (own, swapped)


def test_constrained_parameters_stay_valid():
    """Positive scales are optimized through exp (biject_to), symmetric zero-diagonal
    couplings through a projection that also keeps the Gibbs colouring valid."""
    boltzmann = pytest.importorskip("numpyro_ebm.distributions.boltzmann")
    x = SMALL[:128, 20:28]
    ring = np.roll(np.eye(8), 1, axis=1)
    machine = boltzmann.BoltzmannMachine(0.1 * (ring + ring.T))  # sparse: 2 colours
    fitted, _ = fit(jax.random.key(0), machine, x, num_epochs=3, batch_size=32, progress_bar=False)
    j = np.asarray(fitted.couplings)
    np.testing.assert_array_equal(j, j.T)
    np.testing.assert_array_equal(np.diag(j), 0)
    colors = machine.coloring
    assert np.all(j[colors[:, None] == colors[None, :]] == 0)
    assert np.any(j != np.asarray(machine.couplings))
    with pytest.raises(ValueError, match="cannot be learned"):
        fit(jax.random.key(0), boltzmann.BoltzmannMachine(jnp.zeros((8, 8))), x, progress_bar=False)


def test_positive_scale_stays_positive():
    gaussian = pytest.importorskip("numpyro_ebm.distributions.gaussian_rbm")
    x = jax.random.normal(jax.random.key(0), (128, 4)) * 0.3
    rbm = gaussian.GaussianBernoulliRBM(0.01 * jnp.ones((4, 3)), visible_scale=1.0)
    estimator = CountingPCD(num_chains=32)
    fitted, history = fit(
        jax.random.key(1),
        rbm,
        x,
        estimator=estimator,
        optimizer=optax.adam(0.05),
        num_epochs=4,
        batch_size=32,
        eval_data=x,
        progress_bar=False,
    )
    assert bool(jnp.all(fitted.visible_scale > 0))
    assert bool(jnp.all(fitted.visible_scale < 1.0))  # data scale 0.3: the scales shrink
    assert history.eval_metric_name == "log_likelihood"  # 2**3 hidden states: exact
    # visible_scale=1.0 is a weakly typed scalar: the carry is made strongly typed once, so
    # the epoch program is still traced only once.
    assert len(estimator.traces) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": SMALL[:, :10]}, r"data must have shape \(num_examples,\)"),
        ({"data": SMALL * 16}, "Binarize"),
        ({"batch_size": 10_000}, "batch_size must be at most"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"num_epochs": 0}, "num_epochs must be a positive integer"),
        ({"eval_every": -1}, "eval_every must be a positive integer"),
        ({"eval_data": TEST[:, :3]}, r"eval_data must have shape"),
        ({"estimator": "pcd"}, "estimator must have init"),
        ({"optimizer": 0.1}, "optimizer must be an optax"),
        ({"callbacks": [1]}, "callbacks must be callables"),
        ({"distribution": jnp.ones(3)}, "EnergyBasedDistribution"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, message):
    args = {"distribution": _rbm(), "data": SMALL, **kwargs}
    data = args.pop("data")
    distribution = args.pop("distribution")
    with pytest.raises(ValueError, match=message):
        fit(jax.random.key(0), distribution, data, progress_bar=False, **args)


def test_user_energy_function_is_trainable(tmp_path):
    """EnergyDistribution keeps its parameters in a nested pytree: fit updates them by
    path, and its checkpoint stores the parameters (not the Python energy function)."""
    custom = pytest.importorskip("numpyro_ebm.distributions.custom")

    def energy(x, params):
        return -x @ params["h"]

    model = custom.EnergyDistribution(
        energy, (4,), support_values=(0, 1), params={"h": jnp.zeros(4)}
    )
    data = np.tile(np.asarray([[1, 0, 1, 0]], np.int32), (32, 1))
    path = tmp_path / "custom.npz"
    fitted, _ = fit(
        jax.random.key(0),
        model,
        data,
        estimator=PCD(num_chains=16),
        optimizer=optax.adam(0.1),
        num_epochs=2,
        batch_size=16,
        checkpoint=path,
        progress_bar=False,
    )
    h = np.asarray(fitted.params["h"])
    assert h[0] > 0.1 and h[2] > 0.1 and h[1] < -0.1 and h[3] < -0.1  # fields follow data
    saved = load_checkpoint(path)
    assert saved.distribution is None and saved.epoch == 2
    np.testing.assert_array_equal(saved.params["params['h']"], h)
