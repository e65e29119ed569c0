"""Two-sample tests for the monitor: pure numpy, no I/O.

Embeddings: centroid cosine distance (the effect size a person can read) and the
squared maximum mean discrepancy with an RBF kernel (bandwidth: the median pairwise
distance), whose p-value comes from a permutation test. Scalars: Welch's statistic for
means and the two-proportion statistic for rates, with normal tail probabilities (the
monitor asks for enough samples per window that the normal approximation holds)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Comparison:
    current: float
    reference: float
    p_value: float

    @property
    def change(self) -> float:
        return self.current - self.reference


def centroid_distance(current: np.ndarray, reference: np.ndarray) -> float:
    a, b = current.mean(axis=0), reference.mean(axis=0)
    return float(1.0 - a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def mmd_test(
    current: np.ndarray, reference: np.ndarray, permutations: int = 200, seed: int = 0
) -> Comparison:
    """MMD² between the two samples and its permutation p-value (the share of random
    splits of the pooled sample whose MMD² is at least the observed one)."""
    pooled = np.vstack([current, reference]).astype(np.float64)
    squared = np.sum(pooled**2, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * pooled @ pooled.T, 0.0)
    upper = distances[np.triu_indices(len(pooled), k=1)]
    bandwidth = float(np.median(upper)) or 1.0
    kernel = np.exp(-distances / bandwidth)
    n = len(current)

    def mmd(order: np.ndarray) -> float:
        x, y = order[:n], order[n:]
        kxx, kyy, kxy = kernel[np.ix_(x, x)], kernel[np.ix_(y, y)], kernel[np.ix_(x, y)]
        m = len(y)
        return float(
            (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )

    identity = np.arange(len(pooled))
    observed = mmd(identity)
    rng = np.random.default_rng(seed)
    at_least = sum(mmd(rng.permutation(identity)) >= observed for _ in range(permutations))
    return Comparison(observed, 0.0, (at_least + 1) / (permutations + 1))


def normal_sf(z: float) -> float:
    """P(Z >= z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def compare_means(mean: float, var: float, n: int, ref_mean: float, ref_var: float, ref_n: int) -> Comparison:
    """Two-sided Welch test of a difference in means, from each sample's moments (so the
    store returns three numbers per window, not every value)."""
    se = math.sqrt(var / n + ref_var / ref_n)
    diff = mean - ref_mean
    if se == 0:
        return Comparison(mean, ref_mean, 1.0 if diff == 0 else 0.0)
    return Comparison(mean, ref_mean, 2 * normal_sf(abs(diff) / se))


def compare_rates(hits: int, total: int, ref_hits: int, ref_total: int) -> Comparison:
    """Two-sided two-proportion test."""
    p1, p2 = hits / total, ref_hits / ref_total
    pooled = (hits + ref_hits) / (total + ref_total)
    se = math.sqrt(pooled * (1 - pooled) * (1 / total + 1 / ref_total))
    p = 1.0 if se == 0 else 2 * normal_sf(abs(p1 - p2) / se)
    return Comparison(p1, p2, p)
