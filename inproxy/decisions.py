"""Ask the authorizer through caches keyed by every input of a decision.

:func:`is_allowed` caches answers like the proxy's ``cache_decisions`` says (or as a
:class:`~inproxy.hooks.Decision` asks) under *every* input of the decision, and also
keeps *scoped* decisions (``Decision(True, ttl=60, scope_prefix="a/")``): an answer
that a hook declares valid for every key under a prefix.  A scoped answer is only ever
served to a request with the same identity (name, method and claims), operation,
bucket, method and source address, whose key (or listing prefix) starts with the scope.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Sequence

from cachetools import LRUCache

from .context import AccessRequest
from .hooks import Decision
from .s3.operations import LISTING_OPERATIONS
from .secrets import Cached

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = ["ScopedDecisions", "all_allowed", "allowed_or_pending", "decision_cache_key", "is_allowed",
           "scoped_decisions"]

log = logging.getLogger("inproxy")

# Authorizer calls in flight at once for the accesses of one request (DeleteObjects keys).
_PARALLEL_CHECKS = 32


# -- cache keys -------------------------------------------------------------------------------

def _identity_key(identity) -> tuple:
    """The identity as a decision depends on it: method, name and (a digest of) its claims."""
    claims = identity.claims
    if not claims:
        return identity.cache_key
    try:
        text = json.dumps(claims, sort_keys=True, separators=(",", ":"), default=repr)
    except (TypeError, ValueError):
        text = repr(sorted(claims.items(), key=lambda item: str(item[0])))
    return (*identity.cache_key, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())


def decision_cache_key(access: AccessRequest, identity_key: tuple | None = None) -> tuple:
    """Every input of an authorization decision: the identity (with its claims), the
    operation, bucket, key, listing prefix, method and source address.  ``identity_key``:
    ``_identity_key(access.identity)`` when the caller has it already."""
    if identity_key is None:
        identity_key = _identity_key(access.identity)
    return (identity_key, access.operation, access.bucket, access.key,
            access.prefix, access.method, access.source_ip)


# -- scoped decisions -------------------------------------------------------------------------

def _scope_base(access: AccessRequest, identity_key: tuple | None = None) -> tuple:
    """What a scoped decision must share with the request it serves: all but the key/prefix."""
    if identity_key is None:
        identity_key = _identity_key(access.identity)
    return (identity_key, access.operation, access.bucket, access.method,
            access.source_ip)


def _scoped_resource(access: AccessRequest) -> str | None:
    """The string a scope prefix is matched against: the object key, the listing prefix
    (``""``: the whole bucket), or None for requests no scope can cover."""
    if access.key is not None:
        return access.key
    if access.operation in LISTING_OPERATIONS:
        return access.prefix or ""
    return None


@dataclass
class _Scope:
    prefix: str
    allowed: bool
    expires: float


class ScopedDecisions:
    """Decisions a hook declared valid for a whole key prefix, per (identity, operation,
    bucket, method, source address).  Bounded: at most ``maxsize`` such groups (least
    recently used dropped) and ``max_scopes`` prefixes in each (oldest dropped)."""

    def __init__(self, *, maxsize: int = 10_000, max_scopes: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._groups: LRUCache = LRUCache(maxsize)
        self._max_scopes = max_scopes
        self._clock = clock
        self._lock = threading.Lock()

    def lookup(self, access: AccessRequest, identity_key: tuple | None = None) -> bool | None:
        """The scoped answer for ``access`` (a deny wins), or None when no scope covers it."""
        if not self._groups:  # no hook ever scoped a decision: the common case, answered lock-free
            return None
        resource = _scoped_resource(access)
        if resource is None:
            return None
        base = _scope_base(access, identity_key)
        now = self._clock()
        with self._lock:
            scopes = self._groups.get(base)
            if not scopes:
                return None
            scopes[:] = [s for s in scopes if s.expires > now]
            found = [s.allowed for s in scopes if resource.startswith(s.prefix)]
        if not found:
            return None
        return all(found)

    def add(self, access: AccessRequest, allowed: bool, ttl: float, scope_prefix: str) -> bool:
        """Remember a scoped answer given for ``access``; False (nothing kept) when ``access``
        itself is outside the scope, the request cannot be scoped, or ``ttl`` is not positive."""
        resource = _scoped_resource(access)
        if resource is None or not resource.startswith(scope_prefix) or not ttl > 0:
            return False
        base = _scope_base(access)
        scope = _Scope(scope_prefix, allowed, self._clock() + ttl)
        with self._lock:
            scopes = self._groups.get(base)
            if scopes is None:
                scopes = self._groups[base] = []
            scopes[:] = [s for s in scopes if not (s.prefix == scope_prefix and s.allowed == allowed)]
            scopes.append(scope)
            del scopes[:-self._max_scopes]
        return True

    def clear(self) -> None:
        with self._lock:
            self._groups.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._groups.values())


def scoped_decisions(pipeline: "Pipeline") -> ScopedDecisions:
    """The scoped-decision store of one pipeline (each proxy has its own)."""
    return pipeline.scoped_decisions


# -- asking the authorizer --------------------------------------------------------------------

_NOT_CACHED = object()


async def _within(awaitable, seconds: float):
    """Await with a deadline (asyncio.timeout costs a timer, where wait_for costs a task)."""
    async with asyncio.timeout(seconds):
        return await awaitable


def allowed_or_pending(pipeline: "Pipeline", access: AccessRequest) -> "bool | Awaitable[bool]":
    """:func:`is_allowed` without a coroutine when no authorizer must be asked (a scoped
    decision covers ``access``, or a fresh one is cached): the answer itself; otherwise an
    awaitable of it.  The common case of a request then costs no coroutine."""
    identity_key = _identity_key(access.identity)  # claims digested once, for both lookups
    scoped = scoped_decisions(pipeline).lookup(access, identity_key)
    if scoped is not None:
        return scoped
    key = ("authz", pipeline.cache_namespace, decision_cache_key(access, identity_key))
    default_ttl = max(0.0, float(pipeline.cache_decisions or 0))
    if default_ttl > 0:
        found = pipeline.cache.get_fresh(key, _NOT_CACHED)
        if found is not _NOT_CACHED:
            return found is True
    return _decide(pipeline, access, key, default_ttl)


async def is_allowed(pipeline: "Pipeline", access: AccessRequest) -> bool:
    """Ask the pipeline's authorizer, through the decision caches.

    * A scoped decision covering ``access`` answers first.
    * With ``cache_decisions > 0`` answers are cached that long under
      :func:`decision_cache_key`; a :class:`Decision` with a ``ttl`` chooses its own
      lifetime, also when ``cache_decisions`` is 0.
    * A hook that raises, times out or answers something other than a bool or a
      Decision denies, and that denial is never cached.
    """
    answer = allowed_or_pending(pipeline, access)
    return answer if isinstance(answer, bool) else await answer


async def _decide(pipeline: "Pipeline", access: AccessRequest, key: tuple, default_ttl: float) -> bool:
    """The authorizer's answer for ``access`` (no scoped or fresh decision had it), cached
    under ``key`` as :func:`is_allowed` says."""
    cache = pipeline.cache
    store = scoped_decisions(pipeline)

    async def fetch():
        return await _ask(pipeline, access, store, default_ttl)

    if default_ttl > 0:
        return (await cache.get(key, fetch, ttl=default_ttl)) is True
    cached = cache.peek(key)
    if cached is not None:
        return cached is True
    answer = await fetch()
    if isinstance(answer, Cached):
        if answer.ttl is not None and answer.ttl > 0:
            await cache.get(key, lambda: answer)
        return answer.value is True
    return answer is True


async def _ask(pipeline: "Pipeline", access: AccessRequest, store: ScopedDecisions,
               default_ttl: float) -> "bool | Cached[bool]":
    try:
        # An authorizer that answers synchronously (AllowAll, a plain function) is called as
        # is: a deadline cannot interrupt it anyway.  What it returns may still be awaitable.
        now = getattr(pipeline.authorizer, "authorize_now", None)
        decision = now(access) if now is not None else pipeline.authorizer.authorize(access)
        if inspect.isawaitable(decision):
            decision = await _within(decision, pipeline.authorize_timeout)
    except Exception as exc:
        # The type and where, never the message: a hook's message may carry anything.
        log.warning("authorizer failed (%s) for %s on %s; denying", type(exc).__name__,
                    access.operation, access.bucket)
        if log.isEnabledFor(logging.DEBUG):
            where = "; ".join(f"{f.filename}:{f.lineno} in {f.name}"
                              for f in traceback.extract_tb(exc.__traceback__))
            log.debug("authorizer failure (%s) at %s", type(exc).__name__, where)
        return Cached(False, ttl=0)
    if isinstance(decision, Decision):
        if decision.scope_prefix is not None:
            ttl = decision.ttl if decision.ttl is not None else default_ttl
            if not store.add(access, decision.allowed, ttl, decision.scope_prefix) and ttl > 0:
                log.debug("scoped decision for %s on %s ignored: the request is outside its scope "
                          "or cannot be scoped", access.operation, access.bucket)
        if decision.ttl is not None:
            return Cached(decision.allowed, ttl=decision.ttl)
        return decision.allowed
    if isinstance(decision, bool):
        return decision
    log.warning("authorizer answered a %s, not a bool or Decision, for %s on %s; denying",
                type(decision).__name__, access.operation, access.bucket)
    return Cached(False, ttl=0)


async def all_allowed(pipeline: "Pipeline", accesses: Sequence[AccessRequest]) -> bool:
    """Whether every access is allowed; stops asking at the first batch with a denial."""
    for start in range(0, len(accesses), _PARALLEL_CHECKS):
        batch = accesses[start:start + _PARALLEL_CHECKS]
        answers = await asyncio.gather(*(is_allowed(pipeline, a) for a in batch))
        if not all(answers):
            return False
    return True
