"""Statistical helpers shared by the tests: exact references and goodness-of-fit checks."""

from __future__ import annotations

import numpy as np
from scipy import stats


def state_codes(states: np.ndarray, support_values) -> np.ndarray:
    """Index of each configuration in ``all_states`` order (unit 0 most significant).

    ``states`` has shape ``(num_draws,) + event_shape``.
    """
    states = np.asarray(states)
    values = np.asarray(support_values)
    digits = np.searchsorted(values, states.reshape(states.shape[0], -1))
    q = len(values)
    n = digits.shape[1]
    powers = q ** np.arange(n - 1, -1, -1, dtype=np.int64)
    return digits.astype(np.int64) @ powers


def chi_square_pvalue(codes: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness-of-fit p-value of observed state codes against exact
    probabilities; cells with expected count below ``min_expected`` are pooled into one."""
    codes = np.asarray(codes)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    n = codes.size
    observed = np.bincount(codes, minlength=probs.size).astype(np.float64)
    expected = n * probs
    big = expected >= min_expected
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs, exp).pvalue)


def stationary_defect(pi: np.ndarray, transition: np.ndarray) -> float:
    """``max |pi T - pi|`` for a row-stochastic ``transition`` matrix."""
    pi = np.asarray(pi, np.float64)
    transition = np.asarray(transition, np.float64)
    assert np.allclose(transition.sum(1), 1.0, atol=1e-8), "rows of T must sum to 1"
    return float(np.max(np.abs(pi @ transition - pi)))
