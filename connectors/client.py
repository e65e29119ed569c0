"""The async Client SDK: publish questions and documents, await the matching replies.

One consumer per Client reads the reply topics from the moment the Client starts (manual
assignment at the end offsets, so no group join delays the first answer), on a thread of
its own, and resolves the waiting futures by trace id (the replies' key: the replies to
other clients are not decoded). Concurrent asks share it and never block each other."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from connectors.kafka import KafkaSettings, Publisher, cluster_metadata, librdkafka_config
from schemas import (
    DocumentIndexed,
    DocumentSubmitted,
    QueryReceived,
    RequestFailed,
    ResponseDelta,
    ResponseGenerated,
    RetrievalMode,
    encode,
    new_id,
)
from schemas.artifacts import (
    ArtifactContent,
    ArtifactsIndexed,
    ArtifactsSubmitted,
    ArtifactsWithdrawn,
    artifacts_key,
)
from schemas.conversations import conversation_key
from schemas.documents import DocumentWithdrawn, document_key
from schemas.errors import InvalidEvent, LLMOpsError, PermanentError, TransientError
from schemas.feedback import FeedbackReceived, FeedbackType

log = logging.getLogger(__name__)

Reply = ResponseGenerated | DocumentIndexed | ArtifactsIndexed | RequestFailed
_replies: TypeAdapter[Reply | ResponseDelta] = TypeAdapter(
    Annotated[Reply | ResponseDelta, Field(discriminator="event_type")]
)


class ClientSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    timeout_s: float = Field(default=60.0, gt=0, description="How long ask() waits for a reply.")


class HasClientSettings(Protocol):
    @property
    def kafka(self) -> KafkaSettings: ...

    @property
    def client(self) -> ClientSettings: ...


class RequestError(LLMOpsError):
    """The pipeline dead-lettered this request; `failure` says where and why."""

    def __init__(self, failure: RequestFailed) -> None:
        super().__init__(f"{failure.stage} failed ({failure.error_type}): {failure.reason}")
        self.failure = failure


class Client:
    def __init__(self, settings: HasClientSettings, producer_name: str = "client") -> None:
        self._kafka = settings.kafka
        self._timeout = settings.client.timeout_s
        self._name = producer_name
        self._publisher = Publisher(settings.kafka, client_id=f"{producer_name}-{new_id()[:8]}")
        self._consumer: Any = None
        self._reader: threading.Thread | None = None
        self._closing = threading.Event()
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        # Streaming asks: their deltas and final reply, in arrival order, by trace id.
        self._streams: dict[str, asyncio.Queue[Reply | ResponseDelta]] = {}

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(self) -> None:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        if self._kafka.sasl_username is not None:
            # A refused password is named at once, not as "unreachable" after the wait below.
            await asyncio.to_thread(cluster_metadata, self._kafka, 10)
        consumer = Consumer(
            librdkafka_config(
                self._kafka,
                **{
                    "group.id": f"llmops-client-{new_id()}",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 10,
                },
            )
        )
        topics = [self._kafka.topics.responses, self._kafka.topics.indexed]
        try:
            metadata = await asyncio.to_thread(consumer.list_topics, timeout=10)
        except KafkaException as exc:
            await asyncio.to_thread(consumer.close)
            raise TransientError(
                f"Kafka at {self._kafka.bootstrap_servers} unreachable ({exc.args[0].str()}): "
                "is the stack up (`llmops up`)?"
            ) from exc
        assignment = []
        try:
            for topic in topics:
                if topic not in metadata.topics or metadata.topics[topic].error is not None:
                    raise PermanentError(
                        f"topic {topic} does not exist on {self._kafka.bootstrap_servers}: "
                        "is the stack up (`llmops up`) and bootstrapped?"
                    )
                for partition in metadata.topics[topic].partitions:
                    _, high = await asyncio.to_thread(
                        consumer.get_watermark_offsets, TopicPartition(topic, partition), timeout=10
                    )
                    assignment.append(TopicPartition(topic, partition, high))
            consumer.assign(assignment)
        except BaseException:
            await asyncio.to_thread(consumer.close)
            raise
        self._consumer = consumer
        await self._publisher.start()
        self._closing.clear()
        self._reader = threading.Thread(
            target=self._read_replies,
            args=(consumer, asyncio.get_running_loop()),
            name=f"{self._name}-replies",
            daemon=True,
        )
        self._reader.start()

    async def stop(self) -> None:
        self._closing.set()
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join)
            self._reader = None
        await self._publisher.stop()
        if self._consumer is not None:
            await asyncio.to_thread(self._consumer.close)
            self._consumer = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TransientError("client stopped"))

    async def ask(
        self,
        question: str,
        tenant: str = "default",
        *,
        top_k: int | None = None,
        user: str | None = None,
        retrieval_mode: RetrievalMode | None = None,
        prompt: str | None = None,
        timeout: float | None = None,
        conversation: str | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> ResponseGenerated:
        """Publish a QueryReceived and await its ResponseGenerated.

        Raises RequestError when the pipeline rejected the query, TimeoutError when no
        reply came within `timeout` seconds. `prompt`: a registry label or version to
        answer with instead of the served label. `conversation`: the question is a turn of
        this conversation (of `tenant`), answered with its memory after its earlier turns.
        `variables`: user metadata the prompt's template renders."""
        query = self._query(
            question,
            tenant,
            top_k,
            user,
            retrieval_mode,
            prompt,
            conversation=conversation,
            variables=variables,
        )
        reply = await self._request(self._topic_for(query), [query], timeout)
        assert isinstance(reply[0], ResponseGenerated)
        return reply[0]

    async def stream(
        self,
        question: str,
        tenant: str = "default",
        *,
        top_k: int | None = None,
        user: str | None = None,
        retrieval_mode: RetrievalMode | None = None,
        prompt: str | None = None,
        timeout: float | None = None,
        conversation: str | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> AsyncIterator[str | ResponseGenerated]:
        """Ask as ask() does, yielding the answer's text in pieces as the model writes it
        and then its ResponseGenerated (always last, and the whole answer): with a backend
        that does not stream, only the ResponseGenerated.

        The pieces are those of the first generation of the answer. If that one fails
        and the stage retries, the retry's pieces are not yielded; the ResponseGenerated
        still is, so compare its answer with the pieces when that matters. Raises as
        ask() does, after the pieces that came."""
        query = self._query(
            question,
            tenant,
            top_k,
            user,
            retrieval_mode,
            prompt,
            conversation=conversation,
            variables=variables,
        )
        queue: asyncio.Queue[Reply | ResponseDelta] = asyncio.Queue()
        self._streams[query.trace_id] = queue
        loop = asyncio.get_running_loop()
        # A deadline, not a timeout scope: a scope would be open across our yields.
        deadline = loop.time() + (timeout or self._timeout)
        stream_id: str | None = None
        next_seq, early = 0, dict[int, str]()
        try:
            await self._publisher.publish(self._topic_for(query), [(_key(query), encode(query))])
            while True:
                reply = await asyncio.wait_for(queue.get(), max(deadline - loop.time(), 0))
                if isinstance(reply, RequestFailed):
                    raise RequestError(reply)
                if isinstance(reply, ResponseGenerated):
                    yield reply
                    return
                if not isinstance(reply, ResponseDelta):
                    continue
                stream_id = stream_id or reply.stream_id
                if reply.stream_id != stream_id or reply.seq < next_seq:
                    continue  # a retry's pieces, or one seen already
                early[reply.seq] = reply.text
                while next_seq in early:  # in order, even if the broker reordered
                    yield early.pop(next_seq)
                    next_seq += 1
        finally:
            self._streams.pop(query.trace_id, None)

    def _topic_for(self, query: QueryReceived) -> str:
        """Turns of a conversation go through the conversation stage; other questions
        straight to prompting (no extra hop)."""
        topics = self._kafka.topics
        return topics.turns if query.conversation_id is not None else topics.queries

    def _query(
        self,
        question: str,
        tenant: str,
        top_k: int | None,
        user: str | None,
        retrieval_mode: RetrievalMode | None,
        prompt: str | None,
        *,
        conversation: str | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> QueryReceived:
        try:
            return QueryReceived(
                conversation_id=conversation,
                variables=dict(variables or {}),
                trace_id=new_id(),
                tenant=tenant,
                producer=self._name,
                question=question,
                top_k=top_k,
                user=user,
                retrieval_mode=retrieval_mode,
                prompt_ref=prompt,
            )
        except ValidationError as exc:
            raise InvalidEvent(f"invalid question: {_first_error(exc)}") from exc

    async def ingest(
        self,
        documents: Iterable[DocumentSubmitted | Mapping[str, Any]],
        tenant: str = "default",
        *,
        timeout: float | None = None,
        on_indexed: Callable[[DocumentIndexed], None] | None = None,
    ) -> list[DocumentIndexed]:
        """Publish documents and await their DocumentIndexed replies, in input order.

        Mappings need `doc_id` and `text` (`title`, `source` optional)."""
        events = [
            d
            if isinstance(d, DocumentSubmitted)
            else DocumentSubmitted(trace_id=new_id(), tenant=tenant, producer=self._name, **d)
            for d in documents
        ]
        replies = await self._request(self._kafka.topics.documents, events, timeout, on_indexed)
        return [r for r in replies if isinstance(r, DocumentIndexed)]

    async def delete(
        self, doc_id: str, tenant: str = "default", *, timeout: float | None = None
    ) -> DocumentIndexed:
        """Withdraw a document: the indexing stage deletes all its chunks from `tenant`
        (no other tenant's) and replies with a DocumentIndexed of 0 chunks. It travels as
        the document's submissions do, so it is handled in order with them."""
        try:
            event = DocumentWithdrawn(trace_id=new_id(), tenant=tenant, producer=self._name, doc_id=doc_id)
        except ValidationError as exc:
            raise InvalidEvent(f"invalid withdrawal: {_first_error(exc)}") from exc
        [reply] = await self._request(self._kafka.topics.documents, [event], timeout)
        assert isinstance(reply, DocumentIndexed)
        return reply

    async def push_artifacts(
        self,
        prompt: str,
        artifacts: Iterable[ArtifactContent | Mapping[str, Any]],
        tenant: str = "default",
        *,
        timeout: float | None = None,
    ) -> ArtifactsIndexed:
        """Store prompt artifacts for the prompt named `prompt` in `tenant`, as one set;
        the reply names the set's version (what a prompt version's `artifact_set` pins)
        and the artifacts' ids. The same artifacts again store nothing new. Mappings need
        `text` (`input` and `output` together, `tags`: optional)."""
        try:
            contents = [a if isinstance(a, ArtifactContent) else ArtifactContent(**a) for a in artifacts]
            event = ArtifactsSubmitted(
                trace_id=new_id(), tenant=tenant, producer=self._name, prompt=prompt, artifacts=contents
            )
        except (ValidationError, TypeError) as exc:
            detail = _first_error(exc) if isinstance(exc, ValidationError) else str(exc)
            raise InvalidEvent(f"invalid artifacts: {detail}") from exc
        [reply] = await self._request(self._kafka.topics.prompt_artifacts, [event], timeout)
        assert isinstance(reply, ArtifactsIndexed)
        return reply

    async def remove_artifacts(
        self,
        prompt: str,
        tenant: str = "default",
        *,
        artifact_set: str = "",
        ids: Sequence[str] = (),
        timeout: float | None = None,
    ) -> ArtifactsIndexed:
        """Remove artifacts of `prompt` in `tenant` (no other tenant's): of `artifact_set`
        and/or with these `ids`; with neither, all of the prompt's. The reply says how many."""
        try:
            event = ArtifactsWithdrawn(
                trace_id=new_id(),
                tenant=tenant,
                producer=self._name,
                prompt=prompt,
                artifact_set=artifact_set,
                ids=list(ids),
            )
        except ValidationError as exc:
            raise InvalidEvent(f"invalid removal: {_first_error(exc)}") from exc
        [reply] = await self._request(self._kafka.topics.prompt_artifacts, [event], timeout)
        assert isinstance(reply, ArtifactsIndexed)
        return reply

    async def feedback(
        self,
        trace_id: str,
        value: bool | float | str,
        data_type: FeedbackType = "BOOLEAN",
        *,
        name: str = "user",
        comment: str = "",
        user: str | None = None,
        tenant: str = "default",
    ) -> FeedbackReceived:
        """Rate an answer (by the trace id of its ResponseGenerated): thumbs as BOOLEAN,
        stars or scores as NUMERIC, labels as CATEGORICAL. Returns once the broker has it;
        the analytics process stores it with the trace's prompt version and model."""
        try:
            event = FeedbackReceived(
                trace_id=trace_id,
                tenant=tenant,
                producer=self._name,
                name=name,
                data_type=data_type,
                value=value,
                comment=comment,
                user=user,
            )
        except ValidationError as exc:
            raise InvalidEvent(f"invalid feedback: {_first_error(exc)}") from exc
        await self._publisher.publish(self._kafka.topics.feedback, [(trace_id.encode(), encode(event))])
        return event

    async def _request(
        self,
        topic: str,
        events: list[Any],
        timeout: float | None,
        on_reply: Callable[[Any], None] | None = None,
    ) -> list[Reply]:
        loop = asyncio.get_running_loop()
        futures = []
        for event in events:
            future: asyncio.Future[Reply] = loop.create_future()
            if on_reply is not None:
                future.add_done_callback(lambda f: on_reply(f.result()) if not f.exception() else None)
            self._pending[event.trace_id] = future
            futures.append(future)
        try:
            await self._publisher.publish(topic, [(_key(e), encode(e)) for e in events])
            async with asyncio.timeout(timeout or self._timeout):
                replies = await asyncio.gather(*futures)
        finally:
            for event in events:
                self._pending.pop(event.trace_id, None)
        for reply in replies:
            if isinstance(reply, RequestFailed):
                raise RequestError(reply)
        return list(replies)

    def _read_replies(self, consumer: Any, loop: asyncio.AbstractEventLoop) -> None:
        """On a thread of its own, blocked in librdkafka until a reply comes: what one
        fetch brought is handed to the event loop in one call (a consume per call through
        a thread pool woke two threads per reply)."""
        while not self._closing.is_set():
            try:
                # consume() waits its full timeout unless num_messages arrive: wait for
                # one, then take what is already there, so a reply is handed over at once.
                messages = consumer.consume(num_messages=1, timeout=0.2)
                if messages:
                    messages += consumer.consume(num_messages=500, timeout=0)
            except Exception as exc:  # noqa: BLE001  # one bad poll must not end every pending ask
                log.warning("reading replies failed, retrying: %s", exc)
                self._closing.wait(0.2)
                continue
            replies = [(m.key(), m.value()) for m in messages if m.error() is None]
            if not replies:
                continue
            try:
                loop.call_soon_threadsafe(self._settle, replies)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _settle(self, replies: list[tuple[bytes | None, bytes | None]]) -> None:
        """On the loop: resolve the asks (and feed the streams) these replies answer.
        Every client reads every reply; the pipeline keys each by its trace id, so the
        replies of other clients' requests are skipped undecoded."""
        for key, value in replies:
            if key is not None and not self._waiting_for(key):
                continue
            try:
                reply = _replies.validate_json(value or b"")
            except ValidationError:
                continue  # not ours to judge: the pipeline dead-letters bad events
            queue = self._streams.get(reply.trace_id)
            if queue is not None:
                queue.put_nowait(reply)
            if isinstance(reply, ResponseDelta):
                continue
            future = self._pending.get(reply.trace_id)
            if future is not None and not future.done():
                future.set_result(reply)

    def _waiting_for(self, key: bytes) -> bool:
        trace_id = key.decode(errors="replace")
        return trace_id in self._pending or trace_id in self._streams


def _key(event: Any) -> bytes:
    """A conversation's turns are keyed by conversation, and a document's submissions and
    withdrawals by document, so that one worker sees them in order; everything else by
    trace id."""
    if isinstance(event, QueryReceived) and event.conversation_id is not None:
        return conversation_key(event.tenant, event.conversation_id).encode()
    if isinstance(event, DocumentSubmitted | DocumentWithdrawn):
        return document_key(event.tenant, event.doc_id).encode()
    if isinstance(event, ArtifactsSubmitted | ArtifactsWithdrawn):
        return artifacts_key(event.tenant, event.prompt).encode()
    return str(event.trace_id).encode()


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]
