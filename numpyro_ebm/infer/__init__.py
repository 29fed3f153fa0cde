"""Samplers and negative-phase estimators for energy-based distributions."""

from numpyro_ebm.infer import gibbs
from numpyro_ebm.infer.estimators import (
    CD,
    PCD,
    EstimatorInfo,
    EstimatorState,
    ParallelTempering,
)
from numpyro_ebm.infer.gibbs import (
    BlockGibbs,
    BlockGibbsState,
    GibbsInfo,
    GibbsState,
    GibbsTransition,
)

__all__ = [
    "CD",
    "PCD",
    "BlockGibbs",
    "BlockGibbsState",
    "EstimatorInfo",
    "EstimatorState",
    "GibbsInfo",
    "GibbsState",
    "GibbsTransition",
    "ParallelTempering",
    "gibbs",
]
