"""What one hop costs: a faust stage against a bare confluent-kafka consume-then-produce
loop on the same broker, same messages, same partitions.

    python -m benchmarks.stage_overhead [--broker tansu|kafka|HOST:PORT] [--messages 20000] [--runs 3]

Fills a topic with `--messages` QueryReceived events (about 300 bytes each), then lets each
contender move them all to an output topic, once per run, and reports messages per second
(first message in to last delivery acknowledged), medians of `--runs`:

- bare loop (baseline): a confluent-kafka Consumer polling batches of 500 and a Producer
  producing each message, delivery reports polled as it goes, flushed at the end;
- faust, raw: our stage plumbing with nothing in it (`acked_batches`: micro-batches of
  `worker.runtime.batch_max`, sent through `Publisher` (librdkafka), every send awaited
  once per batch, acked after);
- faust, stage runtime: the same plus what every stage does to each event (decode and
  validate, hand to a pass-through handler, encode, publish, and a StageCompleted report
  to the telemetry topic: two messages out per message in);
- librdkafka, raw / stage runtime: the same two, read by the worker's librdkafka stage
  consumer (topology/stage_consumer.py, LLMOPS_WORKER__STAGE_CONSUMER=librdkafka: the
  default) instead of a faust agent; offsets stored once a batch's outputs are acked.

The faust contenders run as a worker process of their own, like the pipeline's. The
broker is a Tansu started here (default), an Apache Kafka started here (`kafka`, needs
Java and Maven), or one that is running. Then the CPU each per-message step costs when
timed alone (decode, encode, a StageCompleted report, Publisher.send with its delivery,
a thread-to-loop hand-off): what bounds a hop once batching is amortised. Prints JSON and
a table."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from confluent_kafka import Consumer, Producer

from connectors.kafka import KafkaSettings, TopicSpec, ensure_topics, librdkafka_config, wait_for_broker
from schemas import QueryReceived, encode

CONTENDERS = (
    "bare loop",
    "faust, raw",
    "faust, stage runtime",
    "librdkafka, raw",
    "librdkafka, stage runtime",
)


def fill(kafka: KafkaSettings, topic: str, count: int) -> None:
    # One record per produce request: Tansu's high watermark undercounts a multi-record
    # batch (README, Known limits), and a reader would wait for the tail forever.
    producer = Producer(librdkafka_config(kafka, **{"linger.ms": 0, "batch.num.messages": 1}))
    for i in range(count):
        event = QueryReceived(
            trace_id=uuid.uuid4().hex, producer="bench", tenant="bench", question=f"What is a lambda? ({i})"
        )
        producer.produce(topic, key=event.trace_id.encode(), value=encode(event))
        producer.poll(0)
    producer.flush(60)


def bare_loop(kafka: KafkaSettings, source: str, sink: str, count: int) -> float:
    """Consume-then-produce with confluent-kafka; seconds from first message to last ack."""
    consumer = Consumer(
        librdkafka_config(kafka, **{"group.id": f"bare-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"})
    )
    producer = Producer(librdkafka_config(kafka, **{"linger.ms": 5, "acks": "all"}))
    consumer.subscribe([source])
    moved, started = 0, 0.0
    try:
        while moved < count:
            messages = consumer.consume(500, timeout=1.0)
            if messages and not started:
                started = time.perf_counter()
            for m in messages:
                if m.error() is None:
                    producer.produce(sink, key=m.key(), value=m.value())
                    moved += 1
            producer.poll(0)
        producer.flush(60)
        return time.perf_counter() - started
    finally:
        consumer.close()


def faust_worker(args: argparse.Namespace) -> None:
    """The child process: one faust agent from --source to --sink; writes its seconds to
    --result and stops once --messages have been moved."""
    import faust

    from agents.runtime import Incoming, StageRunner
    from topology.app import (
        acked_batches,
        librdkafka_stages,
        new_app,
        raw_topic,
        run_worker,
        sender,
        stage_publisher,
    )
    from topology.settings import Settings
    from topology.stage_consumer import StageConsumerService
    from topology.transport import PipelineApp

    settings = Settings()
    settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={
                    "bootstrap_servers": args.bootstrap,
                    "topics": settings.kafka.topics.model_copy(
                        update={"queries": args.source, "prompts": args.sink, "telemetry": args.sink + "-t"}
                    ),
                }
            ),
            "worker": settings.worker.model_copy(update={"app_id": f"bench-{uuid.uuid4().hex[:8]}"}),
        }
    )
    app = new_app(settings, settings.worker.app_id, web_enabled=False, topic_disable_leader=True)
    source = raw_topic(app, settings, "queries")
    publisher = stage_publisher(app, settings)
    emit = sender(publisher, args.sink)
    state: dict[str, float] = {"moved": 0, "started": 0.0}
    sent: list[Awaitable[Any]] = []

    async def echo(events: Sequence[Any], deps: Any) -> list[Any]:
        return list(events)

    runner = StageRunner(
        name="echo",
        input_model=QueryReceived,
        handler=echo,
        deps=None,
        emit=emit,
        dead_letter=emit,
        reply=None,
        settings=settings.worker.runtime,
        telemetry=sender(publisher, args.sink + "-t"),
    )

    async def raw(batch: list[Incoming]) -> list[Awaitable[Any]]:
        return [await emit(m.key or b"", m.value or b"") for m in batch]

    dispatch = runner.dispatch if args.variant.endswith("stage runtime") else raw

    async def counted(batch: list[Incoming]) -> list[Awaitable[Any]]:
        """`dispatch`, timed: the last batch stops the clock once everything sent is acked."""
        state["started"] = state["started"] or time.perf_counter()
        deliveries = await dispatch(batch)
        sent.extend(deliveries)
        state["moved"] += len(batch)
        if state["moved"] >= args.messages:
            await asyncio.gather(*sent)
            Path(args.result).write_text(str(time.perf_counter() - state["started"]))  # noqa: ASYNC240  # once, at the end
            os.kill(os.getpid(), signal.SIGTERM)
        return deliveries

    async def acked(batch: list[Incoming]) -> None:
        await asyncio.gather(*await counted(batch))

    if args.variant.startswith("librdkafka"):
        consumer = librdkafka_stages(settings, ready=nothing)
        consumer.add("echo", args.source, counted)
        cast(PipelineApp, app).on_app_start.append(consumer.start)
        app.service(StageConsumerService(consumer))  # type: ignore[arg-type]  # an instance works too

        # faust's consumer needs a topic (the worker's has the conversation stage's): an empty one.
        @app.agent(app.topic(args.source + "-idle", value_serializer="raw"), name="idle")
        async def idle(stream: faust.StreamT) -> None:
            async for _ in stream:
                pass
    else:

        @app.agent(source, name="echo")
        async def agent(stream: faust.StreamT) -> None:
            runtime = settings.worker.runtime
            await acked_batches(stream, runtime.batch_max, runtime.batch_within_s, acked)

    run_worker(app, "WARNING")


async def nothing() -> None:
    return None


def per_message_costs(kafka: KafkaSettings, sink: str, count: int = 5000) -> dict[str, float]:
    """CPU microseconds (this process, all threads) of each per-message step of a stage,
    timed alone: what bounds a hop once the batching is amortised."""
    from agents.telemetry import TelemetrySettings, stage_completed
    from connectors.kafka import Publisher
    from schemas import decode, utc_now

    events = [
        QueryReceived(
            trace_id=uuid.uuid4().hex, producer="bench", tenant="bench", question=f"What is x? ({i})"
        )
        for i in range(count)
    ]
    values = [encode(e) for e in events]

    def timed(step: Any) -> float:
        began = time.process_time()
        step()
        return (time.process_time() - began) * 1e6 / count

    costs = {
        "decode (pydantic, validate JSON)": timed(lambda: [decode(v, QueryReceived) for v in values]),
        "encode (pydantic, to JSON)": timed(lambda: [encode(e) for e in events]),
    }
    telemetry, now = TelemetrySettings(), utc_now()
    costs["StageCompleted built and encoded"] = timed(
        lambda: [
            encode(stage_completed("echo", e, e, now, now, e.trace_id, e.tenant, telemetry)) for e in events
        ]
    )

    async def sends() -> float:
        publisher = Publisher(kafka, client_id="bench-costs")
        await publisher.start()
        began = time.process_time()
        futures = [
            await publisher.send(sink, e.trace_id.encode(), v) for e, v in zip(events, values, strict=True)
        ]
        await asyncio.gather(*futures)
        spent = time.process_time() - began
        await publisher.stop()
        return spent * 1e6 / count

    async def hand_offs() -> float:
        loop, done = asyncio.get_running_loop(), asyncio.Event()
        left = [count]

        def arrived() -> None:
            left[0] -= 1
            if not left[0]:
                done.set()

        def thread() -> None:
            for _ in range(count):
                loop.call_soon_threadsafe(arrived)
                time.sleep(0)  # one wake-up of the loop each, as messages that come apart

        began = time.process_time()
        await asyncio.gather(asyncio.to_thread(thread), done.wait())
        return (time.process_time() - began) * 1e6 / count

    costs["Publisher.send, delivery awaited (librdkafka)"] = asyncio.run(sends())
    costs["thread to loop hand-off (call_soon_threadsafe)"] = asyncio.run(hand_offs())
    return costs


def run_faust(kafka: KafkaSettings, variant: str, source: str, sink: str, count: int) -> float:
    with tempfile.NamedTemporaryFile(suffix=".txt") as result:
        command = [sys.executable, "-m", "benchmarks.stage_overhead", "--child", variant]
        command += ["--bootstrap", kafka.bootstrap_servers, "--source", source, "--sink", sink]
        command += ["--messages", str(count), "--result", result.name]
        subprocess.run(command, check=True, timeout=900, stdout=subprocess.DEVNULL)  # noqa: S603
        return float(Path(result.name).read_text())


@contextmanager
def broker(choice: str) -> Iterator[KafkaSettings]:
    if ":" in choice:
        yield KafkaSettings(bootstrap_servers=choice)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if choice == "kafka":
            from topology.apache_kafka import ApacheKafka

            server = ApacheKafka(Path(tmp))
            server.start()
            try:
                yield KafkaSettings(bootstrap_servers=server.bootstrap)
            finally:
                server.stop()
            return
        from topology.stack import free_port, tansu_binary

        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        tansu = subprocess.Popen(  # noqa: S603
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
            + ["--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
            wait_for_broker(settings, 30)
            yield settings
        finally:
            tansu.terminate()
            tansu.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", default="tansu", help="tansu, kafka, or HOST:PORT of a running one")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--child", choices=CONTENDERS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.variant = args.child
        faust_worker(args)
        return

    seconds: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    with broker(args.broker) as kafka:
        source = f"bench-in-{uuid.uuid4().hex[:8]}"
        sinks = {c: f"bench-out-{i}-{uuid.uuid4().hex[:8]}" for i, c in enumerate(CONTENDERS)}
        names = [source, source + "-idle", *sinks.values(), *(s + "-t" for s in sinks.values())]
        ensure_topics(kafka, [TopicSpec(n, args.partitions) for n in names])
        fill(kafka, source, args.messages)
        for _ in range(args.runs):  # interleaved, so drift in the machine's load hits all alike
            for contender in CONTENDERS:
                if contender == "bare loop":
                    seconds[contender].append(bare_loop(kafka, source, sinks[contender], args.messages))
                else:
                    seconds[contender].append(
                        run_faust(kafka, contender, source, sinks[contender], args.messages)
                    )
        costs = per_message_costs(kafka, sinks["bare loop"])
    rates = {c: [args.messages / s for s in runs] for c, runs in seconds.items()}
    medians = {c: statistics.median(r) for c, r in rates.items()}
    report = {
        "broker": args.broker,
        "messages": args.messages,
        "partitions": args.partitions,
        "runs": args.runs,
        "messages_per_s": medians,
        "messages_per_s_runs": rates,
        "vs_bare_loop": {c: medians[c] / medians["bare loop"] for c in CONTENDERS},
        "per_message_cpu_us": costs,
    }
    print(json.dumps(report, indent=2))
    print(
        f"\n{args.messages} messages, {args.partitions} partitions, broker {args.broker}; "
        f"medians of {args.runs}"
    )
    print(f"{'contender':<26}{'messages/s':>12}{'vs bare':>9}")
    for c in CONTENDERS:
        print(f"{c:<26}{medians[c]:>12.0f}{report['vs_bare_loop'][c]:>8.0%}")
    print("\nCPU per message of each step, timed alone (this process, all threads)")
    for step, us in costs.items():
        print(f"{step:<48}{us:>8.1f} us")


if __name__ == "__main__":
    main()
