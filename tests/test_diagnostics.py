"""numpyro_ebm.diagnostics: per-chain summaries, ArviZ conversion, mixing reports, the
training monitor and the plots."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from numpyro_ebm import BernoulliRBM, IsingLattice, all_states, exact_log_partition
from numpyro_ebm.diagnostics import (
    ChainTrace,
    MixingError,
    MixingWarning,
    Monitor,
    diagnose_svi,
    plot_autocorr,
    plot_rank,
    plot_samples_as_images,
    plot_swap_ladder,
    plot_trace,
    report,
    summaries,
    to_arviz,
    trace_estimator,
    trace_gibbs,
)
from numpyro_ebm.infer import PCD, ParallelTempering, RelaxedHMC
from numpyro_ebm.io import METADATA_KEY, read_npz, write_npz
from numpyro_ebm.train import fit, load_checkpoint

ENERGY, ACTIVATION = 0, 1  # columns of a report on a ChainTrace


def _opposite_modes(shape, num_chains):
    """Half the chains all +1, half all -1."""
    half = num_chains // 2
    return jnp.concatenate([jnp.ones((half, *shape)), -jnp.ones((num_chains - half, *shape))])


def _exact_means(distribution):
    """Exact E[energy] and E[mean activation] by enumeration."""
    states = all_states(distribution)
    s = summaries(distribution, states)
    log_p = -np.asarray(s.energy, np.float64) - float(exact_log_partition(distribution))
    p = np.exp(log_p)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)
    return float(p @ np.asarray(s.energy)), float(p @ np.asarray(s.mean_activation))


# ---------------------------------------------------------------------- samplers
def test_stuck_sampler_is_flagged_and_easy_model_is_not():
    """Single-temperature Gibbs on an 8x8 periodic Ising lattice at coupling 1.0 (far below
    the critical 0.44): flipping a chain's magnetization needs two domain walls of 8 bonds
    each, an energy barrier of 32, so chains started all +1 and all -1 stay in their modes
    (rate about exp(-32) per sweep). R-hat of the magnetization must be huge, while R-hat of
    the energy, symmetric under the global flip, stays near 1: the energy alone would hide
    the problem.

    The same sampler on a 4x4 lattice at coupling 0.1 mixes in a few sweeps. 8 chains x 480
    draws (after 20 discarded) give a bulk ESS in the thousands (measured: about 3,500 for
    the energy), i.e. about 220 per split chain; split R-hat - 1 is then about
    (F - 1) / (2 * 220) with F ~ F(15, large) under mixing, so R-hat >= 1.01 needs F > 5.4,
    probability below 1e-9: a false alarm cannot explain a failure. The report's means must
    also agree with the exact ones (enumeration of 2^16 states) within 4 Monte Carlo standard
    errors (two-sided p = 6e-5 per check), which checks the MCSE."""
    stuck_model = IsingLattice((8, 8), coupling=1.0)
    trace, state = trace_gibbs(
        jax.random.key(0), stuck_model, _opposite_modes((8, 8), 8), num_draws=200
    )
    assert trace.energy.shape == trace.mean_activation.shape == (8, 200)
    assert state.position.shape == (8, 8, 8)
    assert trace.accept_prob is None and trace.swap_rate is None
    stuck = report(trace)
    assert not stuck.ok
    assert stuck.rhat[ACTIVATION] > 2.0
    assert stuck.rhat[ENERGY] < 1.1
    assert "mean_activation: R-hat" in str(stuck) and "FAIL" in str(stuck)
    # The chains' magnetizations stay on their side: the sampler is stuck, not noisy.
    m = np.asarray(trace.mean_activation)
    assert np.all(m[:4] > 0.5) and np.all(m[4:] < -0.5)

    easy_model = IsingLattice((4, 4), coupling=0.1)
    trace, _ = trace_gibbs(jax.random.key(1), easy_model, _opposite_modes((4, 4), 8), num_draws=500)
    kept = {"energy": trace.energy[:, 20:], "mean_activation": trace.mean_activation[:, 20:]}
    easy = report(kept)
    assert easy.ok, str(easy)
    assert easy.num_stuck.tolist() == [0, 0]
    exact = _exact_means(easy_model)
    for i, name in enumerate(("energy", "mean_activation")):
        mean = float(np.mean(kept[name]))
        assert abs(mean - exact[i]) < 4 * easy.mcse_mean[i], (name, mean, exact[i])
    # autocorrelation time = draws / ESS, at least about 1 for Gibbs on this model.
    np.testing.assert_allclose(easy.autocorr_time, 8 * 480 / easy.ess_bulk)


def test_iid_binary_draws_raise_no_false_alarm_but_a_shifted_chain_does():
    """i.i.d. Bernoulli draws (heavy ties: arviz ranks with method="average") in 4 chains x
    500 draws, 20 independent replicates at p = 0.5 and at p = 0.1, must all pass at the
    default threshold 1.01. Under independence, split R-hat^2 = (n - 1)/n + F/n with n = 250
    draws per split chain and F ~ F(7, 1992) (between- over within-chain variance, CLT for
    the binary means), so R-hat >= 1.01 needs F >= 1 + 0.0201 n = 6.03: probability
    6e-7 per R-hat (bulk and folded tail: about 1.2e-6 per report), under 5e-5 for all 40
    reports. One chain at p = 0.3 among chains at p = 0.1 is a between-chain difference of
    0.2 against a per-chain standard error of 0.016: it must be flagged."""
    rng = np.random.default_rng(0)
    for p in (0.5, 0.1):
        for _ in range(20):
            draws = (rng.random((4, 500)) < p).astype(np.int8)
            result = report({"unit": draws})
            assert result.ok, str(result)
            assert result.num_stuck.tolist() == [0]
    shifted = (rng.random((4, 500)) < np.array([[0.1], [0.1], [0.1], [0.3]])).astype(np.int8)
    assert not report({"unit": shifted}).ok


def test_stuck_chains_are_counted_not_hidden():
    """A chain whose value never changes is counted and fails the report (arviz alone gives
    a finite R-hat here); all chains constant gives NaN ESS instead of arviz's full sample
    size; too few chains fail with a reason; bad arguments are refused."""
    draws = np.random.default_rng(1).normal(size=(4, 200))
    draws[2] = 0.7
    result = report({"x": draws})
    assert result.num_stuck.tolist() == [1] and not result.ok
    assert "1 of 4 chains stuck" in str(result)
    constant = report({"x": np.ones((4, 50)), "y": np.arange(200.0).reshape(4, 50)})
    assert constant.num_stuck.tolist() == [4, 0]
    assert np.isnan(constant.rhat[0]) and np.isnan(constant.ess_bulk[0])
    assert np.isnan(constant.autocorr_time[0])
    assert not constant.ok
    two = report({"x": np.random.default_rng(2).normal(size=(2, 200))})
    assert not two.ok and "only 2 chains" in two.problems[0]
    assert report({"x": draws}, var_names="x").quantities == ("x",)
    with pytest.raises(ValueError, match="var_names"):
        report({"x": draws}, var_names=["nope"])
    with pytest.raises(ValueError, match="at least 4 draws"):
        report({"x": np.zeros((4, 3))})
    with pytest.raises(ValueError, match="rhat_threshold"):
        report({"x": draws}, rhat_threshold=1.0)
    with pytest.raises(ValueError, match=r"\(chain, draw"):
        to_arviz({"x": np.zeros(5)})


# ---------------------------------------------------------------------- estimators
def test_estimators_record_per_chain_summaries_and_convert_to_arviz():
    """PCD and parallel tempering report, per step, the energy and mean activation of each
    returned chain (matching the samples), and the swap rates; the traces convert to ArviZ
    with (chain, draw) dimensions. A numpyro MCMC run with BlockGibbs converts too."""
    rbm = BernoulliRBM(0.5 * jax.random.normal(jax.random.key(0), (5, 2)))
    pcd = PCD(num_chains=6)
    state = pcd.init(jax.random.key(1), rbm)
    samples, _, info = pcd.step(jax.random.key(2), state, rbm)
    np.testing.assert_allclose(info.chain_energy, rbm.energy(samples), rtol=1e-6)
    np.testing.assert_allclose(info.chain_mean_activation, samples.mean(-1), rtol=1e-6)
    np.testing.assert_allclose(info.energy, info.chain_energy.mean(), rtol=1e-6)
    assert info.accept_prob is None and info.diverging is None
    # A transition with an accept/reject step reports it per chain (relaxed HMC).
    hmc = PCD(num_chains=4, transition=RelaxedHMC(step_size=0.5, num_leapfrog=3))
    trace, _ = trace_estimator(
        jax.random.key(6), hmc, hmc.init(jax.random.key(7), rbm), rbm, num_draws=5
    )
    assert trace.accept_prob.shape == trace.diverging.shape == (4, 5)
    assert np.all((np.asarray(trace.accept_prob) >= 0) & (np.asarray(trace.accept_prob) <= 1))
    stats = to_arviz(trace).sample_stats
    assert set(stats.data_vars) == {"accept_prob", "diverging"}

    pt = ParallelTempering(num_chains=4, num_temperatures=3)
    state = pt.init(jax.random.key(3), rbm)
    trace, new_state = trace_estimator(jax.random.key(4), pt, state, rbm, num_draws=30)
    assert trace.energy.shape == (4, 30) and trace.swap_rate.shape == (30, 2)
    assert int(new_state.step) == 30 and int(state.step) == 0
    # Pairs alternate: each step attempts one parity, the other is NaN.
    attempted = ~np.isnan(np.asarray(trace.swap_rate))
    assert attempted[0].tolist() == [True, False] and attempted[1].tolist() == [False, True]
    idata = to_arviz(trace)
    assert dict(idata.posterior.sizes) == {"chain": 4, "draw": 30}
    assert idata.sample_stats["swap_rate"].shape == (4, 30, 2)
    assert to_arviz(idata) is idata

    from numpyro.infer import MCMC

    from numpyro_ebm.infer import BlockGibbs

    mcmc = MCMC(
        BlockGibbs(rbm),
        num_warmup=5,
        num_samples=20,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(5), extra_fields=("energy", "mean_activation"))
    result = report(mcmc)
    assert result.quantities == ("x",) and result.num_chains == 4 and result.num_draws == 20
    stats = report(mcmc, group="sample_stats", var_names=["energy", "mean_activation"])
    assert stats.num_chains == 4 and stats.num_draws == 20
    draws = mcmc.get_samples(group_by_chain=True)
    np.testing.assert_allclose(
        mcmc.get_extra_fields(group_by_chain=True)["mean_activation"],
        draws["x"].mean(-1),
        rtol=1e-6,
    )


# ---------------------------------------------------------------------- monitor
def _stuck_setup():
    """A strongly coupled Ising lattice fitted to data from both of its modes: PCD chains
    start at data examples (both modes present with this seed), and single-temperature
    Gibbs never crosses between them (barrier 16 * coupling = 24 on a periodic 4x4 lattice:
    rate about exp(-24) per sweep)."""
    model = IsingLattice((4, 4), coupling=1.5)
    data = np.concatenate([np.ones((16, 4, 4)), -np.ones((16, 4, 4))]).astype(np.int32)
    return model, data


def test_monitor_raises_warns_and_records_on_a_stuck_run(tmp_path):
    """action="raise" stops with MixingError carrying the failing report and the history
    (checkpointed first); action="warn" warns and records the failing diagnosis."""
    model, data = _stuck_setup()
    kwargs = dict(
        estimator=PCD(num_chains=8),
        optimizer=optax.sgd(1e-4),
        batch_size=32,
        progress_bar=False,
    )
    path = tmp_path / "ckpt.npz"
    with pytest.raises(MixingError, match="mix poorly after epoch 1") as caught:
        fit(
            jax.random.key(0),
            model,
            data,
            num_epochs=3,
            monitor=Monitor(every=1, num_draws=40, action="raise"),
            checkpoint=path,
            checkpoint_every=5,
            **kwargs,
        )
    error = caught.value
    assert not error.report.ok and error.report.rhat[ACTIVATION] > 1.5
    assert error.epoch == 1 and error.history.monitor_action.tolist() == ["raise"]
    assert load_checkpoint(path).history.monitor_ok.tolist() == [False]
    # A checkpoint written before the monitor existed (no monitor arrays) still loads.
    arrays, meta = read_npz(path)
    old = {k: v for k, v in arrays.items() if "monitor_" not in k and k != METADATA_KEY}
    write_npz(path, old, meta, overwrite=True)
    old_history = load_checkpoint(path).history
    assert old_history.monitor_epoch.shape == (0,) and old_history.monitor_rhat.shape == (0, 2)
    assert old_history.epoch.tolist() == [1]

    with pytest.warns(MixingWarning, match="mix poorly"):
        _, history = fit(
            jax.random.key(0),
            model,
            data,
            num_epochs=2,
            monitor=Monitor(every=2, num_draws=40, action="warn"),
            **kwargs,
        )
    assert history.monitor_epoch.tolist() == [2]
    assert history.monitor_ok.tolist() == [False]
    assert history.monitor_action.tolist() == ["warn"]
    assert history.monitor_rhat.shape == (1, 2) and history.monitor_rhat[0, ACTIVATION] > 1.5
    assert history.monitor_num_sweeps.tolist() == [1]
    assert history.monitor_num_chains.tolist() == [8]


def test_monitor_does_not_change_a_well_mixing_run():
    """A tiny RBM (6 x 3, weak weights) mixes: every diagnosis passes at the monitor's
    1.05 (8 chains x 100 draws, bulk ESS in the hundreds: a false alarm needs an F(15,
    large) statistic above 2 * 0.0509 * 50 + 1 = 6, probability below 1e-10); and the
    diagnoses run on a copy of the chains with their own keys, so the fitted model is
    bit-identical to the run without a monitor."""
    data = jax.random.bernoulli(jax.random.key(0), 0.3, (64, 6)).astype(jnp.int32)
    rbm = BernoulliRBM(0.01 * jax.random.normal(jax.random.key(1), (6, 3)))
    kwargs = dict(estimator=PCD(num_chains=8), num_epochs=2, batch_size=16, progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MixingWarning)
        monitored, history = fit(
            jax.random.key(2), rbm, data, monitor=Monitor(every=1, num_draws=100), **kwargs
        )
    plain, plain_history = fit(jax.random.key(2), rbm, data, **kwargs)
    assert history.monitor_ok.tolist() == [True, True]
    assert history.monitor_action.tolist() == ["", ""]
    assert len(plain_history.monitor_epoch) == 0
    np.testing.assert_array_equal(monitored.weights, plain.weights)
    np.testing.assert_array_equal(history.loss, plain_history.loss)


def test_monitor_grows_the_estimator_and_resumes_identically(tmp_path):
    """add_sweeps doubles num_sweeps at each failing diagnosis; add_chains doubles the
    chains (old chains kept first, new ones started from data) and a run interrupted after
    epoch 1 resumes with the grown estimator, bit-identical to the straight run."""
    model, data = _stuck_setup()
    kwargs = dict(optimizer=optax.sgd(1e-4), batch_size=32, progress_bar=False)
    with pytest.warns(MixingWarning, match="Sweeps per update raised to 2"):
        _, history = fit(
            jax.random.key(0),
            model,
            data,
            estimator=PCD(num_chains=8),
            num_epochs=1,
            monitor=Monitor(every=1, num_draws=20, action="add_sweeps"),
            **kwargs,
        )
    assert history.monitor_num_sweeps.tolist() == [2]

    monitor = Monitor(every=1, num_draws=20, action="add_chains")
    runs = {}
    for name, stops in (("straight", [2]), ("resumed", [1, 2])):
        path = tmp_path / f"{name}.npz"
        for num_epochs in stops:
            with pytest.warns(MixingWarning):
                runs[name] = fit(
                    jax.random.key(0),
                    model,
                    data,
                    estimator=PCD(num_chains=4),
                    num_epochs=num_epochs,
                    monitor=monitor,
                    checkpoint=path,
                    **kwargs,
                )
    (straight, history), (resumed, resumed_history) = runs["straight"], runs["resumed"]
    assert history.monitor_num_chains.tolist() == [8, 16]
    np.testing.assert_array_equal(straight.coupling, resumed.coupling)
    np.testing.assert_array_equal(straight.field, resumed.field)
    for field in ("loss", "monitor_rhat", "monitor_num_chains"):
        np.testing.assert_array_equal(getattr(history, field), getattr(resumed_history, field))
    a, b = load_checkpoint(tmp_path / "straight.npz"), load_checkpoint(tmp_path / "resumed.npz")
    assert a.chain_leaves[0].shape == (16, 4, 4)
    for x, y in zip(a.chain_leaves, b.chain_leaves, strict=True):
        np.testing.assert_array_equal(x, y)


def test_monitor_rejects_bad_settings():
    with pytest.raises(ValueError, match="action must be one of"):
        Monitor(action="retry")
    with pytest.raises(ValueError, match="rhat_threshold"):
        Monitor(rhat_threshold=0.9)
    with pytest.raises(ValueError, match="every must be a positive integer"):
        Monitor(every=0)
    from numpyro_ebm.infer import CD

    with pytest.raises(ValueError, match="add_chains"):
        Monitor(action="add_chains").check_estimator(CD())


# ---------------------------------------------------------------------- SVI
def test_diagnose_svi_flags_the_stuck_persistent_chains():
    """The chains negative_phase keeps in numpyro's mutable state, started from data in
    both modes of a strongly coupled lattice, are diagnosed as stuck; a model without the
    handler is refused."""
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO

    from numpyro_ebm.handlers import negative_phase

    model_dist, data = _stuck_setup()

    def model(data):
        coupling = numpyro.param("coupling", 1.5)
        with numpyro.plate("data", data.shape[0]):
            numpyro.sample("s", IsingLattice((4, 4), coupling=coupling), obs=data)

    svi = SVI(
        negative_phase(model, estimator=PCD(num_chains=8)),
        lambda data: None,
        optax.sgd(1e-4),
        Trace_ELBO(),
    )
    state = svi.init(jax.random.key(0), data)
    result, trace = diagnose_svi(jax.random.key(1), svi, state, data, site="s", num_draws=40)
    assert result.num_chains == 8 and trace.energy.shape == (8, 40)
    assert not result.ok and result.rhat[ACTIVATION] > 1.5
    bare = SVI(model, lambda data: None, optax.sgd(1e-4), Trace_ELBO())
    with pytest.raises(ValueError, match="negative_phase"):
        diagnose_svi(jax.random.key(1), bare, state, data, site="s")
    with pytest.raises(ValueError, match="no persistent chains"):
        diagnose_svi(jax.random.key(1), svi, state, data, site="other")


# ---------------------------------------------------------------------- plots
def test_plots_return_axes():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    trace = ChainTrace(jnp.asarray(rng.normal(size=(4, 30))), jnp.asarray(rng.random((4, 30))))
    try:
        for plot in (plot_trace, plot_rank, plot_autocorr):
            axes = np.asarray(plot(trace))
            assert axes.size >= 2 and all(hasattr(ax, "figure") for ax in axes.ravel())
        ax = plot_samples_as_images(rng.random((10, 12)), (3, 4), num_columns=4)
        assert ax.images[0].get_array().shape == (3 * 4 - 1, 4 * 5 - 1)
        ax = plot_swap_ladder([1.0, 0.5, 0.25], [0.8, 0.3])
        assert len(ax.lines[0].get_xdata()) == 2
        with pytest.raises(ValueError, match="swap_rates"):
            plot_swap_ladder([1.0, 0.5], [0.8, 0.3])
        with pytest.raises(ValueError, match="images of shape"):
            plot_samples_as_images(np.zeros((2, 5)), (2, 2))
    finally:
        plt.close("all")
