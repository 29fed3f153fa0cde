"""Energy-based families as ``numpyro.distributions.Distribution`` subclasses."""

from numpyro_ebm.distributions.base import (
    AUTO_EXACT_MAX_STATES,
    EnergyBasedDistribution,
    LogPartitionGradientError,
)
from numpyro_ebm.distributions.boltzmann import BoltzmannMachine, IsingLattice, IsingModel
from numpyro_ebm.distributions.custom import EnergyDistribution, FiniteValues
from numpyro_ebm.distributions.gaussian_rbm import GaussianBernoulliRBM
from numpyro_ebm.distributions.latent import FreeEnergyError, LatentEnergyDistribution
from numpyro_ebm.distributions.potts import PottsLattice, PottsModel
from numpyro_ebm.distributions.rbm import BernoulliRBM

__all__ = [
    "AUTO_EXACT_MAX_STATES",
    "BernoulliRBM",
    "BoltzmannMachine",
    "EnergyBasedDistribution",
    "EnergyDistribution",
    "FiniteValues",
    "FreeEnergyError",
    "GaussianBernoulliRBM",
    "IsingLattice",
    "IsingModel",
    "LatentEnergyDistribution",
    "LogPartitionGradientError",
    "PottsLattice",
    "PottsModel",
]
