r"""Mixing diagnostics: per-chain summaries, ArviZ conversion, reports, a training monitor.

Samplers and estimators keep only cheap scalars per chain and step (never the states):
the energy ``E(x)`` (the free energy for RBMs) and the mean activation of the units (the
magnetization for Ising spins), plus acceptance, swap rates and divergences where the
algorithm has them. Traced over ``num_draws`` steps they form ``(chain, draw)`` arrays, the
layout ArviZ expects; :func:`report` turns them into rank-normalized split R-hat, bulk and
tail effective sample sizes, Monte Carlo standard errors and integrated autocorrelation
times, with stuck chains counted and a verdict.

.. code-block:: python

    trace, _ = trace_gibbs(rng_key, distribution, initial_positions, num_draws=500)
    print(report(trace))          # a table; report(trace).ok is the verdict
    idata = to_arviz(trace)       # arviz.InferenceData, posterior dims (chain, draw, ...)

During training, :class:`Monitor` diagnoses the negative-phase chains of
:func:`numpyro_ebm.train.fit` every few epochs; :func:`diagnose_svi` does the same for the
chains that :class:`~numpyro_ebm.handlers.negative_phase` keeps in numpyro's mutable state.

R-hat follows Vehtari et al. (2021), "Rank-normalization, folding, and localization: an
improved R-hat", as implemented by ``arviz.rhat`` (``method="rank"``): the draws of all
chains are ranked together with ``scipy.stats.rankdata(method="average")``, so tied values
(binary units, the energies of a small discrete model) get their average rank and ties
neither inflate nor hide between-chain differences.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from numpyro import handlers

from numpyro_ebm.distributions.base import EnergyBasedDistribution
from numpyro_ebm.handlers import _energy_based_base, _examples, negative_phase
from numpyro_ebm.infer import gibbs
from numpyro_ebm.infer.estimators import ParallelTempering

__all__ = [
    "ACTIONS",
    "QUANTITIES",
    "ChainTrace",
    "MixingError",
    "MixingReport",
    "MixingWarning",
    "Monitor",
    "Summaries",
    "diagnose",
    "diagnose_svi",
    "grow_chains",
    "plot_autocorr",
    "plot_rank",
    "plot_samples_as_images",
    "plot_swap_ladder",
    "plot_trace",
    "report",
    "summaries",
    "to_arviz",
    "trace_estimator",
    "trace_gibbs",
]

#: The per-chain scalars every sampler and estimator records.
QUANTITIES = ("energy", "mean_activation")

#: What :class:`Monitor` can do when the chains mix poorly.
ACTIONS = ("warn", "raise", "add_sweeps", "add_chains")


class MixingWarning(UserWarning):
    """Issued by :class:`Monitor` (``action="warn"``) when the chains mix poorly."""


class MixingError(RuntimeError):
    """Raised by :class:`Monitor` (``action="raise"``) when the chains mix poorly.

    Attributes
    ----------
    report : MixingReport
        The failing diagnosis.
    distribution : EnergyBasedDistribution
        The model at the time of the diagnosis.
    history : FitHistory
        The training history, the failing diagnosis included.
    epoch : int
        Epochs completed.
    """

    def __init__(self, message: str, report, distribution, history, epoch: int):
        super().__init__(message)
        self.report = report
        self.distribution = distribution
        self.history = history
        self.epoch = epoch


# ---------------------------------------------------------------------- summaries
class Summaries(NamedTuple):
    """Per-chain scalars of configurations ``x``, each of shape ``chains + batch_shape``.

    energy : ``E(x)`` (the free energy for RBMs: hidden units summed out).
    mean_activation : mean of the units over the event axes (the magnetization of Ising
        spins, the mean visible activation of RBMs).
    """

    energy: jax.Array
    mean_activation: jax.Array


def summaries(distribution: EnergyBasedDistribution, x: Any) -> Summaries:
    """The cheap per-chain scalars of configurations ``x`` (jittable).

    Parameters
    ----------
    distribution : EnergyBasedDistribution
    x : ArrayLike
        Configurations, shape ``chains + batch_shape + event_shape``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_ebm import IsingLattice
    >>> ising = IsingLattice((4, 4), coupling=0.5)
    >>> s = summaries(ising, jnp.stack([jnp.ones((4, 4)), -jnp.ones((4, 4))]))
    >>> s.energy.tolist(), s.mean_activation.tolist()
    ([-16.0, -16.0], [1.0, -1.0])
    """
    x = jnp.asarray(x, distribution.chain_dtype)
    return Summaries(distribution.energy(x), gibbs.mean_activation(distribution, x))


class ChainTrace(NamedTuple):
    """Per-chain summaries over draws, in ArviZ's ``(chain, draw)`` layout.

    energy, mean_activation : ``(num_chains, num_draws) + batch_shape``.
    accept_prob, diverging : same layout, or ``None`` when the sampler has no
        accept/reject step (block Gibbs).
    swap_rate : ``(num_draws, num_pairs)`` mean swap acceptance of each adjacent temperature
        pair at each step, NaN for pairs not attempted (parallel tempering), or ``None``.
    """

    energy: jax.Array
    mean_activation: jax.Array
    accept_prob: jax.Array | None = None
    diverging: jax.Array | None = None
    swap_rate: jax.Array | None = None


def _chain_major(a):
    return None if a is None else jnp.swapaxes(a, 0, 1)


@partial(jax.jit, static_argnames=("num_draws", "num_sweeps"))
def _trace_gibbs(rng_key, distribution, position, beta, num_draws, num_sweeps):
    def body(state, key):
        state, info = gibbs.kernel(key, state, distribution, beta=beta, num_sweeps=num_sweeps)
        return state, (info.energy, info.mean_activation)

    state, (energy, activation) = lax.scan(
        body, gibbs.init(distribution, position), random.split(rng_key, num_draws)
    )
    return ChainTrace(_chain_major(energy), _chain_major(activation)), state


def trace_gibbs(
    rng_key: jax.Array,
    distribution: EnergyBasedDistribution,
    position: Any,
    num_draws: int,
    *,
    num_sweeps: int = 1,
    beta: Any = 1.0,
) -> tuple[ChainTrace, gibbs.GibbsState]:
    """Run block-Gibbs chains and keep only their per-chain summaries.

    One compiled ``lax.scan`` of :func:`numpyro_ebm.infer.gibbs.kernel`; memory is
    ``O(num_chains * num_draws)``, not the states.

    Parameters
    ----------
    rng_key : jax.Array
    distribution : EnergyBasedDistribution
    position : ArrayLike
        Initial configurations, ``(num_chains,) + batch_shape + event_shape`` (at least 4
        chains, started apart, for a meaningful R-hat).
    num_draws : int
        Recorded draws per chain (static).
    num_sweeps : int
        Sweeps between draws (static).
    beta : ArrayLike
        Inverse temperature.

    Returns
    -------
    trace : ChainTrace
        ``(num_chains, num_draws) + batch_shape`` summaries.
    state : GibbsState
        The final chains.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import IsingLattice
    >>> ising = IsingLattice((4, 4), coupling=0.1)
    >>> start = ising.random_state(jax.random.key(0), (4,))
    >>> trace, state = trace_gibbs(jax.random.key(1), ising, start, num_draws=50)
    >>> trace.energy.shape, state.position.shape
    ((4, 50), (4, 4, 4))
    """
    num_draws = _positive("num_draws", num_draws)
    num_sweeps = _positive("num_sweeps", num_sweeps)
    position = distribution._check_value(position)
    expected = distribution.batch_shape + distribution.event_shape
    if position.ndim != len(expected) + 1 or position.shape[1:] != expected:
        raise ValueError(
            f"position must have shape (num_chains,) + batch_shape + event_shape = "
            f"(num_chains,) + {expected}; got shape {position.shape}."
        )
    beta = jnp.asarray(beta, distribution.chain_dtype)
    return _trace_gibbs(rng_key, distribution, position, beta, num_draws, num_sweeps)


@partial(jax.jit, static_argnums=(1,), static_argnames=("num_draws",))
def _trace_estimator(rng_key, estimator, state, distribution, data, num_draws):
    def body(state, key):
        _, state, info = estimator.step(key, state, distribution, data)
        swap = info.swap_rate if info.swap_rate.size else None
        return state, (
            info.chain_energy,
            info.chain_mean_activation,
            info.accept_prob,
            info.diverging,
            swap,
        )

    state, out = lax.scan(body, state, random.split(rng_key, num_draws))
    energy, activation, accept, diverging, swap = out
    trace = ChainTrace(
        _chain_major(energy),
        _chain_major(activation),
        _chain_major(accept),
        _chain_major(diverging),
        swap,
    )
    return trace, state


def trace_estimator(
    rng_key: jax.Array,
    estimator: Any,
    state: Any,
    distribution: EnergyBasedDistribution,
    num_draws: int,
    data: Any = None,
) -> tuple[ChainTrace, Any]:
    """Run ``num_draws`` steps of a negative-phase estimator at fixed parameters, keeping
    the per-chain summaries of its draws.

    Parameters
    ----------
    rng_key : jax.Array
    estimator : CD, PCD, ParallelTempering or compatible
        Its ``step`` must return an :class:`~numpyro_ebm.infer.EstimatorInfo` with the
        per-chain fields (hashable: compiled as a static argument).
    state : EstimatorState
        The chains to diagnose (not modified: the new state is returned).
    distribution : EnergyBasedDistribution
    num_draws : int
    data : ArrayLike, optional
        One data batch, passed to every step (needed by :class:`~numpyro_ebm.infer.CD`,
        whose chains restart at it each step, so its trace shows whether ``k`` sweeps
        forget the start).

    Returns
    -------
    trace : ChainTrace
    state : EstimatorState
        The chains after the steps.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.infer import PCD
    >>> rbm = BernoulliRBM(0.1 * jnp.ones((5, 2)))
    >>> pcd = PCD(num_chains=8)
    >>> state = pcd.init(jax.random.key(0), rbm)
    >>> trace, state = trace_estimator(jax.random.key(1), pcd, state, rbm, num_draws=20)
    >>> trace.energy.shape, trace.accept_prob is None
    ((8, 20), True)
    """
    num_draws = _positive("num_draws", num_draws)
    if data is not None:
        data = jnp.asarray(data, distribution.chain_dtype)
    trace, state = _trace_estimator(
        rng_key, estimator, state, distribution, data, num_draws=num_draws
    )
    if trace.energy is None or trace.mean_activation is None:
        raise ValueError(
            f"estimator {type(estimator).__name__} reports no per-chain summaries: its step "
            "must return an EstimatorInfo with chain_energy and chain_mean_activation (see "
            "numpyro_ebm.infer.EstimatorInfo)."
        )
    return trace, state


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


# ---------------------------------------------------------------------- ArviZ
def _arviz():
    import arviz as az

    return az


def _arviz_major() -> int:
    return int(_arviz().__version__.split(".")[0])


def _from_dict(posterior: dict, sample_stats: dict):
    az = _arviz()
    if _arviz_major() >= 1:  # arviz 1.x: groups in one dict
        groups = {"posterior": posterior}
        if sample_stats:
            groups["sample_stats"] = sample_stats
        return az.from_dict(groups)
    return az.from_dict(posterior=posterior, sample_stats=sample_stats or None)


def _trace_dicts(trace: ChainTrace) -> tuple[dict, dict]:
    posterior = {
        "energy": np.asarray(trace.energy),
        "mean_activation": np.asarray(trace.mean_activation),
    }
    stats = {}
    num_chains, num_draws = posterior["energy"].shape[:2]
    if trace.accept_prob is not None:
        stats["accept_prob"] = np.asarray(trace.accept_prob)
    if trace.diverging is not None:
        stats["diverging"] = np.asarray(trace.diverging, bool)
    if trace.swap_rate is not None:
        swap = np.asarray(trace.swap_rate)
        stats["swap_rate"] = np.broadcast_to(swap, (num_chains, num_draws) + swap.shape[1:])
    return posterior, stats


def to_arviz(data: Any, sample_stats: dict | None = None):
    """Convert diagnostics to ``arviz.InferenceData`` with ``(chain, draw)`` dimensions.

    Parameters
    ----------
    data : ChainTrace, dict, numpyro MCMC or arviz.InferenceData
        - a :class:`ChainTrace` (from :func:`trace_gibbs`, :func:`trace_estimator`): the
          summaries become the ``posterior`` group; acceptance, divergences and swap rates
          (broadcast over chains: the swap rate of a step is a mean over ladders) the
          ``sample_stats`` group;
        - a dict of arrays shaped ``(chain, draw, ...)``: the ``posterior`` group;
        - a ``numpyro.infer.MCMC`` that ran (for example with
          :class:`~numpyro_ebm.infer.BlockGibbs`): ``arviz.from_numpyro``;
        - ``InferenceData``: returned as is.
    sample_stats : dict, optional
        Extra ``(chain, draw, ...)`` arrays for the ``sample_stats`` group (dict input).

    Examples
    --------
    >>> import numpy as np
    >>> idata = to_arviz({"energy": np.zeros((4, 10))})
    >>> dict(idata.posterior.sizes)
    {'chain': 4, 'draw': 10}
    """
    az = _arviz()
    if isinstance(data, az.InferenceData):
        return data
    if isinstance(data, ChainTrace):
        posterior, stats = _trace_dicts(data)
        stats.update(sample_stats or {})
        return _from_dict(posterior, stats)
    if isinstance(data, dict):
        posterior = {k: _as_chain_draw(k, v) for k, v in data.items()}
        stats = {k: _as_chain_draw(k, v) for k, v in (sample_stats or {}).items()}
        return _from_dict(posterior, stats)
    if hasattr(data, "get_samples") and hasattr(data, "sampler"):
        return az.from_numpyro(data)
    raise ValueError(
        "data must be a ChainTrace, a dict of (chain, draw, ...) arrays, a numpyro MCMC that "
        f"ran, or an arviz.InferenceData; got {type(data).__name__}."
    )


def _as_chain_draw(name: str, value: Any) -> np.ndarray:
    value = np.asarray(value)
    if value.ndim < 2:
        raise ValueError(
            f"{name} must have shape (chain, draw, ...); got shape {value.shape}. For a single "
            f"chain use value[None]."
        )
    return value


# ---------------------------------------------------------------------- report
@dataclasses.dataclass(frozen=True)
class MixingReport:
    """Mixing diagnostics of ``(chain, draw)`` traces, one entry per quantity.

    For a quantity with extra dimensions (a batched model, or the units of an MCMC site)
    each entry is the worst over its elements: the largest R-hat, MCSE and
    autocorrelation time, the smallest effective sample sizes.

    Attributes
    ----------
    quantities : tuple of str
    rhat : ``(Q,)`` rank-normalized split R-hat (``arviz.rhat``, the max of the bulk and
        the folded-tail versions); NaN when undefined (every chain constant).
    ess_bulk, ess_tail : ``(Q,)`` effective sample sizes (``arviz.ess``); NaN when every
        chain is stuck.
    mcse_mean : ``(Q,)`` Monte Carlo standard error of the mean (``arviz.mcse``).
    autocorr_time : ``(Q,)`` integrated autocorrelation time in draws,
        ``num_chains * num_draws / ess_bulk``.
    num_stuck : ``(Q,)`` chains whose quantity never changed over the draws.
    num_chains, num_draws : int
    rhat_threshold : float
    min_chains : int
    min_ess : float or None
    """

    quantities: tuple[str, ...]
    rhat: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    mcse_mean: np.ndarray
    autocorr_time: np.ndarray
    num_stuck: np.ndarray
    num_chains: int
    num_draws: int
    rhat_threshold: float = 1.01
    min_chains: int = 4
    min_ess: float | None = None

    @property
    def problems(self) -> list[str]:
        """Why the report fails (empty when it passes)."""
        out = []
        if self.num_chains < self.min_chains:
            out.append(
                f"only {self.num_chains} chains; R-hat needs at least {self.min_chains} "
                "chains started apart"
            )
        for i, name in enumerate(self.quantities):
            if self.num_stuck[i]:
                out.append(
                    f"{name}: {int(self.num_stuck[i])} of {self.num_chains} chains stuck (the "
                    "value never changed)"
                )
            if not np.isfinite(self.rhat[i]):
                out.append(f"{name}: R-hat undefined ({self.rhat[i]})")
            elif self.rhat[i] >= self.rhat_threshold:
                out.append(f"{name}: R-hat {self.rhat[i]:.4g} >= threshold {self.rhat_threshold:g}")
            if self.min_ess is not None and not self.ess_bulk[i] >= self.min_ess:
                out.append(f"{name}: bulk ESS {self.ess_bulk[i]:.4g} < {self.min_ess:g}")
        return out

    @property
    def ok(self) -> bool:
        """Whether the chains pass: enough chains, no stuck chain, every R-hat finite and
        below the threshold (and every bulk ESS at least ``min_ess`` when set)."""
        return not self.problems

    @property
    def max_rhat(self) -> float:
        """The largest R-hat (NaN-aware: NaN if any is NaN)."""
        return float(np.max(self.rhat)) if len(self.rhat) else float("nan")

    def __str__(self) -> str:
        header = ("quantity", "r_hat", "ess_bulk", "ess_tail", "mcse_mean", "tau", "stuck")
        rows = [header]
        for i, name in enumerate(self.quantities):
            rows.append(
                (
                    name,
                    f"{self.rhat[i]:.4f}",
                    f"{self.ess_bulk[i]:.0f}",
                    f"{self.ess_tail[i]:.0f}",
                    f"{self.mcse_mean[i]:.3g}",
                    f"{self.autocorr_time[i]:.3g}",
                    f"{int(self.num_stuck[i])}",
                )
            )
        widths = [max(len(r[j]) for r in rows) for j in range(len(header))]
        lines = [
            "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w)
                for j, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in rows
        ]
        verdict = "OK" if self.ok else "FAIL: " + "; ".join(self.problems)
        lines.append(
            f"{self.num_chains} chains x {self.num_draws} draws, R-hat threshold "
            f"{self.rhat_threshold:g}: {verdict}"
        )
        return "\n".join(lines)


def _variables(data: Any, var_names, group: str = "posterior") -> dict[str, np.ndarray]:
    az = _arviz()
    if isinstance(data, ChainTrace):
        arrays, _ = _trace_dicts(data)
    elif isinstance(data, dict):
        arrays = {k: _as_chain_draw(k, v) for k, v in data.items()}
    else:
        idata = data if isinstance(data, az.InferenceData) else to_arviz(data)
        if group not in idata.groups():
            raise ValueError(f"group {group!r} is not among {idata.groups()}.")
        arrays = {}
        for name, var in idata[group].data_vars.items():
            dims = ("chain", "draw") + tuple(d for d in var.dims if d not in ("chain", "draw"))
            arrays[name] = np.asarray(var.transpose(*dims).values)
    if var_names is not None:
        var_names = (var_names,) if isinstance(var_names, str) else tuple(var_names)
        missing = [v for v in var_names if v not in arrays]
        if missing:
            raise ValueError(f"var_names {missing} are not among the quantities {sorted(arrays)}.")
        arrays = {v: arrays[v] for v in var_names}
    return arrays


def _array_stats():
    """``(rhat, ess, mcse)`` on ``(chain, draw)`` numpy arrays: ``arviz`` 0.x functions, or
    ``arviz_stats.base.array_stats`` under arviz 1.x (same algorithms)."""
    if _arviz_major() >= 1:
        from arviz_stats.base import array_stats

        return array_stats.rhat, array_stats.ess, array_stats.mcse
    az = _arviz()
    return az.rhat, az.ess, az.mcse


def _diagnose_array(a: np.ndarray) -> tuple[float, float, float, float, float, int]:
    rhat_fn, ess_fn, mcse_fn = _array_stats()
    a = np.asarray(a, np.float64)
    num_chains, num_draws = a.shape[:2]
    flat = a.reshape(num_chains, num_draws, -1)
    constant = np.all(flat == flat[:, :1], axis=(1, 2))  # chain never changed
    num_stuck = int(np.sum(constant))
    rhats, bulks, tails, mcses = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 of constant traces: NaN
        for k in range(flat.shape[-1]):
            x = flat[:, :, k]
            rhats.append(float(rhat_fn(x, method="rank")))
            bulks.append(float(ess_fn(x, method="bulk")))
            tails.append(float(ess_fn(x, method="tail")))
            mcses.append(float(mcse_fn(x, method="mean")))
    rhat = float(np.max(rhats))  # NaN-propagating: an undefined R-hat is not hidden
    if num_stuck == num_chains:
        # arviz reports ESS = chains * draws for constant traces; nothing was explored.
        return rhat, math.nan, math.nan, math.nan, math.nan, num_stuck
    ess_bulk, ess_tail = float(np.min(bulks)), float(np.min(tails))
    tau = num_chains * num_draws / ess_bulk
    return rhat, ess_bulk, ess_tail, float(np.max(mcses)), tau, num_stuck


def report(
    data: Any,
    *,
    var_names: str | list[str] | None = None,
    group: str = "posterior",
    rhat_threshold: float = 1.01,
    min_chains: int = 4,
    min_ess: float | None = None,
) -> MixingReport:
    """Mixing report of ``(chain, draw)`` traces: R-hat, ESS, MCSE, autocorrelation time,
    stuck chains and a verdict.

    Parameters
    ----------
    data : ChainTrace, dict, numpyro MCMC or arviz.InferenceData
        As for :func:`to_arviz` (its ``posterior`` group is reported).
    var_names : str or list of str, optional
        Quantities to report; default all.
    group : str
        For InferenceData (and MCMC) input, the group to report (default ``"posterior"``;
        ``"sample_stats"`` for the ``energy`` and ``mean_activation`` extra fields of
        :class:`~numpyro_ebm.infer.BlockGibbs`).
    rhat_threshold : float
        The report passes only if every R-hat is below it (default 1.01, Vehtari et al.
        2021; 1.05 is a common looser choice for short runs).
    min_chains : int
        Fewer chains fail the report (default 4): R-hat compares chains, and a couple of
        chains can agree by chance while all missing a mode.
    min_ess : float, optional
        Also fail when a bulk ESS is below this.

    Returns
    -------
    MixingReport
        ``str(report)`` is a table; ``report.ok`` the verdict.

    Notes
    -----
    A chain whose quantity never changes is *stuck*: its within-chain variance is zero, so
    R-hat and ESS are 0/0 or meaningless. Such chains are counted in ``num_stuck`` and fail
    the report; when every chain is stuck the ESS, MCSE and autocorrelation time are NaN
    (ArviZ would report the full sample size). Binary traces are handled by ArviZ's
    rank normalization with average ranks for ties.

    Examples
    --------
    >>> import numpy as np
    >>> draws = np.random.default_rng(0).normal(size=(4, 500))
    >>> r = report({"x": draws})
    >>> r.ok, r.num_stuck.tolist()
    (True, [0])
    >>> stuck = draws.copy(); stuck[0] = 1.0
    >>> r = report({"x": stuck})
    >>> r.ok, r.num_stuck.tolist()
    (False, [1])
    """
    if not rhat_threshold > 1.0:
        raise ValueError(f"rhat_threshold must be above 1 (e.g. 1.01); got {rhat_threshold}.")
    min_chains = _positive("min_chains", min_chains)
    arrays = _variables(data, var_names, group)
    if not arrays:
        raise ValueError("data holds no quantities to report.")
    shapes = {a.shape[:2] for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"every quantity must have the same (chain, draw) sizes; got {shapes}.")
    num_chains, num_draws = shapes.pop()
    if num_draws < 4:
        raise ValueError(f"R-hat and ESS need at least 4 draws per chain; got {num_draws}.")
    rows = [_diagnose_array(a) for a in arrays.values()]
    cols = [np.asarray(c) for c in zip(*rows, strict=True)]
    return MixingReport(
        tuple(arrays),
        cols[0],
        cols[1],
        cols[2],
        cols[3],
        cols[4],
        cols[5].astype(np.int64),
        int(num_chains),
        int(num_draws),
        float(rhat_threshold),
        min_chains,
        None if min_ess is None else float(min_ess),
    )


def diagnose(
    rng_key: jax.Array,
    estimator: Any,
    state: Any,
    distribution: EnergyBasedDistribution,
    data: Any = None,
    *,
    num_draws: int = 100,
    rhat_threshold: float = 1.01,
    min_chains: int = 4,
) -> tuple[MixingReport, ChainTrace]:
    """Diagnose an estimator's chains: :func:`trace_estimator` on a copy of them for
    ``num_draws`` steps at fixed parameters, then :func:`report` on energy and mean
    activation. The chains passed in are not advanced.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.infer import PCD
    >>> rbm = BernoulliRBM(0.1 * jnp.ones((5, 2)))
    >>> pcd = PCD(num_chains=8)
    >>> state = pcd.init(jax.random.key(0), rbm)
    >>> result, trace = diagnose(jax.random.key(1), pcd, state, rbm, num_draws=200)
    >>> result.quantities, result.num_chains
    (('energy', 'mean_activation'), 8)
    """
    trace, _ = trace_estimator(rng_key, estimator, state, distribution, num_draws, data)
    return (
        report(trace, rhat_threshold=rhat_threshold, min_chains=min_chains),
        trace,
    )


# ---------------------------------------------------------------------- monitor
@dataclasses.dataclass(frozen=True)
class Monitor:
    """Diagnose the negative-phase chains during :func:`numpyro_ebm.train.fit`.

    Every ``every`` epochs, ``fit`` runs the estimator for ``num_draws`` steps on a copy of
    its chains at the current parameters (:func:`diagnose`; training itself is unaffected
    and stays reproducible) and computes R-hat of the chains' energy and mean activation.
    The results are kept in the history (``FitHistory.monitor_*``). When the report fails
    (R-hat at or above ``rhat_threshold``, a stuck chain, or too few chains) ``action``
    runs:

    - ``"warn"``: a :class:`MixingWarning`;
    - ``"raise"``: a :class:`MixingError` (after the epoch is recorded and checkpointed);
    - ``"add_sweeps"``: double the estimator's ``num_sweeps`` (up to ``max_num_sweeps``,
      then warn);
    - ``"add_chains"``: double its ``num_chains`` (up to ``max_num_chains``, then warn);
      the new chains start as the estimator starts its chains (at random data examples for
      :class:`~numpyro_ebm.infer.PCD` with ``init_from_data``, else at random states), the
      old ones continue.

    A changed estimator is recorded (``monitor_num_sweeps``, ``monitor_num_chains``), so a
    run resumed from a checkpoint continues with it. Each diagnosis is one compiled
    ``lax.scan`` plus one transfer to the host (ArviZ works on numpy), between epochs.

    Parameters
    ----------
    every : int
        Epochs between diagnoses (default 10).
    num_draws : int
        Estimator steps per diagnosis (default 100).
    rhat_threshold : float
        Default 1.05: the parameters move between diagnoses, so short diagnostic runs are
        held to a looser bound than the 1.01 of a final analysis.
    action : {"warn", "raise", "add_sweeps", "add_chains"}
    min_chains : int
        Fewer chains fail the diagnosis (default 4).
    max_num_sweeps, max_num_chains : int
        Caps of the growing actions.

    Examples
    --------
    .. code-block:: python

        model, history = fit(rng_key, model, data, monitor=Monitor(every=10, action="warn"))
        history.monitor_rhat  # (num_diagnoses, 2): energy, mean activation

    >>> from numpyro_ebm.diagnostics import Monitor
    >>> from numpyro_ebm.infer import PCD
    >>> monitor = Monitor(every=5, num_draws=50, action="add_sweeps")
    >>> monitor.check_estimator(PCD())  # PCD has num_sweeps to double
    >>> monitor.rhat_threshold
    1.05
    """

    every: int = 10
    num_draws: int = 100
    rhat_threshold: float = 1.05
    action: str = "warn"
    min_chains: int = 4
    max_num_sweeps: int = 64
    max_num_chains: int = 4096

    def __post_init__(self):
        for name in ("every", "num_draws", "min_chains", "max_num_sweeps", "max_num_chains"):
            _positive(name, getattr(self, name))
        if self.num_draws < 4:
            raise ValueError(f"num_draws must be at least 4; got {self.num_draws}.")
        if not self.rhat_threshold > 1.0:
            raise ValueError(
                f"rhat_threshold must be above 1 (e.g. 1.05); got {self.rhat_threshold}."
            )
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}; got {self.action!r}.")

    def check_estimator(self, estimator: Any) -> None:
        """Refuse estimators the action cannot change (``ValueError``)."""
        field = {"add_sweeps": "num_sweeps", "add_chains": "num_chains"}.get(self.action)
        if field is None:
            return
        if not (dataclasses.is_dataclass(estimator) and hasattr(estimator, field)):
            raise ValueError(
                f"Monitor(action={self.action!r}) needs an estimator dataclass with a {field} "
                f"field (PCD, ParallelTempering; CD for add_sweeps); got {estimator!r}."
            )
        if (
            self.action == "add_chains"
            and not hasattr(estimator, "init_from_data")
            and not (isinstance(estimator, ParallelTempering))
        ):
            raise ValueError(
                "Monitor(action='add_chains') grows persistent chains: use PCD or "
                f"ParallelTempering; got {type(estimator).__name__}."
            )

    def grow(self, rng_key, estimator, state, distribution, data):
        """Apply a growing action: ``(estimator, state, taken)`` with ``taken`` False when
        the cap is reached (nothing changes)."""
        if self.action == "add_sweeps":
            if 2 * estimator.num_sweeps > self.max_num_sweeps:
                return estimator, state, False
            return dataclasses.replace(estimator, num_sweeps=2 * estimator.num_sweeps), state, True
        if 2 * estimator.num_chains > self.max_num_chains:
            return estimator, state, False
        new = dataclasses.replace(estimator, num_chains=2 * estimator.num_chains)
        return new, grow_chains(rng_key, estimator, new, state, distribution, data), True


def grow_chains(rng_key, old_estimator, new_estimator, state, distribution, data=None):
    """The state of ``new_estimator`` (more chains): the chains of ``state`` first, then new
    ones as ``new_estimator.init`` starts them."""
    fresh = new_estimator.init(rng_key, distribution, data)
    axis = 1 if isinstance(old_estimator, ParallelTempering) else 0
    n = old_estimator.num_chains

    def merge(old, new):
        tail = lax.slice_in_dim(new, n, new.shape[axis], axis=axis)
        return jnp.concatenate([old, tail], axis=axis)

    return state._replace(chains=jax.tree.map(merge, state.chains, fresh.chains))


# ---------------------------------------------------------------------- SVI
def _find_negative_phase(fn):
    while fn is not None:
        if isinstance(fn, negative_phase):
            return fn
        fn = getattr(fn, "fn", None)
    return None


def diagnose_svi(
    rng_key: jax.Array,
    svi: Any,
    svi_state: Any,
    *args: Any,
    site: str,
    num_draws: int = 100,
    rhat_threshold: float = 1.05,
    min_chains: int = 4,
    **kwargs: Any,
) -> tuple[MixingReport, ChainTrace]:
    """Diagnose the persistent chains that :class:`~numpyro_ebm.handlers.negative_phase`
    keeps in ``svi_state.mutable_state`` for sample site ``site``.

    The model is run once (without the handler) at the current parameters to get the
    site's distribution; then :func:`diagnose` runs the estimator on a copy of the chains.
    Call it every few hundred ``svi.update`` steps; the SVI state is not changed.

    Parameters
    ----------
    rng_key : jax.Array
    svi : numpyro.infer.SVI
        Whose model is wrapped in :class:`~numpyro_ebm.handlers.negative_phase` with a
        persistent estimator.
    svi_state : SVIState
    *args, **kwargs
        The model's arguments.
    site : str
        The observed energy-based site.
    num_draws, rhat_threshold, min_chains
        As for :func:`diagnose` (``rhat_threshold`` defaults to the monitor's 1.05).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpyro, optax
    >>> from numpyro.infer import SVI, Trace_ELBO
    >>> from numpyro_ebm import BernoulliRBM
    >>> from numpyro_ebm.handlers import negative_phase
    >>> from numpyro_ebm.infer import PCD
    >>> def model(data):
    ...     W = numpyro.param("W", jnp.zeros((4, 2)))
    ...     with numpyro.plate("data", data.shape[0]):
    ...         numpyro.sample("v", BernoulliRBM(W), obs=data)
    >>> data = jnp.zeros((8, 4), jnp.int32)
    >>> svi = SVI(negative_phase(model, estimator=PCD(num_chains=8)), lambda data: None,
    ...           optax.adam(0.01), Trace_ELBO())
    >>> state = svi.init(jax.random.key(0), data)
    >>> result, _ = diagnose_svi(jax.random.key(1), svi, state, data, site="v")
    >>> result.num_chains
    8
    """
    handler = _find_negative_phase(svi.model)
    if handler is None:
        raise ValueError(
            "svi.model is not wrapped in numpyro_ebm.handlers.negative_phase; wrap the model, "
            "e.g. SVI(negative_phase(model, estimator=PCD()), guide, ...)."
        )
    holder = (svi_state.mutable_state or {}).get(f"{site}_negative_phase")
    if holder is None:
        raise ValueError(
            f"svi_state holds no persistent chains for site {site!r} (run svi.init first, and "
            "use a persistent estimator such as PCD; CD keeps no chains)."
        )
    params = svi.get_params(svi_state)
    key_model, key_run = random.split(rng_key)
    seeded = handlers.seed(handlers.substitute(handler.fn, data=params), key_model)
    model_trace = handlers.trace(seeded).get_trace(*args, **kwargs)
    if site not in model_trace:
        raise ValueError(f"site {site!r} is not a sample site of the model.")
    distribution = _energy_based_base(model_trace[site]["fn"])
    if distribution is None:
        raise ValueError(f"site {site!r} is not an energy-based sample site.")
    data = _examples(site, distribution, model_trace[site]["value"])
    frozen = jax.tree.map(lax.stop_gradient, distribution)
    return diagnose(
        key_run,
        handler.estimator,
        holder["estimator_state"],
        frozen,
        data,
        num_draws=num_draws,
        rhat_threshold=rhat_threshold,
        min_chains=min_chains,
    )


# ---------------------------------------------------------------------- plots
def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plots need matplotlib: pip install 'numpyro-ebm[examples]' (or matplotlib)."
        ) from None
    return plt


def plot_trace(data: Any, var_names=None, **kwargs):
    """Trace plot (``arviz.plot_trace``) of a :class:`ChainTrace`, dict, MCMC or
    InferenceData; returns ArviZ's matplotlib axes."""
    _pyplot()
    return _arviz().plot_trace(to_arviz(data), var_names=var_names, **kwargs)


def plot_rank(data: Any, var_names=None, **kwargs):
    """Rank plot (``arviz.plot_rank``): per-chain histograms of the pooled ranks, flat when
    the chains mix; returns the axes."""
    _pyplot()
    return _arviz().plot_rank(to_arviz(data), var_names=var_names, **kwargs)


def plot_autocorr(data: Any, var_names=None, **kwargs):
    """Autocorrelation plot (``arviz.plot_autocorr``); returns the axes."""
    _pyplot()
    return _arviz().plot_autocorr(to_arviz(data), var_names=var_names, **kwargs)


def plot_samples_as_images(x: Any, shape: tuple[int, int], *, num_columns: int = 8, ax=None):
    """Show configurations as a grid of images (e.g. binarized digits).

    Parameters
    ----------
    x : ArrayLike
        ``(num_samples, num_units)`` (or any leading shape, flattened) with
        ``num_units == prod(shape)``.
    shape : (int, int)
        Image height and width.
    num_columns : int
        Images per row.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    plt = _pyplot()
    height, width = (int(s) for s in shape)
    x = np.asarray(x, np.float64)
    if x.size % (height * width):
        raise ValueError(
            f"x must hold images of shape {shape} ({height * width} units each); got shape "
            f"{x.shape}."
        )
    images = x.reshape(-1, height, width)
    n = images.shape[0]
    cols = min(_positive("num_columns", num_columns), n)
    rows = math.ceil(n / cols)
    grid = np.full((rows * (height + 1) - 1, cols * (width + 1) - 1), np.nan)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[
            r * (height + 1) : r * (height + 1) + height, c * (width + 1) : c * (width + 1) + width
        ] = image
    if ax is None:
        _, ax = plt.subplots(figsize=(cols, rows))
    ax.imshow(grid, cmap="gray_r", interpolation="nearest")
    ax.set_axis_off()
    return ax


def plot_swap_ladder(betas: Any, swap_rates: Any, *, ax=None):
    """The swap-rate ladder of parallel tempering: acceptance of each adjacent pair against
    its inverse temperatures. A pair with a rate near 0 cuts the ladder (replicas cannot
    pass it): add temperatures there.

    Parameters
    ----------
    betas : ArrayLike
        ``(M,)`` inverse temperatures (``ParallelTempering.ladder()``).
    swap_rates : ArrayLike
        ``(M - 1,)`` rates (``ParallelTempering.swap_rates(state)`` or a row of
        ``FitHistory.swap_rate``).

    Returns
    -------
    matplotlib.axes.Axes
    """
    plt = _pyplot()
    betas = np.asarray(betas, np.float64)
    swap_rates = np.asarray(swap_rates, np.float64)
    if betas.ndim != 1 or swap_rates.shape != (betas.shape[0] - 1,):
        raise ValueError(
            f"swap_rates must have shape (len(betas) - 1,) = ({betas.shape[0] - 1},); got "
            f"betas {betas.shape} and swap_rates {swap_rates.shape}."
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    mid = np.sqrt(betas[:-1] * betas[1:])
    ax.plot(mid, swap_rates, "o-")
    for b in betas:
        ax.axvline(b, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("inverse temperature of the pair (geometric mean)")
    ax.set_ylabel("swap acceptance")
    return ax
