"""What a hop costs the broker as its log grows: one partition, filled with one-message
batches (what a topic holds after a pipeline ran at a low rate), then a message at a time
through it at each size.

    python -m benchmarks.broker_log [--broker tansu|kafka|HOST:PORT] [--sizes 0,5000,10000,20000,30000]

At each size in `--sizes` (batches already stored in the partition), a consumer assigned
at the log's end with the worker's fetch wait (`--fetch-wait-ms`, 10) receives
`--messages` messages sent one at a time at `--rate` per second, each acknowledged before
the next: per size, the latency from send to receipt (p50, max), the broker's CPU per
message (from /proc), and how many were not received within `--timeout-s`. Baseline in
the same run: the first size; the table gives each size's CPU and p50 against it. A size
at which messages were lost to the timeout ends the run (the consumer has stalled).
Prints JSON and a table.

Tansu's memory engine lists every stored batch of a partition to answer a fetch that
finds data there, and stops listing once the fetch's wait is over (docs/scaling.md,
*The broker's log*); Apache Kafka finds the offset in an index."""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks.pipeline_load import cpu_seconds
from benchmarks.stage_overhead import broker
from connectors.kafka import KafkaSettings, TopicSpec, ensure_topics, librdkafka_config

PAYLOAD = b"x" * 300  # about a QueryReceived event


def fill(producer: Producer, topic: str, count: int) -> None:
    """`count` batches of one message each: every send flushed before the next."""
    for _ in range(count):
        producer.produce(topic, PAYLOAD, partition=0)
        producer.flush()


def through(
    kafka: KafkaSettings, producer: Producer, topic: str, args: argparse.Namespace, stored: int
) -> dict[str, Any]:
    consumer = Consumer(
        librdkafka_config(
            kafka,
            **{
                "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": args.fetch_wait_ms,
            },
        )
    )
    consumer.assign([TopicPartition(topic, 0, stored)])
    consumer.poll(1)  # connected and fetching before the clock starts
    latencies: list[float] = []
    lost = 0
    before, started = cpu_seconds().get("broker", 0.0), time.monotonic()
    for i in range(args.messages):
        sent = time.monotonic()
        producer.produce(topic, b"%d" % i, partition=0)
        producer.flush()
        while time.monotonic() - sent < args.timeout_s:
            message = consumer.poll(max(0.0, args.timeout_s - (time.monotonic() - sent)))
            if message is not None and message.error() is None and message.value() == b"%d" % i:
                latencies.append((time.monotonic() - sent) * 1000)
                break
        else:
            lost += 1
            if lost >= args.give_up_after:
                break
        time.sleep(max(0.0, sent + 1 / args.rate - time.monotonic()))
    sent_count = len(latencies) + lost
    cpu_ms = (cpu_seconds().get("broker", 0.0) - before) * 1000
    consumer.close()
    return {
        "stored_batches": stored,
        "sent": sent_count,
        "received": len(latencies),
        "lost_to_timeout": lost,
        "p50_ms": statistics.median(latencies) if latencies else None,
        "max_ms": max(latencies) if latencies else None,
        "broker_cpu_ms_per_message": cpu_ms / sent_count,
        "broker_cores": cpu_ms / 1000 / (time.monotonic() - started),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", default="tansu", help="tansu, kafka, or HOST:PORT of a running one")
    parser.add_argument("--sizes", default="0,5000,10000,20000,30000", help="batches stored, rising")
    parser.add_argument("--messages", type=int, default=100, help="sent through at each size")
    parser.add_argument("--rate", type=float, default=50, help="messages per second")
    parser.add_argument("--fetch-wait-ms", type=int, default=10, help="the consumer's fetch.wait.max.ms")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="a message not received by then is lost")
    parser.add_argument("--give-up-after", type=int, default=3, help="lost messages that end a size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    steps: list[dict[str, Any]] = []
    with broker(args.broker) as kafka:
        topic = f"bench-log-{uuid.uuid4().hex[:8]}"
        ensure_topics(kafka, [TopicSpec(topic, 1)])
        producer = Producer(librdkafka_config(kafka, **{"linger.ms": 0, "enable.idempotence": True}))
        stored = 0
        for size in sizes:
            fill(producer, topic, max(0, size - stored))
            stored = max(stored, size)
            steps.append(through(kafka, producer, topic, args, stored))
            stored += int(steps[-1]["sent"])
            if steps[-1]["lost_to_timeout"]:
                break
    base = steps[0]
    for step in steps:  # None where there is nothing to divide (the clock tick is 10 ms of CPU)
        step["cpu_vs_first"] = ratio(step["broker_cpu_ms_per_message"], base["broker_cpu_ms_per_message"])
        step["p50_vs_first"] = ratio(step["p50_ms"], base["p50_ms"])
    print(json.dumps({"broker": args.broker, "fetch_wait_ms": args.fetch_wait_ms, "steps": steps}, indent=2))
    print_table(steps, args)


def ratio(value: float | None, first: float | None) -> float | None:
    return value / first if value is not None and first else None


def print_table(steps: list[dict[str, Any]], args: argparse.Namespace) -> None:
    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print(
        f"\nbroker {args.broker}; one partition; {args.messages} messages at {args.rate:g}/s at each "
        f"size, fetch wait {args.fetch_wait_ms} ms; against the first size"
    )
    header = ("stored", "received", "p50 ms", "max ms", "broker ms/msg", "x first", "p50 x")
    print("".join(f"{h:>{w}}" for h, w in zip(header, (8, 10, 9, 9, 15, 9, 7), strict=True)))
    for step in steps:
        print(
            f"{step['stored_batches']:>8}{step['received']:>6}/{step['sent']:<3}{shown(step['p50_ms']):>9}"
            f"{shown(step['max_ms']):>9}{step['broker_cpu_ms_per_message']:>15.2f}"
            f"{shown(step['cpu_vs_first']):>9}{shown(step['p50_vs_first']):>7}"
        )


if __name__ == "__main__":
    main()
