"""numpyro_ebm: energy-based models with intractable normalizers as NumPyro distributions."""

from numpyro_ebm.diagnostics import MixingError, MixingWarning, Monitor
from numpyro_ebm.distributions import (
    AUTO_EXACT_MAX_STATES,
    BernoulliRBM,
    BoltzmannMachine,
    EnergyBasedDistribution,
    EnergyDistribution,
    FiniteValues,
    GaussianBernoulliRBM,
    IsingLattice,
    IsingModel,
    LatentEnergyDistribution,
    LogPartitionGradientError,
    PottsLattice,
    PottsModel,
)
from numpyro_ebm.exact import all_states, exact_log_partition, exact_marginals
from numpyro_ebm.handlers import negative_phase
from numpyro_ebm.infer.ais import AISResult, ais, log_likelihood, log_partition_lower_bound
from numpyro_ebm.io import load, save
from numpyro_ebm.train import FitHistory, TrainingDivergedError, fit

__version__ = "0.1.0"

__all__ = [
    "AUTO_EXACT_MAX_STATES",
    "AISResult",
    "BernoulliRBM",
    "BoltzmannMachine",
    "EnergyBasedDistribution",
    "EnergyDistribution",
    "FiniteValues",
    "FitHistory",
    "GaussianBernoulliRBM",
    "IsingLattice",
    "IsingModel",
    "LatentEnergyDistribution",
    "LogPartitionGradientError",
    "MixingError",
    "MixingWarning",
    "Monitor",
    "PottsLattice",
    "PottsModel",
    "TrainingDivergedError",
    "__version__",
    "ais",
    "all_states",
    "exact_log_partition",
    "exact_marginals",
    "fit",
    "load",
    "log_likelihood",
    "log_partition_lower_bound",
    "negative_phase",
    "save",
]
