r"""HMC on the Gaussian-integral relaxation of a binary pairwise model.

The Gaussian integral trick (Zhang, Sutton, Storkey & Ghahramani 2012) turns a ``{0, 1}``
Boltzmann machine

.. math::

    p(s) \propto \exp\big(\tfrac{1}{2} s^\top W s + a^\top s\big)

into a continuous density HMC can sample, from which the discrete state is recovered
exactly. With a diagonal shift ``D = d I`` such that ``A = W + D`` is positive definite,
``s_i^2 = s_i`` gives ``p(s) \propto \exp(\tfrac12 s^\top A s + b^\top s)``,
``b = a - d/2``. With ``A = L L^\top`` and the auxiliary variable
``y \mid s \sim \mathcal{N}(L^\top s, I)`` the joint is

.. math::

    p(s, y) \propto \exp\big(-\tfrac{1}{2}\lVert y\rVert^2 + s^\top (L y + b)\big),
    \qquad
    p(y) \propto e^{-\lVert y\rVert^2/2} \prod_i \big(1 + e^{(L y)_i + b_i}\big),
    \qquad
    p(s \mid y) = \prod_i \operatorname{Bernoulli}\big(s_i;\ \sigma((L y)_i + b_i)\big).

(In the unwhitened variable ``x = L y`` this is ``x | s ~ N(A s, A)``; ``y = L^{-1} x``
has mean ``L^{-1} A s = L^\top s`` and covariance ``L^{-1} A L^{-\top} = I``.)

One :meth:`RelaxedHMC.step` of a chain whose discrete state is ``s`` is

1. ``y ~ p(y | s)`` exactly, under the *current* parameters and temperature (for RBMs the
   hidden layer is first redrawn exactly from ``p(h | v)``);
2. one HMC trajectory on ``p(y)`` (leapfrog, identity mass matrix, Metropolis correction on
   the exact relaxed density);
3. ``s ~ p(s | y)`` exactly.

If ``s ~ p(s)`` then step 1 gives ``y ~ p(y)``, step 2 keeps it so, and step 3 gives
``s' ~ p(s)``: the discrete marginal is left exactly invariant. The step is a Markov kernel on
the model's position alone (``y`` and the hidden layer are re-derived each time), so the
estimators may change the parameters between steps (PCD) or exchange replicas between
temperatures (parallel tempering) without invalidating it. Steps 1 and 3 are also a
data-augmentation Gibbs move on ``y``, which keeps the chain ergodic even where a fixed
trajectory length would make HMC alone periodic.

Supported families: :class:`~numpyro_ebm.distributions.boltzmann.BoltzmannMachine`,
:class:`~numpyro_ebm.distributions.boltzmann.IsingModel` and small
:class:`~numpyro_ebm.distributions.boltzmann.IsingLattice` (through their ``{0, 1}`` form
``x = (s + 1) / 2``: ``W = 4 J``, ``a = 2 h - 2 J 1``), and
:class:`~numpyro_ebm.distributions.rbm.BernoulliRBM` (the Boltzmann machine over ``(v, h)``
with the bipartite couplings ``[[0, W], [W^T, 0]]``, whose eigenvalues are ``+/-`` the
singular values of ``W``; its Cholesky factor is built blockwise, so a step costs
``O(n_v n_h)`` per chain and leapfrog step rather than ``O((n_v + n_h)^2)``).

Temperature. At inverse temperature ``beta`` the tempered model ``exp(-beta E)`` is relaxed:
couplings and fields are scaled by ``beta`` (for RBMs the *joint* energy is tempered, the
distribution :meth:`~numpyro_ebm.distributions.rbm.BernoulliRBM.tempered_energy` describes).
``beta`` broadcasts against ``chains + batch_shape``, so each replica of parallel tempering
gets the relaxation of its own temperature.

Cost. The relaxation depends on the parameters and on ``beta``, so every step recomputes it:
an eigendecomposition of ``W`` (for RBMs, of the Gram matrix of ``W`` over the smaller
layer) and a Cholesky factorization, ``O(n^3)`` (for RBMs ``O(n_v n_h^2 + n_h^3)`` with
``n_h`` the smaller layer), once per batch member and distinct temperature, not per chain.
Under PCD the parameters change at every estimator step, so this is paid at every step;
``num_trajectories`` runs several trajectories on one relaxation. A leapfrog step costs two
matrix-vector products per chain.

The shift. A larger ``d`` separates the mixture components ``N(L^T s, I)`` of ``p(y)``
(their squared distance is ``(s - s')^\top A (s - s')``) and slows mixing, so ``d`` is the
smallest safe one: ``d = -\lambda_{\min}(\beta W) + \mathrm{margin}``, with ``margin``
given by ``shift`` (default :data:`DEFAULT_SHIFT_MARGIN`), plus ``8 n \epsilon \rho`` for
the rounding error of the eigenvalues (``\epsilon`` the dtype's machine epsilon, ``\rho``
the spectral radius of ``\beta W``), so that ``A`` stays numerically positive definite.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax, random

from numpyro_ebm.distributions.base import EnergyBasedDistribution, softplus
from numpyro_ebm.distributions.boltzmann import BoltzmannMachine, IsingLattice, IsingModel
from numpyro_ebm.distributions.rbm import BernoulliRBM, expand_beta

__all__ = [
    "DEFAULT_SHIFT_MARGIN",
    "MAX_LATTICE_SITES",
    "Relaxation",
    "RelaxedHMC",
    "RelaxedHMCState",
    "RelaxedLogPartitionResult",
    "relaxation",
    "relaxed_log_partition",
]

#: Default margin of the diagonal shift above ``-lambda_min`` (see the module docstring).
DEFAULT_SHIFT_MARGIN = 0.1

#: Ising lattices with more sites are refused: the relaxation needs their dense couplings
#: and an ``N x N`` Cholesky factorization per step.
MAX_LATTICE_SITES = 1024

_LETTERS = "abcdefghijklmnopqrstuvwx"


# ---------------------------------------------------------------------- linear algebra
def _matvec(matrix: jax.Array, vector: jax.Array, transpose: bool = False) -> jax.Array:
    """``matrix @ vector`` (or ``matrix.T @ vector``) per leading index.

    ``matrix`` is ``P + (r, c)``, ``vector`` is ``S + (c,)`` (``S + (r,)`` when transposed),
    with ``P`` and ``S`` broadcasting; the result is ``broadcast(P, S) + (r,)`` (or ``(c,)``).
    Axes where only one side is larger than 1 become free axes of one ``dot_general``, so
    neither operand is copied along the other's axes (one factor serves all chains).
    """
    p_shape, s_shape = matrix.shape[:-2], vector.shape[:-1]
    nd = max(len(p_shape), len(s_shape))
    matrix = matrix.reshape((1,) * (nd - len(p_shape)) + matrix.shape)
    vector = vector.reshape((1,) * (nd - len(s_shape)) + vector.shape)
    m_sub, v_sub, out_sub, m_drop, v_drop = [], [], [], [], []
    for k in range(nd):
        pk, sk, letter = matrix.shape[k], vector.shape[k], _LETTERS[k]
        out_sub.append(letter)
        if pk == sk:
            m_sub.append(letter)
            v_sub.append(letter)
        elif pk == 1:
            m_drop.append(k)
            v_sub.append(letter)
        elif sk == 1:
            v_drop.append(k)
            m_sub.append(letter)
        else:
            raise ValueError(f"shapes {p_shape} and {s_shape} do not broadcast.")
    matrix = jnp.squeeze(matrix, tuple(m_drop))
    vector = jnp.squeeze(vector, tuple(v_drop))
    m_sub += ["z", "y"] if transpose else ["y", "z"]
    spec = f"{''.join(m_sub)},{''.join(v_sub)}z->{''.join(out_sub)}y"
    return jnp.einsum(spec, matrix, vector)


def _symmetric_part(couplings: jax.Array) -> jax.Array:
    """The symmetric, zero-diagonal part of ``couplings`` (what the energy uses)."""
    j = 0.5 * (couplings + jnp.swapaxes(couplings, -1, -2))
    return jnp.where(jnp.eye(j.shape[-1], dtype=bool), jnp.zeros((), j.dtype), j)


# ---------------------------------------------------------------------- relaxation
class Relaxation(NamedTuple):
    r"""The whitened Gaussian-integral relaxation of a ``{0, 1}`` model at one temperature.

    ``A = L L^T`` is ``beta W + d I``. For a dense Boltzmann machine ``cholesky`` is ``L``
    and ``cross`` is ``None``. For the bipartite couplings of an RBM, ordered as
    ``(first, second)`` layers with ``beta W = [[0, M], [M^T, 0]]``,

    .. math::

        L = \begin{pmatrix} \sqrt{d}\, I & 0 \\ M^\top / \sqrt{d} & L_S \end{pmatrix},
        \qquad L_S L_S^\top = d I - M^\top M / d,

    ``cross`` is ``M / sqrt(d)`` and ``cholesky`` is ``L_S``. Leading axes ``P`` (batch
    members and temperatures) broadcast against ``chains + batch_shape``.

    shift : ``d``, shape ``P``.
    bias : ``b = beta a - d / 2``, shape ``P + (n,)`` (``n`` relaxed units).
    cholesky : ``L`` (``P + (n, n)``) or ``L_S`` (``P + (q, q)``).
    cross : ``None`` or ``M / sqrt(d)``, ``P + (n - q, q)``.
    """

    shift: jax.Array
    bias: jax.Array
    cholesky: jax.Array
    cross: jax.Array | None

    @property
    def num_units(self) -> int:
        return self.bias.shape[-1]

    def lower(self, y: jax.Array) -> jax.Array:
        """``L y`` for ``y`` of shape ``S + (n,)``."""
        if self.cross is None:
            return _matvec(self.cholesky, y)
        p = self.cross.shape[-2]
        y1, y2 = y[..., :p], y[..., p:]
        first = jnp.sqrt(self.shift)[..., None] * y1
        second = _matvec(self.cross, y1, transpose=True) + _matvec(self.cholesky, y2)
        first = jnp.broadcast_to(first, second.shape[:-1] + first.shape[-1:])
        return jnp.concatenate([first, second], -1)

    def upper(self, s: jax.Array) -> jax.Array:
        """``L^T s`` for ``s`` of shape ``S + (n,)``."""
        if self.cross is None:
            return _matvec(self.cholesky, s, transpose=True)
        p = self.cross.shape[-2]
        s1, s2 = s[..., :p], s[..., p:]
        first = jnp.sqrt(self.shift)[..., None] * s1 + _matvec(self.cross, s2)
        second = _matvec(self.cholesky, s2, transpose=True)
        second = jnp.broadcast_to(second, first.shape[:-1] + second.shape[-1:])
        return jnp.concatenate([first, second], -1)

    def logits(self, y: jax.Array) -> jax.Array:
        """``L y + b``: the log-odds of ``p(s_i = 1 | y)``."""
        return self.lower(y) + self.bias

    def potential(self, y: jax.Array) -> jax.Array:
        r"""``-log p(y)`` up to a constant: ``|y|^2 / 2 - sum_i softplus((L y)_i + b_i)``."""
        return 0.5 * jnp.sum(y * y, -1) - jnp.sum(softplus(self.logits(y)), -1)


def _unsupported(distribution: Any) -> ValueError:
    return ValueError(
        "distribution must be a BoltzmannMachine, an IsingModel (or an IsingLattice of at "
        f"most {MAX_LATTICE_SITES} sites) or a BernoulliRBM for relaxed HMC; got "
        f"{type(distribution).__name__}. Other families (e.g. Potts models, Gaussian-"
        "Bernoulli RBMs, user energies) have no Gaussian-integral relaxation here: sample "
        "them with the default GibbsTransition."
    )


@dataclasses.dataclass(frozen=True)
class _BinaryForm:
    """A supported distribution seen as a ``{0, 1}`` pairwise model over ``n`` relaxed
    units, with the maps between its positions and the relaxed units."""

    distribution: Any
    kind: str  # "dense", "ising" or "rbm"

    # -------------------------------------------------------------- parameters
    def dense_parameters(self) -> tuple[jax.Array, jax.Array]:
        """``(W, a)`` of the ``{0, 1}`` form (dense kinds)."""
        d = self.distribution
        if self.kind == "dense":
            return _symmetric_part(d.couplings), jnp.asarray(d.fields)
        j = _symmetric_part(d.couplings)
        return 4 * j, 2 * d.fields - 2 * jnp.sum(j, -1)

    @property
    def visible_first(self) -> bool:
        """RBMs: whether the visible layer is the first (larger) block of the relaxation."""
        return self.distribution.num_visible >= self.distribution.num_hidden

    @property
    def num_units(self) -> int:
        d = self.distribution
        if self.kind == "rbm":
            return d.num_visible + d.num_hidden
        return math.prod(d.event_shape)

    def relaxation(self, beta: Any, margin: float) -> Relaxation:
        dtype = self.distribution.chain_dtype
        beta = jnp.asarray(beta, dtype)
        eps = float(jnp.finfo(dtype).eps)
        n = self.num_units
        if self.kind == "rbm":
            rbm = self.distribution
            w = rbm.weights.astype(dtype)
            first, second = _broadcast_layers(rbm.visible_bias, rbm.hidden_bias)
            if not self.visible_first:
                first, second, w = second, first, jnp.swapaxes(w, -1, -2)
            # M = beta W (first x second). sigma_max(W)^2 is the top eigenvalue of the
            # (second x second) Gram matrix W^T W, which the Schur complement needs anyway.
            gram = _gram(w)
            sigma_max = jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram)[..., -1], 0.0))
            rho = beta * sigma_max
            shift = rho + margin + 8 * n * eps * rho
            cross = (expand_beta(beta / jnp.sqrt(shift), 2)) * w
            q = w.shape[-1]
            schur = (
                shift[..., None, None] * jnp.eye(q, dtype=dtype)
                - expand_beta(beta**2 / shift, 2) * gram
            )
            cholesky = jnp.linalg.cholesky(schur)
            b_full = jnp.concatenate([first, second], -1).astype(dtype)
            bias = expand_beta(beta) * b_full - 0.5 * shift[..., None]
            return Relaxation(shift, bias, cholesky, cross)
        w, a = self.dense_parameters()
        w, a = w.astype(dtype), a.astype(dtype)
        eig = jnp.linalg.eigvalsh(w)
        lam_min, lam_max = eig[..., 0], eig[..., -1]
        rho = beta * jnp.maximum(-lam_min, lam_max)
        shift = -beta * lam_min + margin + 8 * n * eps * rho
        a_mat = expand_beta(beta, 2) * w + shift[..., None, None] * jnp.eye(n, dtype=dtype)
        cholesky = jnp.linalg.cholesky(a_mat)
        bias = expand_beta(beta) * a - 0.5 * shift[..., None]
        return Relaxation(shift, bias, cholesky, None)

    # -------------------------------------------------------------- positions
    @property
    def num_latent(self) -> int:
        """Units drawn afresh at every step (the hidden layer of RBMs)."""
        return self.distribution.num_hidden if self.kind == "rbm" else 0

    def units_of(self, position: jax.Array, beta: Any, uniform: jax.Array) -> jax.Array:
        """The relaxed ``{0, 1}`` units of ``position``, in the relaxation's order: for RBMs
        ``(v, h)`` (larger layer first) with ``h ~ p_beta(h | v)`` drawn exactly from the
        uniforms ``uniform`` (``... + (num_latent,)``); for Ising models ``(s + 1) / 2``
        over the flattened sites."""
        d = self.distribution
        dtype = d.chain_dtype
        x = jnp.asarray(position).astype(dtype)
        if self.kind == "ising":
            ndim = len(d.event_shape)
            return (x.reshape(x.shape[: x.ndim - ndim] + (self.num_units,)) + 1) / 2
        if self.kind == "dense":
            return x
        beta = jnp.asarray(beta, dtype)
        logits = expand_beta(beta) * d.visible_to_hidden(x).astype(dtype)
        h = (uniform < jax.nn.sigmoid(logits)).astype(dtype)
        x = jnp.broadcast_to(x, h.shape[:-1] + x.shape[-1:])
        return jnp.concatenate([x, h] if self.visible_first else [h, x], -1)

    def position_of(self, units: jax.Array) -> jax.Array:
        """The distribution's configuration from relaxed units (inverse of :meth:`units_of`,
        dropping the hidden layer of RBMs)."""
        d = self.distribution
        if self.kind == "ising":
            return (2 * units - 1).reshape(units.shape[:-1] + d.event_shape)
        if self.kind == "rbm":
            nv = d.num_visible
            return units[..., :nv] if self.visible_first else units[..., units.shape[-1] - nv :]
        return units

    def log_partition_offset(self) -> jax.Array:
        """``log Z`` of the distribution minus ``log Z`` of its ``{0, 1}`` form."""
        d = self.distribution
        if self.kind != "ising":
            return jnp.zeros(d.batch_shape, d.chain_dtype)
        # E_ising(s) = E_binary(x) + c with x = (s + 1) / 2; at s = -1 (x = 0), c = E(-1).
        return -d.energy(-jnp.ones(d.event_shape, d.chain_dtype))


def _broadcast_layers(visible_bias: jax.Array, hidden_bias: jax.Array) -> list[jax.Array]:
    batch = jnp.broadcast_shapes(visible_bias.shape[:-1], hidden_bias.shape[:-1])
    return [
        jnp.broadcast_to(visible_bias, batch + visible_bias.shape[-1:]),
        jnp.broadcast_to(hidden_bias, batch + hidden_bias.shape[-1:]),
    ]


def _gram(cross: jax.Array) -> jax.Array:
    """``C^T C`` per leading index."""
    return jnp.einsum("...pi,...pj->...ij", cross, cross)


def _form_of(distribution: Any) -> _BinaryForm:
    if isinstance(distribution, BoltzmannMachine):
        return _BinaryForm(distribution, "dense")
    if isinstance(distribution, IsingLattice):
        if distribution.num_units > MAX_LATTICE_SITES:
            raise ValueError(
                f"distribution is an IsingLattice with {distribution.num_units} sites; relaxed "
                f"HMC needs its dense couplings and an N x N Cholesky factorization per step, "
                f"so it is limited to {MAX_LATTICE_SITES} sites. Sample large lattices with "
                f"the default GibbsTransition (checkerboard sweeps)."
            )
        return _BinaryForm(distribution, "ising")
    if isinstance(distribution, IsingModel):
        return _BinaryForm(distribution, "ising")
    if isinstance(distribution, BernoulliRBM):
        return _BinaryForm(distribution, "rbm")
    raise _unsupported(distribution)


def _check_margin(shift: Any) -> float:
    if shift is None:
        return DEFAULT_SHIFT_MARGIN
    value = float(shift)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"shift must be None (the default margin {DEFAULT_SHIFT_MARGIN}) or a positive, "
            f"finite margin above -lambda_min(W); got {shift!r}."
        )
    return value


def relaxation(
    distribution: EnergyBasedDistribution, beta: Any = 1.0, *, shift: float | None = None
) -> Relaxation:
    r"""The whitened Gaussian-integral relaxation of ``distribution`` at inverse temperature
    ``beta``.

    For the ``{0, 1}`` form ``p_beta(s) ∝ exp(beta (s.W.s / 2 + a.s))`` of the model (for
    RBMs over ``(v, h)``, the larger layer first), the shift is
    ``d = -lambda_min(beta W) + margin`` and

    .. math::

        -\beta E(s) = \tfrac{1}{2} s^\top A s + b^\top s, \qquad A = \beta W + d I = L L^\top,
        \qquad b = \beta a - d / 2 .

    Parameters
    ----------
    distribution : BoltzmannMachine, IsingModel, IsingLattice or BernoulliRBM
    beta : ArrayLike
        Inverse temperature; broadcasts against ``chains + batch_shape`` (the relaxation's
        leading axes are ``broadcast(beta.shape, batch_shape)``).
    shift : float, optional
        Margin of ``d`` above ``-lambda_min(beta W)`` (default
        :data:`DEFAULT_SHIFT_MARGIN`).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_ebm import BoltzmannMachine
    >>> from numpyro_ebm.infer.relaxed_hmc import relaxation
    >>> bm = BoltzmannMachine(jnp.array([[0.0, 2.0], [2.0, 0.0]]), jnp.array([-1.0, -1.0]))
    >>> rel = relaxation(bm, shift=0.5)  # eigenvalues of W are -2, 2: d = 2.5 (+ rounding)
    >>> round(float(rel.shift), 4), [round(b, 4) for b in rel.bias.tolist()]
    (2.5, [-2.25, -2.25])
    """
    return _form_of(distribution).relaxation(beta, _check_margin(shift))


# ---------------------------------------------------------------------- transition
class RelaxedHMCState(NamedTuple):
    """Chains of :class:`RelaxedHMC`; every leaf has the chain axes first.

    position : the distribution's configurations, ``chains + batch_shape + event_shape`` in
        the chain dtype (RBMs: the visible layer; Ising models: spins).
    y : the whitened relaxed variables of the last step, ``chains + batch_shape + (n,)``
        (``n`` relaxed units; for RBMs ``num_visible + num_hidden``, larger layer first).
    accept_prob : Metropolis acceptance probability of the last step's trajectories
        (averaged over ``num_trajectories``), ``chains + batch_shape`` (0 before the first
        step).
    diverging : whether a trajectory of the last step had an energy error above
        ``max_energy_error`` (or not finite), ``chains + batch_shape``.
    """

    position: jax.Array
    y: jax.Array
    accept_prob: jax.Array
    diverging: jax.Array


@dataclasses.dataclass(frozen=True)
class RelaxedHMC:
    r"""HMC on the Gaussian-integral relaxation, as a transition for the estimators.

    Each :meth:`step` redraws ``y ~ p(y | s)`` exactly under the current parameters and
    ``beta``, runs one HMC trajectory of ``num_leapfrog`` leapfrog steps of size
    ``step_size`` on the relaxed density, and draws ``s ~ p(s | y)`` exactly; see the module
    docstring for the model and why the discrete marginal is left exactly invariant.

    .. math::

        p_\beta(y) \propto e^{-\lVert y\rVert^2/2} \prod_i \big(1 + e^{(L y)_i + b_i}\big),
        \qquad s_i \mid y \sim \operatorname{Bernoulli}\big(\sigma((L y)_i + b_i)\big).

    Parameters
    ----------
    step_size : float
        Leapfrog step size (positive). The Hessian of ``-log p(y)`` lies between
        ``I - A / 4`` and ``I``: trajectories are stable below 2, and strongly coupled
        models (large ``lambda_max(A)``) need smaller steps. The default, with
        ``num_leapfrog=12``, accepted about 90% of trajectories and gave the best ESS per
        gradient among the settings tried on dense 16- and 32-unit machines with couplings
        ``N(0, 2)`` (``benchmarks/relaxed_hmc_vs_gibbs.py``); check ``accept_prob``.
    num_leapfrog : int
        Leapfrog steps per trajectory (each costs two matrix-vector products per chain).
    shift : float, optional
        Margin of the diagonal shift above ``-lambda_min(beta W)`` (default
        :data:`DEFAULT_SHIFT_MARGIN`); larger margins separate the modes of ``p(y)``.
    num_trajectories : int
        Trajectories per :meth:`step` (each preceded by ``y | s`` and followed by
        ``s | y``), sharing one relaxation: the ``O(n^3)`` eigendecomposition and Cholesky
        factorization are paid once per step, so more trajectories per step make each
        cheaper when the parameters change rarely relative to sampling.
    max_energy_error : float
        A trajectory whose energy error exceeds this is reported as diverging (it is
        rejected by the Metropolis step anyway).

    Notes
    -----
    The acceptance probabilities and divergences of the last step are in the chain state
    (:class:`RelaxedHMCState`), e.g. ``estimator_state.chains.accept_prob.mean()``.
    Supported: BoltzmannMachine, IsingModel, IsingLattice (at most
    :data:`MAX_LATTICE_SITES` sites) and BernoulliRBM; other families raise ``ValueError``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import BoltzmannMachine
    >>> from numpyro_ebm.infer import PCD
    >>> from numpyro_ebm.infer.relaxed_hmc import RelaxedHMC
    >>> w = jnp.array([[0.0, 1.0, -1.0], [1.0, 0.0, 0.5], [-1.0, 0.5, 0.0]])
    >>> bm = BoltzmannMachine(w, jnp.zeros(3))
    >>> pcd = PCD(num_chains=16, transition=RelaxedHMC(step_size=0.5, num_leapfrog=5))
    >>> state = pcd.init(jax.random.key(0), bm)
    >>> samples, state, info = jax.jit(pcd.step)(jax.random.key(1), state, bm)
    >>> samples.shape, state.chains.accept_prob.shape
    ((16, 3), (16,))
    """

    step_size: float = 0.5
    num_leapfrog: int = 12
    shift: float | None = None
    num_trajectories: int = 1
    max_energy_error: float = 1000.0

    def __post_init__(self):
        try:
            step_size = float(self.step_size)
        except (TypeError, ValueError):
            step_size = math.nan
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a positive, finite float; got {self.step_size!r}.")
        if int(self.num_leapfrog) != self.num_leapfrog or int(self.num_leapfrog) < 1:
            raise ValueError(f"num_leapfrog must be a positive integer; got {self.num_leapfrog!r}.")
        if int(self.num_trajectories) != self.num_trajectories or int(self.num_trajectories) < 1:
            raise ValueError(
                f"num_trajectories must be a positive integer; got {self.num_trajectories!r}."
            )
        if not float(self.max_energy_error) > 0:
            raise ValueError(f"max_energy_error must be positive; got {self.max_energy_error!r}.")
        _check_margin(self.shift)
        object.__setattr__(self, "step_size", step_size)
        object.__setattr__(self, "num_leapfrog", int(self.num_leapfrog))
        object.__setattr__(self, "num_trajectories", int(self.num_trajectories))

    # -------------------------------------------------------------- transition API
    def init(self, rng_key, distribution, position) -> RelaxedHMCState:
        """Chains at ``position`` (shape ``chains + batch_shape + event_shape``)."""
        _form_of(distribution)  # unsupported families raise here, outside jit
        return _init(self, rng_key, distribution, jnp.asarray(position))

    def _init(self, rng_key, distribution, position) -> RelaxedHMCState:
        form = _form_of(distribution)
        dtype = distribution.chain_dtype
        rel = form.relaxation(1.0, _check_margin(self.shift))
        event_ndim = len(distribution.event_shape)
        chains = jnp.broadcast_shapes(
            position.shape[: position.ndim - event_ndim], distribution.batch_shape
        )
        key_u, key_n = random.split(rng_key)
        uniform = _flat_draw(random.uniform, key_u, (*chains, form.num_latent), dtype)
        units = form.units_of(position, 1.0, uniform)
        y = rel.upper(units) + _flat_draw(random.normal, key_n, (*chains, rel.num_units), dtype)
        position = jnp.broadcast_to(position.astype(dtype), chains + distribution.event_shape)
        zeros = jnp.zeros(chains, dtype)
        return RelaxedHMCState(position, y, zeros, jnp.zeros(chains, bool))

    def step(self, rng_key, state: RelaxedHMCState, distribution, beta=1.0) -> RelaxedHMCState:
        """One step at inverse temperature ``beta`` (broadcasting against
        ``chains + batch_shape``): build the relaxation, then ``num_trajectories`` times
        refresh ``y | s``, run one HMC trajectory and draw ``s | y``."""
        form = _form_of(distribution)
        dtype = distribution.chain_dtype
        beta = jnp.asarray(beta, dtype)
        rel = form.relaxation(beta, _check_margin(self.shift))

        chains = state.accept_prob.shape  # chain axes + batch_shape
        n, num_latent = rel.num_units, form.num_latent

        def one(carry, key):
            position, _, accept_sum, any_diverging = carry
            # All random numbers of a trajectory in two draws (fewer PRNG kernels to compile):
            # uniforms for the hidden layer, the new units and the Metropolis test; normals
            # for the refresh of y and the momentum.
            key_u, key_n = random.split(key)
            uniform = _flat_draw(random.uniform, key_u, (*chains, num_latent + n + 1), dtype)
            normal = _flat_draw(random.normal, key_n, (*chains, 2 * n), dtype)
            units = form.units_of(position, beta, uniform[..., :num_latent])
            y0 = rel.upper(units) + normal[..., :n]  # y | s ~ N(L^T s, I)
            y, logits, accept_prob, diverging = _trajectory(
                rel,
                y0,
                normal[..., n:],
                uniform[..., -1],
                self.step_size,
                self.num_leapfrog,
                self.max_energy_error,
            )
            new_units = (uniform[..., num_latent:-1] < jax.nn.sigmoid(logits)).astype(dtype)
            position = form.position_of(new_units)
            return (
                jnp.broadcast_to(position, state.position.shape).astype(dtype),
                jnp.broadcast_to(y, state.y.shape).astype(dtype),
                accept_sum + jnp.broadcast_to(accept_prob, state.accept_prob.shape),
                any_diverging | jnp.broadcast_to(diverging, state.diverging.shape),
            ), None

        carry = (
            state.position,
            state.y,
            jnp.zeros_like(state.accept_prob),
            jnp.zeros_like(state.diverging),
        )
        if self.num_trajectories == 1:
            carry, _ = one(carry, rng_key)
        else:
            keys = random.split(rng_key, self.num_trajectories)
            carry, _ = lax.scan(one, carry, keys)
        position, y, accept_sum, diverging = carry
        accept_prob = (accept_sum / self.num_trajectories).astype(dtype)
        return RelaxedHMCState(position, y, accept_prob, diverging)

    def position(self, state: RelaxedHMCState) -> jax.Array:
        """The configurations of the chains, ``chains + batch_shape + event_shape``."""
        return state.position


def _flat_draw(sampler, rng_key, shape, dtype):
    """``sampler(rng_key, shape, dtype)`` drawn flat and reshaped: XLA compiles the PRNG of
    a 1-d draw several times faster than that of a many-dimensional one."""
    return sampler(rng_key, (math.prod(shape),), dtype).reshape(shape)


@partial(jax.jit, static_argnums=0)
def _init(transition: RelaxedHMC, rng_key, distribution, position) -> RelaxedHMCState:
    # Compiled once per structure: eager initialization would compile every operation of
    # the relaxation separately.
    return transition._init(rng_key, distribution, position)


def _grad_and_logits(rel: Relaxation, y: jax.Array):
    """The gradient ``y - L^T sigmoid(L y + b)`` of ``-log p(y)`` and the logits
    ``L y + b``."""
    logits = rel.logits(y)
    return y - rel.upper(jax.nn.sigmoid(logits)), logits


def _potential_of(y: jax.Array, logits: jax.Array) -> jax.Array:
    """``-log p(y)`` up to a constant, from ``y`` and its logits."""
    return 0.5 * jnp.sum(y * y, -1) - jnp.sum(softplus(logits), -1)


#: Trajectories of at most this many leapfrog steps are unrolled (fewer, larger kernels).
_MAX_UNROLL = 16


def _leapfrog(rel: Relaxation, y, p, step_size: float, num_steps: int, grad=None):
    """``num_steps`` leapfrog steps (identity mass matrix) from ``(y, p)`` (``grad``: the
    gradient at ``y`` if known); returns the end point ``(y, p)``, its potential and its
    logits."""
    eps = jnp.asarray(step_size, y.dtype)
    if grad is None:
        grad, _ = _grad_and_logits(rel, y)

    def step(carry, _):
        y, p, g, _ = carry
        p = p - 0.5 * eps * g
        y = y + eps * p
        g, z = _grad_and_logits(rel, y)
        p = p - 0.5 * eps * g
        return (y, p, g, z), None

    logits = jnp.zeros(jnp.broadcast_shapes(y.shape, rel.bias.shape), y.dtype)
    (y, p, _, z), _ = lax.scan(
        step, (y, p, grad, logits), None, length=num_steps, unroll=num_steps <= _MAX_UNROLL
    )
    return y, p, _potential_of(y, z), z


def _trajectory(rel: Relaxation, y0, p0, uniform, step_size, num_leapfrog, max_energy_error):
    """One Metropolis-corrected leapfrog trajectory per chain from ``y0`` with momentum
    ``p0``, accepted when ``uniform`` is below the acceptance probability; returns the new
    ``y``, its logits ``L y + b``, the acceptance probability and the divergence flag."""
    g0, z0 = _grad_and_logits(rel, y0)
    u0 = _potential_of(y0, z0)
    y1, p1, u1, z1 = _leapfrog(rel, y0, p0, step_size, num_leapfrog, g0)
    delta = (u1 + 0.5 * jnp.sum(p1 * p1, -1)) - (u0 + 0.5 * jnp.sum(p0 * p0, -1))
    delta = jnp.where(jnp.isnan(delta), jnp.inf, delta)
    accept_prob = jnp.exp(jnp.minimum(-delta, 0.0))
    diverging = delta > max_energy_error
    accept = uniform < accept_prob
    y = jnp.where(accept[..., None], y1, y0)
    logits = jnp.where(accept[..., None], z1, z0)
    return y, logits, accept_prob, diverging


# ---------------------------------------------------------------------- log Z cross-check
class RelaxedLogPartitionResult(NamedTuple):
    """An importance-sampling estimate of ``log Z`` from the relaxation.

    log_partition : the estimate, shape ``batch_shape``.
    stderr : its delta-method standard error, ``std(w) / (sqrt(K) mean(w))`` for the ``K``
        importance weights ``w`` (shape ``batch_shape``); trustworthy only when ``ess`` is
        large (hundreds or more).
    ess : effective sample size of the weights, ``(sum w)^2 / sum w^2``.
    """

    log_partition: jax.Array
    stderr: jax.Array
    ess: jax.Array


def relaxed_log_partition(
    rng_key: jax.Array,
    distribution: EnergyBasedDistribution,
    num_samples: int = 10_000,
    *,
    proposal: str = "laplace",
    num_modes: int = 8,
    inflation: float = 2.0,
    shift: float | None = None,
    chunk_size: int = 4096,
) -> RelaxedLogPartitionResult:
    r"""``log Z`` by importance sampling of the relaxation: a cross-check for small models.

    Summing ``s`` out of ``exp(s^T A s / 2 + b^T s) N(y; L^T s, I)`` gives
    ``q(y) = (2 pi)^{-n/2} exp(-|y|^2 / 2) prod_i (1 + exp((L y)_i + b_i))`` (the
    ``s^T A s`` terms cancel), and integrating over ``y`` gives ``Z`` of the ``{0, 1}``
    form. So, with no further constants,

    .. math::

        Z = \mathbb{E}_{y \sim \mathcal{N}(0, I)} \prod_i ig(1 + e^{(L y)_i + b_i}ig)
          = \mathbb{E}_{y \sim r} ig[ q(y) / r(y) ig]

    for any proposal ``r`` with full support. For RBMs this is ``Z`` of the joint over
    ``(v, h)``, which is the RBM's ``Z``. For Ising models the ``{0, 1}`` form has the energy
    ``E(s) - E(-1)``, so ``log Z = log Z_{0,1} - E(-1)``.

    ``proposal="prior"`` draws ``y ~ N(0, I)`` (the first form): its weights are
    heavy-tailed already for a handful of strongly coupled units. ``proposal="laplace"``
    (default) draws from an equal mixture of Gaussians at ``num_modes`` local maxima of
    ``q`` (gradient ascent from ``L^T s`` for uniformly random ``s``; repeated modes are
    harmless) with covariances ``inflation * H^{-1}``, ``H = I - L^T diag(sigma') L`` the
    negative Hessian of ``log q`` there. Since ``H <= I``, every component is at least as
    wide as the unit-covariance Gaussian tails of ``q``, so the weights have finite
    variance. Components are sampled in equal numbers (a deterministic mixture). The cost is
    ``O(num_modes n^2)`` per draw and ``O(num_modes n^3)`` set-up per batch member.

    Parameters
    ----------
    rng_key : jax.Array
    distribution : BoltzmannMachine, IsingModel, IsingLattice or BernoulliRBM
    num_samples : int
        Importance draws ``K`` (rounded up to a multiple of ``num_modes``).
    proposal : {"laplace", "prior"}
    num_modes : int
        Mixture components of the Laplace proposal.
    inflation : float
        Covariance inflation of the Laplace components (at least 1).
    shift : float, optional
        Margin of the diagonal shift (default :data:`DEFAULT_SHIFT_MARGIN`).
    chunk_size : int
        Draws evaluated at once (memory is proportional to ``chunk_size * num_modes * n``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro_ebm import BoltzmannMachine, exact_log_partition
    >>> from numpyro_ebm.infer.relaxed_hmc import relaxed_log_partition
    >>> w = jnp.array([[0.0, 1.0, -1.0], [1.0, 0.0, 0.5], [-1.0, 0.5, 0.0]])
    >>> bm = BoltzmannMachine(w, jnp.array([0.2, -0.3, 0.1]))
    >>> est = relaxed_log_partition(jax.random.key(0), bm, 20_000)
    >>> bool(abs(est.log_partition - exact_log_partition(bm)) < 5 * est.stderr)
    True
    """
    for name, value in (("num_samples", num_samples), ("chunk_size", chunk_size)):
        if int(value) != value or int(value) < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    if proposal not in ("laplace", "prior"):
        raise ValueError(f'proposal must be "laplace" or "prior"; got {proposal!r}.')
    if int(num_modes) != num_modes or int(num_modes) < 1:
        raise ValueError(f"num_modes must be a positive integer; got {num_modes!r}.")
    if not float(inflation) >= 1.0:
        raise ValueError(
            f"inflation must be at least 1 (wider components keep the weights' variance "
            f"finite); got {inflation!r}."
        )
    _form_of(distribution)  # raise early, outside jit, for unsupported families
    num_modes = int(num_modes) if proposal == "laplace" else 1
    chunk = max(num_modes, int(chunk_size) // num_modes * num_modes)
    num_chunks = -(-int(num_samples) // chunk)
    return _relaxed_log_partition(
        rng_key,
        distribution,
        proposal,
        num_modes,
        float(inflation),
        _check_margin(shift),
        chunk,
        num_chunks,
    )


def _full_batch(rel: Relaxation, batch_shape: tuple[int, ...]) -> Relaxation:
    """Every leaf of ``rel`` broadcast to ``batch_shape`` leading axes and flattened to one."""
    size = math.prod(batch_shape)

    def expand(leaf, event_ndim):
        if leaf is None:
            return None
        event = leaf.shape[leaf.ndim - event_ndim :]
        return jnp.broadcast_to(leaf, batch_shape + event).reshape((size, *event))

    return Relaxation(
        expand(rel.shift, 0), expand(rel.bias, 1), expand(rel.cholesky, 2), expand(rel.cross, 2)
    )


def _log_weights_prior(rng_key, rel: Relaxation, chunk: int, num_chunks: int):
    def one(key):
        y = random.normal(key, (chunk, rel.num_units), rel.bias.dtype)
        return jnp.sum(softplus(rel.logits(y)), -1)

    return lax.map(one, random.split(rng_key, num_chunks)).reshape(-1)


def _log_weights_laplace(rng_key, rel, num_modes, inflation, chunk, num_chunks):
    """Log importance weights ``log q(y) - log r(y)`` for one (unbatched) relaxation."""
    n = rel.num_units
    dtype = rel.bias.dtype
    eye = jnp.eye(n, dtype=dtype)
    factor = jnp.swapaxes(jax.vmap(rel.lower)(eye), -1, -2)  # dense L, column j = L e_j
    lam_max = jnp.linalg.eigvalsh(factor @ factor.T)[-1]
    # The Hessian of -log q lies between I - A/4 and I: this step is below 2 / Lipschitz.
    rate = 1.0 / jnp.maximum(1.0, lam_max / 4)
    key_s, key_y = random.split(rng_key)
    starts = random.bernoulli(key_s, 0.5, (num_modes, n)).astype(dtype)

    def ascend(_, y):
        return y + rate * (rel.upper(jax.nn.sigmoid(rel.logits(y))) - y)

    modes = lax.fori_loop(0, 500, ascend, rel.upper(starts))
    curvature = jax.nn.sigmoid(rel.logits(modes))
    curvature = curvature * (1 - curvature)
    hessian = eye - jnp.einsum("ki,mk,kj->mij", factor, curvature, factor)
    chol = jnp.linalg.cholesky(hessian)  # H = C C^T; N(mode, inflation H^{-1})
    ok = jnp.all(jnp.isfinite(chol), (-2, -1), keepdims=True)
    chol = jnp.where(ok, chol, eye)  # a saddle or an unconverged ascent: fall back to I
    log_norm = jnp.sum(jnp.log(jnp.diagonal(chol, 0, -2, -1)), -1) - 0.5 * n * math.log(inflation)
    component = jnp.arange(chunk) % num_modes
    scale = math.sqrt(inflation)

    def one(key):
        xi = random.normal(key, (chunk, n), dtype)
        # y = mode + sqrt(inflation) C^{-T} xi has covariance inflation (C C^T)^{-1}.
        offset = jax.scipy.linalg.solve_triangular(
            chol[component], xi[..., None], lower=True, trans=1
        )[..., 0]
        y = modes[component] + scale * offset
        log_q = -0.5 * jnp.sum(y * y, -1) + jnp.sum(softplus(rel.logits(y)), -1)
        # log N(y; mode_m, inflation H_m^{-1}) + (n/2) log(2 pi), for every m.
        diff = y[:, None, :] - modes[None]
        proj = jnp.einsum("mij,kmi->kmj", chol, diff)
        log_r_m = log_norm - 0.5 * jnp.sum(proj * proj, -1) / inflation
        log_r = jax.nn.logsumexp(log_r_m, -1) - math.log(num_modes)
        return log_q - log_r

    return lax.map(one, random.split(key_y, num_chunks)).reshape(-1)


@partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _relaxed_log_partition(
    rng_key, distribution, proposal, num_modes, inflation, margin, chunk, num_chunks
):
    form = _form_of(distribution)
    batch_shape = distribution.batch_shape
    rel = _full_batch(form.relaxation(1.0, margin), batch_shape)
    keys = random.split(rng_key, math.prod(batch_shape))
    if proposal == "prior":
        log_w = jax.vmap(lambda k, r: _log_weights_prior(k, r, chunk, num_chunks))(keys, rel)
    else:
        log_w = jax.vmap(
            lambda k, r: _log_weights_laplace(k, r, num_modes, inflation, chunk, num_chunks)
        )(keys, rel)
    num_samples = log_w.shape[-1]
    top = jnp.max(log_w, -1)
    w = jnp.exp(log_w - top[:, None])
    mean = jnp.mean(w, -1)
    log_partition = (top + jnp.log(mean)).reshape(batch_shape) + form.log_partition_offset()
    stderr = (jnp.std(w, -1) / (math.sqrt(num_samples) * mean)).reshape(batch_shape)
    ess = (jnp.sum(w, -1) ** 2 / jnp.sum(w * w, -1)).reshape(batch_shape)
    return RelaxedLogPartitionResult(log_partition, stderr, ess)
