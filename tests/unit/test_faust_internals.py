"""Every faust, aiokafka and mode name that topology/transport.py overrides or reads still
exists with the signature it expects, and faust still calls each overridden method.

The patch works by overriding private methods: if faust renamed one, our method would
simply never be called again and tests that call it directly (tests/unit/test_transport.py)
would still pass. This file is what notices a faust upgrade that moves them."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable, MutableMapping, MutableSet
from pathlib import Path
from typing import Any

import aiokafka
import faust
import mode
import pytest
from faust.channels import Channel
from faust.transport import base as transport_base
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as driver
from faust.types import TP
from faust.types.tuples import Message

from topology import transport
from topology.app import new_app, raw_topic
from topology.settings import Settings


def params(fn: Callable[..., Any]) -> list[str]:
    """Parameter names as written: `*args` and `**kwargs` keep their stars."""
    stars = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return [stars.get(p.kind, "") + p.name for p in inspect.signature(fn).parameters.values()]


# (faust class, private method, its parameters, faust's function that calls it)
OVERRIDDEN = [
    (
        driver.AIOKafkaConsumerThread,
        "_create_worker_consumer",
        ["self", "transport"],
        driver.AIOKafkaConsumerThread._create_consumer,
    ),
    (driver.Consumer, "_new_consumer_thread", ["self"], faust_consumer.ThreadDelegateConsumer.__init__),
    (driver.Consumer, "_commit_tps", ["self", "tps", "start_new_transaction"], driver.Consumer.force_commit),
    (
        driver.Consumer,
        "_add_gap",
        ["self", "tp", "offset_from", "offset_to"],
        faust_consumer.Consumer._drain_messages,
    ),
    (faust.App, "_new_transport", ["self"], faust.App.transport.fget),  # type: ignore[attr-defined]
]

# Public methods the patch overrides or calls, with their parameters.
PUBLIC = [
    (driver.Consumer, "ack", ["self", "message"]),
    (driver.Consumer, "seek", ["self", "partition", "offset"]),
    (driver.Consumer, "position", ["self", "tp"]),
    (driver.Consumer, "assignment", ["self"]),
    (driver.Consumer, "highwaters", ["self", "*partitions"]),
    (driver.Consumer, "earliest_offsets", ["self", "*partitions"]),
    (driver.Consumer, "pause_partitions", ["self", "tps"]),
    (driver.Consumer, "resume_partitions", ["self", "tps"]),
    (mode.Service, "itertimer", ["self", "interval", "max_drift_correction", "sleep", "clock", "name"]),
]


def calls(caller: Callable[..., Any], name: str) -> bool:
    return re.search(rf"\bself\.{name}\(", inspect.getsource(caller)) is not None


@pytest.mark.parametrize(("cls", "name", "expected", "caller"), OVERRIDDEN, ids=[o[1] for o in OVERRIDDEN])
def test_each_private_method_we_override_exists_with_its_signature_and_is_called(cls, name, expected, caller):
    original = getattr(cls, name, None)
    assert original is not None, (
        f"{cls.__module__}.{cls.__qualname__}.{name} is gone: the patch no longer applies"
    )
    assert params(original) == expected, (
        f"{cls.__qualname__}.{name}{inspect.signature(original)} changed; topology/transport.py expects "
        f"({', '.join(expected)})"
    )
    assert calls(caller, name), (
        f"faust's {caller.__qualname__} no longer calls self.{name}(...): the override is dead code"
    )


def test_our_overrides_keep_faust_signatures():
    ours = {
        "_create_worker_consumer": transport._ConsumerThread,
        "_new_consumer_thread": transport._Consumer,
        "_commit_tps": transport._Consumer,
        "_add_gap": transport._Consumer,
        "_new_transport": transport.PipelineApp,
        "ack": transport._Consumer,
    }
    faust_cls = {name: cls for cls, name, *_ in OVERRIDDEN} | {"ack": driver.Consumer}
    for name, cls in ours.items():
        assert name in vars(cls), f"{cls.__qualname__} no longer overrides {name}"
        original = getattr(faust_cls[name], name, None)
        assert original is not None, f"faust has no {name} for {cls.__qualname__}.{name} to override"
        assert params(vars(cls)[name]) == params(original), f"{cls.__qualname__}.{name} differs from faust's"


@pytest.mark.parametrize(("cls", "name", "expected"), PUBLIC, ids=[p[1] for p in PUBLIC])
def test_each_public_method_we_call_has_its_signature(cls, name, expected):
    method = getattr(cls, name, None)
    assert method is not None, f"{cls.__qualname__}.{name} is gone"
    assert params(method) == expected, f"{cls.__qualname__}.{name}{inspect.signature(method)} changed"


def test_the_transport_and_its_consumer_are_what_faust_instantiates():
    assert calls(transport_base.Transport.create_consumer, "Consumer"), "Transport.Consumer is no longer used"
    assert transport._Transport.Consumer is transport._Consumer
    assert issubclass(transport._Transport, driver.Transport)
    assert callable(mode.Service.task)


def test_faust_fetches_through_fetch_records_and_aiokafka_reads_the_fetcher_s_wait_per_fetch():
    # _ConsumerThread._fetch_records paces the wait after each getmany: faust must still
    # route getmany through it (on the consumer thread), with these parameters, and the
    # aiokafka Fetcher must read its _fetch_max_wait_ms into each fetch request it builds.
    original = driver.AIOKafkaConsumerThread._fetch_records
    expected = ["self", "consumer", "active_partitions", "timeout", "max_records"]
    assert params(original) == expected
    assert params(transport._ConsumerThread._fetch_records) == expected
    assert "self._fetch_records," in inspect.getsource(driver.AIOKafkaConsumerThread.getmany)
    assert "fetcher = consumer._fetcher" in inspect.getsource(original)
    assert "self._fetcher = Fetcher(" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "self._fetch_max_wait_ms," in inspect.getsource(
        aiokafka.consumer.fetcher.Fetcher._get_actions_per_node
    )


def test_aiokafka_reads_the_fetch_wait_we_set_when_it_starts():
    # _ConsumerThread sets consumer._fetch_max_wait_ms after construction; aiokafka must
    # store it under that name and read it when start() builds the Fetcher.
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in inspect.getsource(
        aiokafka.AIOKafkaConsumer.__init__
    )
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)


@pytest.fixture
def app_and_consumer() -> tuple[Any, Any, TP]:
    settings = Settings()
    app = new_app(settings, "faust-internals-test")
    topic = raw_topic(app, settings, "queries")
    app.topics.add(topic)
    asyncio.run(app.topics._update_indices())
    return app, app.consumer, TP(topic.get_topic_name(), 0)


def test_the_private_members_we_read_exist_with_the_shapes_we_use(app_and_consumer):
    app, consumer, tp = app_and_consumer
    assert isinstance(consumer, transport._Consumer)  # the app really runs our consumer
    # Consumer bookkeeping the patch reads and writes.
    assert isinstance(consumer._unacked_messages, MutableSet)
    assert consumer._acked[tp] == []  # defaultdict(list): TP -> acked offsets
    assert consumer._committed_offset[tp] is None  # unknown commit reads as None
    assert isinstance(consumer._paused_partitions, set)
    assert params(consumer._get_active_partitions) == []
    assert isinstance(consumer._get_active_partitions(), set)
    assert params(consumer._is_changelog_tp) == ["tp"]
    assert consumer._is_changelog_tp(tp) is False
    # The conductor's index from partition to the channels that read it.
    assert isinstance(app.topics._tp_index, MutableMapping)
    # A channel's buffer: None until first read, then a queue with qsize().
    channel = Channel(app)
    assert channel._queue is None
    assert callable(channel.queue.qsize)
    assert channel._queue is channel.queue
    # What fetched_before_rebalance compares: faust's own skip test in streams.py.
    assert isinstance(app.consumer_generation_id, int)
    message = Message("t", 0, 1, 0.0, 0, None, b"k", b"v", None, generation_id=3)
    assert message.generation_id == 3
    assert message.acked is False
    assert "message.generation_id != self.app.consumer_generation_id" in inspect.getsource(faust.streams)


def test_the_patch_table_names_tests_that_exist():
    root = Path(__file__).resolve().parents[2]
    named = re.findall(r"^T\d+\s+(\S+?)(?:::(\w+))?$", transport.__doc__ or "", re.MULTILINE)
    assert len(named) >= 10
    for path, test in named:
        source = (root / path).read_text()
        assert not test or f"def {test}(" in source, f"{path}::{test} named in topology/transport.py is gone"
