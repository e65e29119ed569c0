"""Judging experiment arms: the one-sided Welch test of non-inferiority with a margin."""

from __future__ import annotations

from agents.experiments import ArmStats, judge
from schemas.prompts import Arm, Experiment

EXP = Experiment(
    name="e",
    arms=[Arm(label="production", weight=90), Arm(label="canary", weight=10)],
    margin=0.05,
    min_samples=50,
)


def bernoulli(arm: str, n: int, p: float) -> ArmStats:
    return ArmStats(arm, queries=n, ratings=n, mean=p, variance=p * (1 - p) * n / (n - 1))


def verdict(control: ArmStats, canary: ArmStats):
    found = judge(EXP, [control, canary])
    assert found[0].state == "control"
    return found[1]


def test_a_clearly_worse_canary_is_worse():
    v = verdict(bernoulli("production", 400, 0.8), bernoulli("canary", 100, 0.4))
    assert v.state == "worse" and v.p_worse is not None and v.p_worse < 0.05 and "canary" not in v.message


def test_an_equal_canary_with_enough_ratings_is_not_worse():
    assert verdict(bernoulli("production", 2000, 0.8), bernoulli("canary", 2000, 0.8)).state == "not_worse"


def test_a_small_drop_inside_the_margin_is_never_worse():
    v = verdict(bernoulli("production", 5000, 0.80), bernoulli("canary", 5000, 0.77))
    assert v.state != "worse" and abs(v.difference - 0.03) < 1e-9


def test_too_few_ratings_collects_and_a_close_call_is_inconclusive():
    assert verdict(bernoulli("production", 400, 0.8), bernoulli("canary", 49, 0.1)).state == "collecting"
    assert verdict(bernoulli("production", 60, 0.8), bernoulli("canary", 60, 0.72)).state == "inconclusive"


def test_the_interval_narrows_with_ratings():
    wide, narrow = bernoulli("a", 50, 0.5).interval(), bernoulli("a", 5000, 0.5).interval()
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
