"""The envelope every event carries. Events are frozen facts named in the past tense."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

# 2: what served a request (prompt, version, label, arm, settings) is one `Served` value
# in the query events and StageCompleted instead of fields copied into each. Version 1
# bytes still decode: each event type that changed upgrades them in `upgrade`.
SCHEMA_VERSION = 2

# Tenants end up in Milvus filter expressions and ClickHouse rows: a closed alphabet
# means no tenant string can change the meaning of a query built from it.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
Tenant = Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]
E = TypeVar("E", bound="Event")
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128)]


def new_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> datetime:
    return datetime.now(UTC)


class Frozen(BaseModel):
    """Base for every value that travels: immutable, and unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Frozen):
    """Envelope fields. `trace_id` is the Kafka key and is shared by every event of one
    request; `event_id` is unique per event and is the idempotency key."""

    event_id: Identifier = Field(default_factory=new_id)
    trace_id: Identifier
    schema_version: int = SCHEMA_VERSION
    occurred_at: AwareDatetime = Field(default_factory=utc_now)
    producer: Identifier
    tenant: Tenant = "default"

    @model_validator(mode="before")
    @classmethod
    def _upgrade_older_versions(cls, data: Any) -> Any:
        version = data.get("schema_version") if isinstance(data, dict) else None
        if isinstance(version, int) and version < SCHEMA_VERSION:
            # The model holds the current shape, so it says the current version.
            return {**cls.upgrade(dict(data), version), "schema_version": SCHEMA_VERSION}
        return data

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """An older version's fields in this version's shape; event types whose shape
        changed since `version` override this."""
        return data

    def follow(self, cls: type[E], producer: str, **fields: object) -> E:
        """The next event of the same request: same trace and tenant, new id and time."""
        return cls(trace_id=self.trace_id, tenant=self.tenant, producer=producer, **fields)
