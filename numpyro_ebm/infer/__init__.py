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
from numpyro_ebm.infer.relaxed_hmc import (
    RelaxedHMC,
    RelaxedHMCState,
    relaxation,
    relaxed_log_partition,
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
    "RelaxedHMC",
    "RelaxedHMCState",
    "gibbs",
    "relaxation",
    "relaxed_log_partition",
]
