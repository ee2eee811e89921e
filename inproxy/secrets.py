"""A cache for secrets and decisions, shared by any number of proxies.

:class:`SecretsCache` holds backend credentials, authorization decisions, key
lookups: anything that is costly to fetch and safe to reuse for a while.  It
gives three guarantees that a plain dict does not:

* **single flight** - concurrent ``get`` calls for one missing key make one
  fetch, and every caller gets its result or its exception;
* **refresh ahead** - an entry close to its end is served at once while one
  background task fetches its successor, so callers do not wait on expiry;
* **expiry awareness** - a value with an ``expires_at`` attribute (such as
  :class:`inproxy.credentials.Credentials`) is never served within
  ``expiry_margin`` seconds of that time.

Keys are any hashable.  A key must include *every* input of the decision or
secret it names: cache an authorization decision under ``(identity, bucket,
action)``, never under ``identity`` alone, or one caller's answer leaks to
another.

Threads and event loops: the cache is meant for asyncio code, and it may be
shared between proxies running in different event loops and threads (as
``ProxyServer.run_in_thread`` does).  Its state is guarded by a
:class:`threading.Lock` that is never held across an ``await``.  A fetch runs
as a task in the loop of the caller that started it; callers in other loops
wait for the same result through a thread-safe future.  If that loop shuts
down the usual way (``asyncio.run`` cancels its tasks), the waiters elsewhere
start their own fetch; a loop that is stopped and left with pending tasks
leaves them waiting, so stop loops by cancelling their tasks.

Nothing in this module logs a cached value, a key, or an exception message,
since any of them may hold a secret.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Hashable, TypeVar, Union

from cachetools import LRUCache

__all__ = ["Cached", "CacheStats", "SecretsCache"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# A get whose flight was cancelled under it (clear/aclose/loop shutdown)
# starts a new one; the bound stops a fetch that itself raises
# CancelledError from looping forever.
_MAX_ATTEMPTS = 3

# After a failed background refresh, wait at least this long (seconds) before
# trying again, so a failing backend is not hit on every request.
_MIN_REFRESH_RETRY = 1.0


@dataclass(frozen=True)
class Cached(Generic[T]):
    """A fetched value together with the lifetime the fetch chose for it.

    Return ``Cached(value, ttl=...)`` or ``Cached(value, expires_at=...)`` from
    a fetch function to override the ``ttl`` given to :meth:`SecretsCache.get`.
    ``expires_at`` is a wall-clock UNIX time (same scale as the cache's
    ``clock``) and, like a value's own ``expires_at``, is shortened by the
    cache's ``expiry_margin``.  When both are given the earlier end wins.
    Callers of ``get`` receive ``value``, never the wrapper.
    """

    value: T
    ttl: float | None = None
    expires_at: float | None = None


#: A function that produces a value: sync or async, optionally wrapped in
#: :class:`Cached` to choose its own lifetime.
Fetch = Callable[[], Union[Awaitable[Union[T, Cached[T]]], T, Cached[T]]]


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters.

    ``hits`` counts gets served from the cache, including stale-while-
    refreshing ones.  ``misses`` counts *callers* that had to wait for a
    fetch (100 concurrent callers on one missing key are 100 misses and one
    fetch).  ``refreshes`` counts background refreshes started, ``failures``
    fetches (foreground or background) that raised, ``evictions`` live or
    expired entries dropped to respect ``maxsize``, and ``size`` the entries
    currently held that have not expired.
    """

    hits: int = 0
    misses: int = 0
    refreshes: int = 0
    failures: int = 0
    evictions: int = 0
    size: int = 0


@dataclass
class _Entry:
    value: Any
    expires_at: float
    refresh_at: float


class _Flight:
    """One fetch in progress and the thread-safe future its waiters watch."""

    __slots__ = ("background", "future", "task")

    def __init__(self, background: bool) -> None:
        self.background = background
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.task: asyncio.Task[None] | None = None


class _Counters:
    """Mutable counters; only touched with the cache's lock held."""

    __slots__ = ("hits", "misses", "refreshes", "failures", "evictions")

    def __init__(self) -> None:
        self.hits = self.misses = self.refreshes = self.failures = self.evictions = 0


class _Store(LRUCache):
    """An LRU cache that reports size evictions (and only those)."""

    def __init__(self, maxsize: int, counters: _Counters) -> None:
        super().__init__(maxsize)
        self._counters = counters

    def popitem(self) -> tuple[Any, Any]:
        # cachetools calls popitem only to make room; clear() replaces the
        # store instead, so every call here is a real eviction.
        item = super().popitem()
        self._counters.evictions += 1
        return item


class SecretsCache:
    """A bounded, expiring, single-flight cache for secrets and decisions.

    Share one instance between proxies to share what they fetched; give each
    proxy its own instance to keep them apart.  No state lives outside the
    instance.

    :param maxsize: most entries held; the least recently used is dropped.
    :param default_ttl: lifetime in seconds when neither ``get(ttl=...)`` nor
        :class:`Cached` gives one.
    :param refresh_ahead: an entry served within this many seconds of its end
        is refreshed in the background (``0`` disables it).  The refresh never
        starts before half the entry's lifetime has passed, so short-lived
        entries are not refetched on every hit.
    :param expiry_margin: a value with an ``expires_at`` attribute is dropped
        this many seconds before it; one already inside the margin is returned
        to its caller but not cached.
    :param clock: wall-clock time in UNIX seconds; tests pass a fake one.
        Wall-clock, not monotonic, because ``expires_at`` values are UNIX times.
    """

    def __init__(self, *, maxsize: int = 10_000, default_ttl: float = 300.0,
                 refresh_ahead: float = 60.0, expiry_margin: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if min(default_ttl, refresh_ahead, expiry_margin) < 0:
            raise ValueError("default_ttl, refresh_ahead and expiry_margin must be >= 0")
        self._maxsize = maxsize
        self._default_ttl = default_ttl
        self._refresh_ahead = refresh_ahead
        self._expiry_margin = expiry_margin
        self._clock = clock
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._data = _Store(maxsize, self._counters)
        self._flights: dict[Hashable, _Flight] = {}  # the current flight per key
        self._running: set[_Flight] = set()  # every live task, so none is GC'd

    # -- public API ---------------------------------------------------------

    async def get(self, key: Hashable, fetch: Fetch[T], *, ttl: float | None = None) -> T:
        """The value for ``key``, calling ``fetch()`` when it is not cached.

        ``fetch`` may be a coroutine function or a plain function.  A plain
        function is called directly in the event loop, so a blocking one must
        be wrapped by the caller (``lambda: asyncio.to_thread(blocking)``).
        It may return :class:`Cached` to choose the entry's lifetime.

        If a fetch for ``key`` is already running (in any loop), this call
        waits for it instead of starting another; its ``fetch`` is not used.
        If that fetch raises, every waiter gets the exception and nothing is
        cached.  Cancelling this call never cancels the shared fetch.
        """
        for _ in range(_MAX_ATTEMPTS):
            hit, found, start = self._claim(key)
            if start is not None:
                self._launch(key, fetch, ttl, start)
            if hit:
                return found
            flight: _Flight = found
            await _wait(flight.future)
            if not flight.future.cancelled():
                return flight.future.result()
        raise RuntimeError("fetch was cancelled repeatedly; giving up")

    def get_fresh(self, key: Hashable, default: Any = None) -> Any:
        """The cached value for ``key`` if it is neither expired nor due a refresh, counted
        as a hit; ``default`` otherwise (then :meth:`get` fetches or refreshes).  The
        synchronous fast path of :meth:`get` for callers on a hot path."""
        now = self._clock()
        with self._lock:
            entry = self._data.get(key)
            if entry is None or now >= entry.refresh_at or now >= entry.expires_at:
                return default
            self._counters.hits += 1
            return entry.value

    def peek(self, key: Hashable) -> Any | None:
        """The cached, unexpired value for ``key`` or ``None``.

        Never fetches, never starts a refresh, and leaves the counters alone.
        A cached ``None`` is indistinguishable from a missing entry.
        """
        now = self._clock()
        with self._lock:
            entry = self._data.get(key)
        return entry.value if entry is not None and now < entry.expires_at else None

    def invalidate(self, key: Hashable) -> None:
        """Forget ``key``: the next ``get`` fetches anew.

        A fetch already running for ``key`` still answers the callers waiting
        on it, but its result is not stored and later callers do not join it.
        """
        with self._lock:
            self._data.pop(key, None)
            flight = self._flights.pop(key, None)
        if flight is not None and flight.background:
            _cancel(flight.task)

    def clear(self) -> None:
        """Forget every entry and cancel background refreshes.

        Foreground fetches keep running for the callers waiting on them, but
        their results are not stored.
        """
        with self._lock:
            self._data = _Store(self._maxsize, self._counters)
            self._flights.clear()
            refreshes = [f for f in self._running if f.background]
        for flight in refreshes:
            _cancel(flight.task)

    async def aclose(self) -> None:
        """Empty the cache and cancel all of its tasks, in every loop.

        Waits for the tasks of the current loop to finish.  Callers still
        waiting on a cancelled fetch start a new one, so the cache stays
        usable afterwards.
        """
        with self._lock:
            self._data = _Store(self._maxsize, self._counters)
            self._flights.clear()
            tasks = [f.task for f in self._running if f.task is not None]
        for task in tasks:
            _cancel(task)
        loop = asyncio.get_running_loop()
        mine = [t for t in tasks if t.get_loop() is loop]
        await asyncio.gather(*mine, return_exceptions=True)

    @property
    def stats(self) -> CacheStats:
        """A consistent snapshot of the counters and current size."""
        now = self._clock()
        with self._lock:
            c = self._counters
            size = sum(1 for e in self._data.values() if now < e.expires_at)
            return CacheStats(hits=c.hits, misses=c.misses, refreshes=c.refreshes,
                              failures=c.failures, evictions=c.evictions, size=size)

    # -- lookup and flights -------------------------------------------------

    def _claim(self, key: Hashable) -> tuple[bool, Any, _Flight | None]:
        """Serve ``key`` or join/register its flight, atomically.

        Returns ``(hit, value_or_flight, flight_to_start)``.  Tasks are started
        by the caller after the lock is released: an eager task factory could
        otherwise run the fetch, and re-take the lock, inside ``create_task``.
        """
        now = self._clock()
        with self._lock:
            entry = self._data.get(key)
            if entry is not None and now < entry.expires_at:
                self._counters.hits += 1
                return True, entry.value, self._maybe_refresh(key, entry, now)
            if entry is not None:
                del self._data[key]
            self._counters.misses += 1
            flight = self._flights.get(key)
            if flight is not None:
                return False, flight, None
            flight = self._flights[key] = _Flight(background=False)
            return False, flight, flight

    def _maybe_refresh(self, key: Hashable, entry: _Entry, now: float) -> _Flight | None:
        """Register a background refresh if ``entry`` is due one (lock held)."""
        if now < entry.refresh_at or key in self._flights:
            return None
        self._counters.refreshes += 1
        flight = self._flights[key] = _Flight(background=True)
        return flight

    def _launch(self, key: Hashable, fetch: Fetch[Any], ttl: float | None,
                flight: _Flight) -> None:
        """Run ``flight`` as its own task, so no caller's cancellation stops it."""
        try:
            task = asyncio.get_running_loop().create_task(self._run(key, fetch, ttl, flight))
        except BaseException:
            self._detach(key, flight)
            flight.future.cancel()
            raise
        flight.task = task
        with self._lock:
            self._running.add(flight)
        task.add_done_callback(lambda _: self._forget(flight))

    async def _run(self, key: Hashable, fetch: Fetch[Any], ttl: float | None,
                   flight: _Flight) -> None:
        try:
            value = self._store(key, flight, await _call(fetch), ttl)
        except Exception as exc:
            self._failed(key, flight, exc)
            flight.future.set_exception(exc)
        except BaseException:
            # Cancelled (clear, aclose, loop shutdown): waiters start over.
            self._detach(key, flight)
            flight.future.cancel()
            raise
        else:
            flight.future.set_result(value)

    def _store(self, key: Hashable, flight: _Flight, result: Any, ttl: float | None) -> Any:
        """Unwrap ``result``, cache it if it lives long enough, return the value."""
        now = self._clock()
        value, expires_at = self._lifetime(result, ttl, now)
        with self._lock:
            current = self._flights.get(key) is flight
            if current:
                del self._flights[key]
            if current and expires_at > now:
                self._data[key] = _Entry(value, expires_at, self._refresh_at(now, expires_at))
        if expires_at <= now:
            log.debug("fetched value expires within expiry_margin; returned but not cached")
        return value

    def _failed(self, key: Hashable, flight: _Flight, exc: Exception) -> None:
        """Count a failed fetch; for a refresh, back off and keep the old entry."""
        now = self._clock()
        with self._lock:
            self._counters.failures += 1
            if self._flights.get(key) is flight:
                del self._flights[key]
            entry = self._data.get(key)
            if flight.background and entry is not None:
                entry.refresh_at = now + max(_MIN_REFRESH_RETRY, (entry.expires_at - now) / 2)
        if flight.background:
            # The type only: a message or a key may carry a secret.
            log.warning("background refresh failed (%s); serving the cached value "
                        "until it expires", type(exc).__name__)

    def _detach(self, key: Hashable, flight: _Flight) -> None:
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]

    def _forget(self, flight: _Flight) -> None:
        with self._lock:
            self._running.discard(flight)

    # -- lifetimes ----------------------------------------------------------

    def _lifetime(self, result: Any, ttl: float | None, now: float) -> tuple[Any, float]:
        """The value to return and the clock time its entry ends."""
        ends_at = now + (self._default_ttl if ttl is None else ttl)
        value = result
        if isinstance(result, Cached):
            value = result.value
            if result.ttl is not None or result.expires_at is not None:
                ends_at = math.inf  # the fetch's own lifetime replaces ttl
            if result.ttl is not None:
                ends_at = now + result.ttl
            if result.expires_at is not None:
                ends_at = min(ends_at, result.expires_at - self._expiry_margin)
        own = _expires_at(value)
        if own is not None:
            ends_at = min(ends_at, own - self._expiry_margin)
        return value, ends_at

    def _refresh_at(self, now: float, expires_at: float) -> float:
        if self._refresh_ahead <= 0:
            return math.inf
        return max(expires_at - self._refresh_ahead, now + (expires_at - now) / 2)


# -- helpers -----------------------------------------------------------------


async def _call(fetch: Fetch[Any]) -> Any:
    result = fetch()
    if inspect.isawaitable(result):
        result = await result
    return result


def _expires_at(value: Any) -> float | None:
    """A value's own ``expires_at`` as a UNIX time, if it has a usable one."""
    expires = getattr(value, "expires_at", None)
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        return float(expires)
    if hasattr(expires, "timestamp"):  # a datetime
        return float(expires.timestamp())
    return None


async def _wait(future: concurrent.futures.Future[Any]) -> None:
    """Wait, from any loop, until ``future`` is done; never cancel it.

    A private asyncio future per waiter is what gets cancelled when the
    waiter is, leaving the shared future (and the other waiters) untouched.
    """
    if future.done():
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_: concurrent.futures.Future[Any]) -> None:
        try:
            loop.call_soon_threadsafe(_set_done, waiter)
        except RuntimeError:
            pass  # the waiter's loop is closed: nobody is left to wake

    future.add_done_callback(wake)
    await waiter


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` from any thread (Task.cancel is not thread-safe)."""
    if task is None or task.done():
        return
    loop = task.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        task.cancel()
        return
    try:
        loop.call_soon_threadsafe(task.cancel)
    except RuntimeError:
        pass  # its loop is closed, so the task will never run again
