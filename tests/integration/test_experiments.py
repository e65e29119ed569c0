"""Experiments on real parts: the workers split traffic between labels sticky per user and
record the arm in every event and in ClickHouse; the stack's analytics process judges
the arms from synthetic user feedback and rolls a worse canary back by itself, while a
good one is left alone. Each experiment works on labels of its own."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

from agents.routing import Registry, assign
from connectors.analytics import Analytics
from connectors.client import Client
from connectors.registry_log import read_all
from schemas import utc_now
from schemas.prompts import Experiment
from tests.integration.test_pipeline import docs, tenant
from tests.integration.test_prompt_registry import cli, prompt_file
from topology.stack import LocalStack
from topology.topics import registry_topic

USERS = 60


def registry(stack: LocalStack) -> Registry:
    return Registry(read_all(stack.settings.kafka, registry_topic(stack.settings.worker.app_id)))


async def start(stack: LocalStack, tmp_path: Path, name: str, *options: str) -> tuple[str, str, str, str]:
    """Two labels on two versions and an experiment splitting them 50/50."""
    control, canary = f"{name}-control", f"{name}-canary"
    control_file, control_prompt = prompt_file(tmp_path, top_k=2, description=name)
    canary_file, canary_prompt = prompt_file(tmp_path, top_k=1, description=name)
    cli(stack, "prompts", "push", str(control_file), "--label", control)
    cli(stack, "prompts", "push", str(canary_file), "--label", canary)
    cli(stack, "experiments", "start", name, "--arm", f"{control}=50", "--arm", f"{canary}=50", *options)
    return control, canary, control_prompt.version, canary_prompt.version


async def serve_and_rate(
    client: Client, owner: str, name: str, control: str, rating: dict[str, list[bool]], per_answer: int
) -> dict[str, int]:
    """One question per user through the experiment, each answer rated `per_answer`
    times, walking through its arm's pattern; returns the ratings per arm."""
    answers = await asyncio.gather(
        *(
            client.ask(f"What is a lambda? ({i})", tenant=owner, prompt=control, user=f"{name}-user-{i}")
            for i in range(USERS)
        )
    )
    given: dict[str, int] = {}
    ratings = []
    for answer in answers:
        pattern = rating[answer.served.arm]
        n = given.get(answer.served.arm, 0)
        ratings += [(answer.trace_id, pattern[(n + k) % len(pattern)]) for k in range(per_answer)]
        given[answer.served.arm] = n + per_answer
    # Sent at once (each returns when the broker has it; one after another they took seconds).
    await asyncio.gather(*(client.feedback(trace, liked, tenant=owner) for trace, liked in ratings))
    return given


def report(stack: LocalStack, name: str) -> dict:
    return json.loads(cli(stack, "experiments", "report", name, "--json"))


async def test_the_split_is_sticky_per_user_and_recorded_in_events_and_clickhouse(
    tansu_stack: LocalStack, tmp_path: Path
):
    stack, owner, name = tansu_stack, tenant("split"), f"split-{uuid.uuid4().hex[:6]}"
    control, canary, control_version, canary_version = await start(stack, tmp_path, name)
    experiment = registry(stack).experiment(name)
    assert isinstance(experiment, Experiment)
    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda", "with"), tenant=owner)
        users = [f"{name}-user-{i}" for i in range(USERS)]
        first = await asyncio.gather(
            *(client.ask("What is a lambda?", tenant=owner, prompt=control, user=u) for u in users)
        )
        again = await asyncio.gather(
            *(client.ask("What is with?", tenant=owner, prompt=control, user=u) for u in users)
        )
    versions = {control: control_version, canary: canary_version}
    for user, a, b in zip(users, first, again, strict=True):
        assert a.served.experiment == name and a.served.arm == assign(experiment, user) == b.served.arm
        assert a.served.version == versions[a.served.arm] and a.served.label == a.served.arm
    assert {a.served.arm for a in first} == {control, canary}

    analytics = await Analytics.connect(stack.settings.clickhouse, stack.settings.analytics)
    try:
        deadline = time.monotonic() + 60
        while True:
            rows = (
                await analytics.query(
                    "SELECT trace_id, any(arm) AS arm, count() AS stages FROM telemetry "
                    "WHERE experiment = {name:String} GROUP BY trace_id",
                    {"name": name},
                )
            ).dicts()
            if len(rows) == 2 * USERS and all(r["stages"] == 4 for r in rows):
                break
            assert time.monotonic() < deadline, f"{len(rows)} traces in ClickHouse"
            await asyncio.sleep(1)
    finally:
        await analytics.close()
    by_trace = {a.trace_id: a.served.arm for a in first + again}
    assert {r["trace_id"]: r["arm"] for r in rows} == by_trace


async def test_a_worse_canary_is_rolled_back_and_a_good_one_left_alone(
    tansu_stack: LocalStack, tmp_path: Path
):
    stack, owner = tansu_stack, tenant("guard")
    bad, good = f"bad-{uuid.uuid4().hex[:6]}", f"good-{uuid.uuid4().hex[:6]}"
    # Bad: users like the control 90% of the time and the canary 20%; 15 ratings per arm
    # decide. Good: every answer rated 5 times, liked 4 of them, so both arms score 0.8
    # however the users split; 100+ ratings per arm make "not worse by more than 0.1"
    # significant.
    bad_control, bad_canary, bad_control_version, bad_canary_version = await start(
        stack, tmp_path, bad, "--min-samples", "15", "--margin", "0.1"
    )
    good_control, good_canary, _, good_canary_version = await start(
        stack, tmp_path, good, "--min-samples", "15", "--margin", "0.1"
    )
    liked_90, liked_20 = ([True] * n + [False] * (20 - n) for n in (18, 4))
    liked_80 = [True] * 4 + [False]
    async with Client(stack.settings) as client:
        await client.ingest(docs("lambda"), tenant=owner)
        bad_given = await serve_and_rate(
            client, owner, bad, bad_control, {bad_control: liked_90, bad_canary: liked_20}, 1
        )
        rated_at = utc_now()
        good_given = await serve_and_rate(
            client, owner, good, good_control, {good_control: liked_80, good_canary: liked_80}, 5
        )

    deadline = time.monotonic() + 90
    while (bad_now := registry(stack).experiment(bad)) is not None and bad_now.status == "running":
        assert time.monotonic() < deadline, f"{bad} not rolled back: {report(stack, bad)}"
        await asyncio.sleep(0.5)
    after = registry(stack)
    ended = after.experiment(bad)
    assert ended is not None and ended.status == "rolled_back" and ended.ended_at is not None
    decided_in = (ended.ended_at - rated_at).total_seconds()
    pointer = after.label(bad_canary)
    assert pointer is not None and pointer.version == bad_control_version and pointer.moved_by == "monitor"
    assert pointer.history[-1] == bad_canary_version
    verdicts = {arm["arm"]: arm for arm in report(stack, bad)["arms"]}
    assert verdicts[bad_canary]["verdict"] == "worse" and verdicts[bad_control]["ratings"] >= 15

    # The guard publishes the alert; the alerts sink stores it a moment later.
    analytics = await Analytics.connect(stack.settings.clickhouse, stack.settings.analytics)
    try:
        for _ in range(60):
            alerts = (
                await analytics.query(
                    "SELECT event_type, value, threshold FROM alerts WHERE subject = {s:String}",
                    {"s": f"{bad}/{bad_canary}"},
                )
            ).rows
            if alerts:
                break
            await asyncio.sleep(0.5)
    finally:
        await analytics.close()
    assert [a[0] for a in alerts] == ["ExperimentRolledBack"] and alerts[0][1] > alerts[0][2]

    # The good canary: judged not worse, and still running several guard rounds later.
    deadline = time.monotonic() + 60
    while (good_arms := {a["arm"]: a for a in report(stack, good)["arms"]})[good_canary][
        "verdict"
    ] != "not_worse":
        assert time.monotonic() < deadline, f"{good}: {good_arms}"
        await asyncio.sleep(1)
    await asyncio.sleep(3 * stack.settings.monitor.experiments_every_s)
    still = registry(stack)
    assert still.experiment(good).status == "running"  # type: ignore[union-attr]
    assert still.label(good_canary).version == good_canary_version  # type: ignore[union-attr]
    print(
        f"rollback decided {decided_in:.1f}s after the last rating; ratings per arm: bad {bad_given}, "
        f"good {good_given}"
    )
