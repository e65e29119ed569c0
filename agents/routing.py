"""Routing: which prompt version answers a request, read from the prompt registry.

`Registry` is a view over the registry topic's latest record per key, held in a faust
GlobalTable in workers and in a plain dict where the CLI and the monitor read the topic
to its end. Routing is pure: the same registry, user and request give the same answer
in every worker."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache

from pydantic import TypeAdapter

from schemas.errors import PermanentError
from schemas.prompts import Experiment, LabelMoved, PromptVersion, RegistryRecord

_RECORD: TypeAdapter[PromptVersion | LabelMoved | Experiment] = TypeAdapter(RegistryRecord)


@lru_cache(maxsize=4096)
def parse(value: bytes) -> PromptVersion | LabelMoved | Experiment:
    """Records are immutable bytes: each is parsed once per process, not per request."""
    return _RECORD.validate_json(value)


def bucket(experiment: str, subject: str) -> float:
    """A stable point in [0, 1) for a user in an experiment. The experiment's name is in
    the hash, so one user's arms in two experiments are independent."""
    digest = hashlib.blake2b(f"{experiment}\x00{subject}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign(experiment: Experiment, subject: str) -> str:
    """The arm (its label) a user falls into: weights cut [0, 1) into consecutive spans."""
    point = bucket(experiment.name, subject) * sum(a.weight for a in experiment.arms)
    for arm in experiment.arms:
        point -= arm.weight
        if point < 0:
            return arm.label
    return experiment.arms[-1].label


@dataclass(frozen=True)
class Routed:
    prompt: PromptVersion
    label: str = ""  # "" when a version was asked for by hash, or for the built-in prompt
    experiment: str = ""
    arm: str = ""


class Registry:
    def __init__(self, records: Mapping[bytes, bytes | None]) -> None:
        self._records = records

    def _get(self, key: str) -> PromptVersion | LabelMoved | Experiment | None:
        value = self._records.get(key.encode())
        return parse(value) if value else None

    def _all(self, prefix: str) -> Iterator[PromptVersion | LabelMoved | Experiment]:
        for key, value in list(self._records.items()):
            if value and key.startswith(prefix.encode()):
                yield parse(value)

    def prompt(self, version: str) -> PromptVersion | None:
        found = self._get(f"prompt/{version}")
        return found if isinstance(found, PromptVersion) else None

    def label(self, name: str) -> LabelMoved | None:
        found = self._get(f"label/{name}")
        return found if isinstance(found, LabelMoved) else None

    def experiment(self, name: str) -> Experiment | None:
        found = self._get(f"experiment/{name}")
        return found if isinstance(found, Experiment) else None

    def prompts(self) -> list[PromptVersion]:
        return [r for r in self._all("prompt/") if isinstance(r, PromptVersion)]

    def labels(self) -> list[LabelMoved]:
        return sorted((r for r in self._all("label/") if isinstance(r, LabelMoved)), key=lambda r: r.label)

    def experiments(self) -> list[Experiment]:
        found = (r for r in self._all("experiment/") if isinstance(r, Experiment))
        return sorted(found, key=lambda e: e.started_at)

    def running(self, control: str) -> Experiment | None:
        """The experiment that splits traffic meant for `control` (the newest, if several)."""
        live = [e for e in self.experiments() if e.status == "running" and e.control == control]
        return live[-1] if live else None

    def resolve(self, ref: str) -> tuple[PromptVersion, str]:
        """A label or a version hash (or its unique prefix) to (version, label)."""
        pointer = self.label(ref)
        if pointer is not None:
            prompt = self.prompt(pointer.version)
            if prompt is None:
                raise PermanentError(f"label {ref!r} points at {pointer.version}, which the registry lacks")
            return prompt, ref
        exact = self.prompt(ref)
        if exact is not None:
            return exact, ""
        matches = [p for p in self.prompts() if len(ref) >= 4 and p.version.startswith(ref)]
        if len(matches) == 1:
            return matches[0], ""
        known = ", ".join(sorted(label.label for label in self.labels())) or "none yet"
        raise PermanentError(
            f"no prompt label or version {ref!r} in the registry (labels: {known}); see `llmops prompts list`"
        )

    def route(self, served: str, subject: str, ref: str | None, fallback: PromptVersion) -> Routed:
        """What answers one request: the label or version it pinned (`ref`), else the
        `served` label. A label that a running experiment controls is split between the
        arms, sticky per `subject` (the user, else the trace). With no served label in
        the registry, `fallback` (the built-in prompt) answers."""
        wanted = ref or served
        experiment = self.running(wanted)
        if experiment is not None:
            arm = assign(experiment, subject)
            prompt, label = self.resolve(arm)
            return Routed(prompt, label, experiment.name, arm)
        if not ref and self.label(served) is None:
            return Routed(fallback)
        prompt, label = self.resolve(wanted)
        return Routed(prompt, label)


HISTORY_KEPT = 50


def move_label(registry: Registry, label: str, version: str, by: str, reason: str = "") -> LabelMoved:
    """The record that points `label` at `version`, remembering where it pointed."""
    current = registry.label(label)
    history = list(current.history) if current else []
    if current is not None and current.version != version:
        history.append(current.version)
    return LabelMoved(
        label=label, version=version, history=history[-HISTORY_KEPT:], moved_by=by, reason=reason
    )


def roll_back(registry: Registry, label: str, by: str, reason: str = "") -> LabelMoved:
    """The record that points `label` back where it pointed before its last move."""
    current = registry.label(label)
    if current is None:
        raise PermanentError(f"no label {label!r} in the registry")
    if not current.history:
        raise PermanentError(f"label {label!r} has no earlier version: nothing to roll back to")
    return LabelMoved(
        label=label, version=current.history[-1], history=current.history[:-1], moved_by=by, reason=reason
    )
