"""Versioned DDL: connectors/ddl/NNN_name.sql files, applied in order, each once,
recorded in `schema_migrations` with a checksum. An applied file that changed is an
error: add a new file instead. The same files serve chDB and a ClickHouse server."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from connectors.clickhouse import AnalyticsStore
from schemas.errors import PermanentError

FILE = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")

LEDGER = """CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY version"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """Statements end with `;` at the end of a line; `--` comment lines are dropped."""
        body = "\n".join(line for line in self.sql.splitlines() if not line.lstrip().startswith("--"))
        return [s.strip() for s in re.split(r";\s*$", body, flags=re.MULTILINE) if s.strip()]


def load(directory: Path) -> list[Migration]:
    if not directory.is_dir():
        raise PermanentError(f"no DDL directory at {directory}")
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = FILE.match(path.name)
        if not match:
            raise PermanentError(f"{path.name}: DDL files are named NNN_name.sql")
        found.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise PermanentError(f"two DDL files share a version in {directory}")
    return found


async def apply(store: AnalyticsStore, directory: Path) -> list[str]:
    """Apply what is not applied yet; returns the names of the files applied now."""
    await store.command(LEDGER)
    rows = await store.query("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    applied = {int(v): (name, checksum) for v, name, checksum in rows.rows}
    done = []
    for migration in load(directory):
        if migration.version in applied:
            name, checksum = applied[migration.version]
            if checksum != migration.checksum:
                raise PermanentError(
                    f"{migration.name} changed after it was applied (as {name}); "
                    "DDL files are immutable once applied: add a new file"
                )
            continue
        for statement in migration.statements():
            await store.command(statement)
        await store.insert(
            "schema_migrations",
            [{"version": migration.version, "name": migration.name, "checksum": migration.checksum}],
        )
        done.append(migration.name)
    return done
