"""Samplers for energy-based distributions."""

from numpyro_ebm.infer import gibbs
from numpyro_ebm.infer.gibbs import BlockGibbs, BlockGibbsState, GibbsInfo, GibbsState

__all__ = ["BlockGibbs", "BlockGibbsState", "GibbsInfo", "GibbsState", "gibbs"]
