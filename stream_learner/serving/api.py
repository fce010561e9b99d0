"""The scoring service's requests and answers, without HTTP: JSON in, JSON out.

``POST /score`` ``{"user": ID, "items": [ID, ...], "context": {NAME: VALUE}, "at_ms": T}`` answers
``{"model": NAME, "version": V, "scores": [P, ...]}``, a click probability per item in their order
(float32, written with 9 significant digits);
``POST /recommend`` ``{"user": ID, "k": 10, "candidates": [ID, ...], "context": {...}}`` answers
``{"model": NAME, "version": V, "items": [{"item": ID, "score": P}, ...]}``, best first, from the
candidates given or else the recently active items the model's snapshot carries. ``context`` and
``at_ms`` (the time the real-time features are taken at; default now) are optional everywhere.

The version in an answer is the one every score in it came from: it is read before and after
scoring, and a request that straddled a swap is scored again. A request that is not one of these
raises `BadRequest` with the reason; one that comes before any model `NotReady`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

#: Items (or candidates) one request may score.
MAX_ITEMS = 10_000
#: Scoring again after a swap during a request: a new version every few milliseconds would be needed
#: to exhaust these.
ATTEMPTS = 5

T = TypeVar("T")


class Scorer(Protocol):
    """What the service needs of `stream_learner.serving.ModelSubscriber`."""

    model_name: str

    @property
    def version(self) -> int | None: ...
    @property
    def problem(self) -> str | None: ...
    def score(
        self,
        user_id: str,
        item_ids: Sequence[str],
        context: Mapping[str, str] | None = None,
        at_ms: int | None = None,
    ) -> np.ndarray: ...
    def recommend(
        self,
        user_id: str,
        k: int = 10,
        candidates: Sequence[str] | None = None,
        context: Mapping[str, str] | None = None,
    ) -> list[tuple[str, float]]: ...


class BadRequest(ValueError):
    """The request is not one the service answers; the message says why (answered with 400)."""


class NotReady(RuntimeError):
    """No model is served yet; the message says why (answered with 503)."""


@dataclass(frozen=True)
class Limits:
    """Bounds of a request's strings (the learner's ``[validation]``: what it would refuse to learn
    from, serving refuses to score)."""

    max_id_bytes: int = 1024
    max_context_bytes: int = 1024
    max_items: int = MAX_ITEMS


class Api:
    """Answers score and recommend requests (parsed JSON objects) with ``scorer``."""

    def __init__(self, scorer: Scorer, limits: Limits | None = None) -> None:
        self.scorer = scorer
        self.limits = limits or Limits()

    def score(self, body: bytes) -> dict[str, Any]:
        request = _object(body, {"user", "items", "context", "at_ms"})
        user = self._id(request.get("user"), "user")
        items = self._ids(request.get("items"), "items")
        context = self._context(request.get("context"))
        at_ms = request.get("at_ms")
        if at_ms is not None and (not isinstance(at_ms, int) or isinstance(at_ms, bool) or at_ms < 0):
            raise BadRequest("at_ms must be a non-negative integer (milliseconds since the epoch)")
        version, scores = self._consistent(lambda: self.scorer.score(user, items, context, at_ms))
        return self._answer(version, scores=np.asarray(scores, np.float32))

    def recommend(self, body: bytes) -> dict[str, Any]:
        request = _object(body, {"user", "k", "candidates", "context"})
        user = self._id(request.get("user"), "user")
        k = request.get("k", 10)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.limits.max_items:
            raise BadRequest(f"k must be an integer from 1 to {self.limits.max_items}")
        given = request.get("candidates")
        candidates = None if given is None else self._ids(given, "candidates")
        context = self._context(request.get("context"))
        version, best = self._consistent(lambda: self.scorer.recommend(user, k, candidates, context))
        return self._answer(version, items=[{"item": item, "score": score} for item, score in best])

    def _answer(self, version: int, **fields: Any) -> dict[str, Any]:
        return {"model": self.scorer.model_name, "version": version, **fields}

    def _consistent(self, call: Callable[[], T]) -> tuple[int, T]:
        """``call()`` and the version it used: versions only grow, so one read before and after
        that are equal mean no swap happened in between."""
        for _ in range(ATTEMPTS):
            before = self.scorer.version
            if before is None:
                raise NotReady(self.scorer.problem or "no model is served yet")
            try:
                result = call()
            except LookupError as exc:  # the model went away: never once served
                raise NotReady(str(exc)) from None
            if self.scorer.version == before:
                return before, result
        raise NotReady(f"the model changed during each of {ATTEMPTS} attempts; try again")

    def _id(self, value: Any, what: str) -> str:
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{what} must be a non-empty string")
        if len(value.encode()) > self.limits.max_id_bytes:
            raise BadRequest(f"{what} is longer than {self.limits.max_id_bytes} bytes")
        return value

    def _ids(self, value: Any, what: str) -> list[str]:
        if not isinstance(value, list) or not value:
            raise BadRequest(f"{what} must be a non-empty list of item ids")
        if len(value) > self.limits.max_items:
            raise BadRequest(f"{what} has {len(value)} ids; at most {self.limits.max_items}")
        limit = self.limits.max_id_bytes
        if all(type(v) is str and v for v in value) and (  # the common case, checked at C speed
            max(map(len, value)) * 4 <= limit or max(len(v.encode()) for v in value) <= limit
        ):
            return value  # a character is at most 4 bytes of UTF-8
        for i, v in enumerate(value):
            self._id(v, f"{what}[{i}]")  # raises, naming the first bad id
        return value

    def _context(self, value: Any) -> dict[str, str] | None:
        """Context values by field name (without ``ctx.``); null or absent fields count as missing,
        and fields the model does not have are not used."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise BadRequest("context must be an object of field names to string values")
        limit = self.limits.max_context_bytes
        out = {}
        for name, v in value.items():
            if v is None:
                continue
            if not isinstance(v, str):
                raise BadRequest(f"context.{name} must be a string or null")
            if len(name.encode()) > limit or len(v.encode()) > limit:
                raise BadRequest(f"context.{name}: names and values are at most {limit} bytes")
            out[name] = v
        return out


def encode(answer: Mapping[str, Any]) -> bytes:
    """JSON of an answer; a float32 array as a list of numbers of 9 significant digits (which give
    back the same float32: a third of the time `json.dumps` takes to write each double exactly)."""
    plain = {k: v for k, v in answer.items() if not isinstance(v, np.ndarray)}
    parts = [json.dumps(plain, separators=(",", ":"))[1:-1]] if plain else []
    for key, values in answer.items():
        if isinstance(values, np.ndarray):
            numbers = ",".join(map("{:.9g}".format, values.tolist()))
            parts.append(f"{json.dumps(key)}:[{numbers}]")
    return ("{" + ",".join(parts) + "}\n").encode()


def _object(body: bytes, known: set[str]) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(value) - known)
    if unknown:
        raise BadRequest(f"unknown fields {unknown}; known: {sorted(known)}")
    return value
