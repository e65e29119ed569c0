"""How many users an experiment needs before its sticky split is within 1 point of the
configured one, and how fast a worker routes a request.

    python -m benchmarks.experiment_split [--trials 300] [--seed 7]

For each split and number of users, many experiments (random names, random user ids)
are assigned with `agents.routing.assign` (BLAKE2b of experiment and user); the table
gives the share of experiments whose observed split is within 1 point of the configured
one. The baseline in the same run draws each user's arm with numpy's uniform generator,
the ideal a hash can only match; the binomial bound is sqrt(p(1-p)/n)*1.96 <= 0.01."""

from __future__ import annotations

import argparse
import json
import math
import time
import uuid

import numpy as np

from agents.config import PipelineSettings
from agents.routing import Registry, assign
from schemas.prompts import Arm, Experiment, LabelMoved, PromptVersion, record_key

USERS = (300, 1_000, 2_000, 3_000, 4_000, 6_000, 8_000, 10_000, 12_000, 16_000)
SPLITS = ((90, 10), (50, 50))


def within_one_point(shares: np.ndarray, expected: float) -> float:
    return float(np.mean(np.abs(shares - expected) <= 0.01))


def needed(rates: dict[int, float]) -> int | None:
    """The fewest users (of those tried) from which 95% of experiments are within 1 point."""
    ok = [n for n in USERS if all(rates[m] >= 0.95 for m in USERS if m >= n)]
    return min(ok) if ok else None


def route_rate(requests: int) -> float:
    """Requests routed per second through an experiment, as prompting does it."""
    v1 = PromptVersion(name="a", system="s", template="$question")
    v2 = PromptVersion(name="a", system="s2", template="$question")
    records = [
        v1,
        v2,
        LabelMoved(label="production", version=v1.version),
        LabelMoved(label="canary", version=v2.version),
        Experiment(name="e", arms=[Arm(label="production", weight=90), Arm(label="canary", weight=10)]),
    ]
    registry = Registry({record_key(r).encode(): r.model_dump_json().encode() for r in records})
    fallback = PipelineSettings().prompt
    began = time.perf_counter()
    for i in range(requests):
        registry.route("production", f"user-{i}", None, fallback)
    return requests / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=300, help="experiments per split and size")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    results = []
    for control, canary in SPLITS:
        expected = canary / (control + canary)
        hashed: dict[int, float] = {}
        uniform: dict[int, float] = {}
        for n in USERS:
            shares = []
            for _ in range(args.trials):
                exp = Experiment(
                    name=uuid.uuid4().hex,
                    arms=[Arm(label="production", weight=control), Arm(label="canary", weight=canary)],
                )
                # The experiment's name is random, so plain user ids are independent draws.
                shares.append(sum(assign(exp, f"user-{u}") == "canary" for u in range(n)) / n)
            hashed[n] = within_one_point(np.array(shares), expected)
            uniform[n] = within_one_point(rng.binomial(n, expected, args.trials) / n, expected)
        bound = math.ceil(expected * (1 - expected) * (1.96 / 0.01) ** 2)
        results.append(
            {
                "split": f"{control}/{canary}",
                "within_1pt": {str(n): hashed[n] for n in USERS},
                "baseline_within_1pt": {str(n): uniform[n] for n in USERS},
                "users_for_95pct": needed(hashed),
                "baseline_users_for_95pct": needed(uniform),
                "binomial_bound_users": bound,
            }
        )
    routed = sorted(route_rate(20_000) for _ in range(5))[2]
    report = {"trials": args.trials, "splits": results, "routes_per_s_median_of_5": round(routed)}
    print(json.dumps(report, indent=2))
    print()
    print(f"{'split':<7}{'users':>8}{'hash within 1pt':>17}{'uniform within 1pt':>20}")
    for r in results:
        for n in USERS:
            print(
                f"{r['split']:<7}{n:>8}{r['within_1pt'][str(n)]:>17.3f}{r['baseline_within_1pt'][str(n)]:>20.3f}"
            )
        print(
            f"{r['split']}: 95% of experiments within 1 point from {r['users_for_95pct']} users "
            f"(uniform: {r['baseline_users_for_95pct']}; binomial bound {r['binomial_bound_users']})"
        )
    print(f"routing: {routed:,.0f} requests/s per worker (median of 5)")


if __name__ == "__main__":
    main()
