"""Samplers and negative-phase estimators for energy-based distributions."""

from numpyro_ebm.infer import gibbs
from numpyro_ebm.infer.ais import (
    AISResult,
    LogLikelihoodResult,
    ais,
    log_likelihood,
    log_partition_lower_bound,
)
from numpyro_ebm.infer.collapsed import (
    CollapsedGibbs,
    CollapsedGibbsState,
    CollapsedModel,
    collapse,
)
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
    HiddenGibbsState,
    HiddenGibbsTransition,
)
from numpyro_ebm.infer.priors import EBMGibbs, EBMGibbsState, EBMSiteGibbs, EBMSiteState
from numpyro_ebm.infer.relaxed_hmc import (
    RelaxedHMC,
    RelaxedHMCState,
    relaxation,
    relaxed_log_partition,
)
from numpyro_ebm.infer.relaxed_priors import RelaxedModel, relax

__all__ = [
    "CD",
    "PCD",
    "AISResult",
    "BlockGibbs",
    "BlockGibbsState",
    "CollapsedGibbs",
    "CollapsedGibbsState",
    "CollapsedModel",
    "EBMGibbs",
    "EBMGibbsState",
    "EBMSiteGibbs",
    "EBMSiteState",
    "EstimatorInfo",
    "EstimatorState",
    "GibbsInfo",
    "GibbsState",
    "GibbsTransition",
    "HiddenGibbsState",
    "HiddenGibbsTransition",
    "LogLikelihoodResult",
    "ParallelTempering",
    "RelaxedHMC",
    "RelaxedHMCState",
    "RelaxedModel",
    "ais",
    "collapse",
    "gibbs",
    "log_likelihood",
    "log_partition_lower_bound",
    "relax",
    "relaxation",
    "relaxed_log_partition",
]
