"""Registry of tiny models, one or more per family plus batched variants, for the generic
conformance tests. Each case builds its distribution and says how to break it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import numpyro_ebm as ebm
from numpyro_ebm.distributions.boltzmann import BoltzmannMachine, IsingModel
from numpyro_ebm.distributions.custom import EnergyDistribution
from numpyro_ebm.distributions.gaussian_rbm import GaussianBernoulliRBM
from numpyro_ebm.distributions.potts import PottsModel


def _normal(seed, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), shape)


def _symmetric(seed, n, scale=1.0, batch=()):
    a = _normal(seed, batch + (n, n), scale)
    a = (a + jnp.swapaxes(a, -1, -2)) / 2
    return a * (1 - jnp.eye(n))


@dataclasses.dataclass
class Case:
    id: str
    make: Callable[..., Any]
    kwargs: dict[str, Any]
    batch_shape: tuple[int, ...]
    event_shape: tuple[int, ...]
    #: (kwargs overrides, name of the argument the ValueError must mention)
    bad: list[tuple[dict[str, Any], str]] = dataclasses.field(default_factory=list)
    #: shapes for ``infer_shapes`` (None: the family is built by a classmethod)
    infer_shapes: dict[str, tuple[int, ...]] | None = None
    discrete: bool = True

    def build(self, **overrides):
        return self.make(**{**self.kwargs, **overrides})

    def build64(self, **overrides):
        """Build with every floating array argument cast to float64 (needs x64 enabled)."""

        def cast(v):
            if isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jnp.floating):
                return v.astype(jnp.float64)
            return v

        kwargs = {k: cast(v) for k, v in {**self.kwargs, **overrides}.items()}
        return self.make(**kwargs)


def rbm_cases():
    w = _normal(0, (4, 3))
    wb = _normal(1, (2, 4, 3))
    nan_w = w.at[0, 0].set(jnp.nan)
    return [
        Case(
            "rbm",
            ebm.BernoulliRBM,
            dict(weights=w, visible_bias=_normal(2, (4,)), hidden_bias=_normal(3, (3,))),
            (),
            (4,),
            bad=[
                (dict(weights=nan_w), "weights"),
                (dict(visible_bias=jnp.zeros(5)), "visible_bias"),
                (dict(hidden_bias=jnp.zeros((3, 2))), "hidden_bias"),
                (dict(weights=jnp.zeros(4)), "weights"),
            ],
            infer_shapes=dict(weights=(4, 3), visible_bias=(4,), hidden_bias=(3,)),
        ),
        Case(
            "rbm-batched",
            ebm.BernoulliRBM,
            dict(weights=wb, visible_bias=_normal(4, (4,)), hidden_bias=_normal(5, (2, 3))),
            (2,),
            (4,),
            bad=[(dict(visible_bias=jnp.zeros((3, 4))), "batch shapes")],
            infer_shapes=dict(weights=(2, 4, 3), visible_bias=(4,), hidden_bias=(2, 3)),
        ),
    ]


def gbrbm_cases():
    return [
        Case(
            "gbrbm",
            GaussianBernoulliRBM,
            dict(
                weights=_normal(10, (3, 2)),
                visible_bias=_normal(11, (3,)),
                hidden_bias=_normal(12, (2,)),
                visible_scale=jnp.asarray([0.5, 1.0, 2.0]),
            ),
            (),
            (3,),
            bad=[
                (dict(visible_scale=jnp.asarray([1.0, 0.0, 1.0])), "visible_scale"),
                (dict(visible_scale=jnp.ones(2)), "visible_scale"),
                (dict(weights=_normal(10, (3, 2)).at[0, 0].set(jnp.nan)), "weights"),
            ],
            infer_shapes=dict(
                weights=(3, 2), visible_bias=(3,), hidden_bias=(2,), visible_scale=(3,)
            ),
            discrete=False,
        ),
        Case(
            "gbrbm-batched",
            GaussianBernoulliRBM,
            dict(
                weights=_normal(13, (2, 3, 2)),
                visible_bias=_normal(14, (3,)),
                hidden_bias=_normal(15, (2, 2)),
                visible_scale=0.7,
            ),
            (2,),
            (3,),
            bad=[
                (dict(visible_scale=-1.0), "visible_scale"),
                (dict(visible_bias=jnp.zeros((3, 3))), "batch shapes"),
            ],
            infer_shapes=dict(
                weights=(2, 3, 2), visible_bias=(3,), hidden_bias=(2, 2), visible_scale=()
            ),
            discrete=False,
        ),
    ]


def _boltzmann_energy(x, params):
    return -0.5 * x @ params["couplings"] @ x - params["fields"] @ x


def _custom_three_state(couplings, fields, batch_shape=(), **kwargs):
    return EnergyDistribution(
        _boltzmann_energy,
        (3,),
        support_values=(0, 1, 2),
        params={"couplings": couplings, "fields": fields},
        batch_shape=batch_shape,
        **kwargs,
    )


def _quadratic_energy(x, precision):
    return 0.5 * x @ precision @ x


def _custom_gaussian(precision, **kwargs):
    return EnergyDistribution(_quadratic_energy, (2,), params=precision, **kwargs)


def custom_cases():
    return [
        Case(
            "custom-3state",
            _custom_three_state,
            dict(couplings=0.5 * _symmetric(16, 3), fields=_normal(17, (3,), 0.5)),
            (),
            (3,),
            bad=[
                (dict(couplings=jnp.full((3, 3), jnp.nan)), "params"),
                (dict(fields=jnp.zeros((2,))), "energy_fn"),
                (dict(step_size=0.1), "step_size"),
            ],
        ),
        Case(
            "custom-batched",
            _custom_three_state,
            dict(
                couplings=0.5 * _symmetric(18, 3, batch=(2,)),
                fields=_normal(19, (2, 3), 0.5),
                batch_shape=(2,),
            ),
            (2,),
            (3,),
            bad=[(dict(fields=jnp.zeros((3,))), "params")],
        ),
        Case(
            "custom-gaussian",
            _custom_gaussian,
            dict(precision=jnp.asarray([[2.0, 0.6], [0.6, 1.0]])),
            (),
            (2,),
            bad=[(dict(step_size=-0.1), "step_size"), (dict(precision=jnp.eye(3)), "energy_fn")],
            discrete=False,
        ),
    ]


def boltzmann_cases():
    j = _symmetric(20, 4, 0.6)
    jb = _symmetric(21, 4, 0.6, batch=(2,))
    ring = jnp.asarray([[0, 0.8, 0, -0.5], [0.8, 0, 0.4, 0], [0, 0.4, 0, 0.6], [-0.5, 0, 0.6, 0]])
    return [
        Case(
            "boltzmann",
            BoltzmannMachine,
            dict(couplings=j, fields=_normal(22, (4,), 0.5)),
            (),
            (4,),
            bad=[
                (dict(couplings=j + jnp.triu(jnp.ones((4, 4)), 1)), "couplings"),
                (dict(couplings=j + jnp.eye(4)), "couplings"),
                (dict(couplings=j.at[0, 1].set(jnp.nan).at[1, 0].set(jnp.nan)), "couplings"),
                (dict(couplings=jnp.zeros((4, 3))), "couplings"),
                (dict(fields=jnp.zeros(3)), "fields"),
                (dict(coloring=[0, 0, 0, 0]), "coloring"),
            ],
            infer_shapes=dict(couplings=(4, 4), fields=(4,)),
        ),
        Case(
            "boltzmann-batched",
            BoltzmannMachine,
            dict(couplings=jb, fields=_normal(23, (4,), 0.5)),
            (2,),
            (4,),
            bad=[(dict(fields=jnp.zeros((3, 4))), "batch shapes")],
            infer_shapes=dict(couplings=(2, 4, 4), fields=(4,)),
        ),
        Case(
            "ising-sparse",
            IsingModel,
            dict(couplings=ring, fields=_normal(24, (4,), 0.3)),
            (),
            (4,),
            bad=[(dict(couplings=ring.at[0, 2].set(1.0)), "couplings")],
            infer_shapes=dict(couplings=(4, 4), fields=(4,)),
        ),
        Case(
            "ising-lattice",
            IsingModel.lattice,
            dict(shape=(3, 3), coupling=jnp.asarray(0.3), field=jnp.asarray(0.1)),
            (),
            (3, 3),
            bad=[(dict(shape=(9,)), "shape"), (dict(coupling=jnp.asarray(jnp.nan)), "coupling")],
        ),
        Case(
            "ising-lattice-batched",
            IsingModel.lattice,
            dict(
                shape=(2, 3),
                coupling=jnp.asarray([0.3, -0.4]),
                field=_normal(25, (2, 3), 0.2),
                periodic=False,
            ),
            (2,),
            (2, 3),
            bad=[(dict(field=jnp.zeros(3)), "batch shapes")],
        ),
    ]


def potts_cases():
    j = jnp.asarray([[0.0, 0.5, 0.0], [0.5, 0.0, -0.3], [0.0, -0.3, 0.0]])
    fields = jnp.asarray([[0.1, 0.0, -0.1], [0.0, 0.2, 0.0], [0.3, 0.0, 0.0]])
    return [
        Case(
            "potts",
            PottsModel,
            dict(couplings=j, fields=fields),
            (),
            (3,),
            bad=[
                (
                    dict(couplings=jnp.asarray([[0.0, 1.0, 0], [0.0, 0.0, 0], [0, 0, 0]])),
                    "couplings",
                ),
                (dict(fields=jnp.zeros((3, 3)).at[0, 0].set(jnp.nan)), "fields"),
            ],
            infer_shapes=dict(couplings=(3, 3), fields=(3, 3)),
        ),
        Case(
            "potts-batched",
            PottsModel,
            dict(couplings=jnp.stack([j, -j]), fields=jnp.zeros((2, 3, 3))),
            (2,),
            (3,),
            bad=[(dict(fields=jnp.zeros((2, 3, 1))), "fields")],
            infer_shapes=dict(couplings=(2, 3, 3), fields=(2, 3, 3)),
        ),
        Case(
            "potts-lattice-batched",
            PottsModel.lattice,
            dict(
                shape=(2, 3),
                num_states=3,
                coupling=jnp.asarray([0.4, -0.2]),
                fields=jnp.zeros((2, 1, 1, 3)),
            ),
            (2,),
            (2, 3),
            bad=[
                (dict(coupling=jnp.asarray([0.4, jnp.nan])), "coupling"),
                (dict(shape=(5,)), "shape"),
            ],
        ),
    ]


def all_cases():
    return rbm_cases() + gbrbm_cases() + custom_cases() + boltzmann_cases() + potts_cases()


CASES = all_cases()
