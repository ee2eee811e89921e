"""Tests for inproxy.secrets.SecretsCache."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from inproxy.credentials import Credentials
from inproxy.secrets import Cached, CacheStats, SecretsCache

T0 = 1_700_000_000.0


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Counter:
    """An async fetch returning ``prefix-N`` for its N-th call, optionally gated."""

    def __init__(self, prefix: str = "v", gate: asyncio.Event | None = None) -> None:
        self.prefix = prefix
        self.gate = gate
        self.calls = 0
        self.started = asyncio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        n = self.calls
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return f"{self.prefix}-{n}"


async def eventually(predicate, timeout: float = 2.0) -> None:
    """Let the loop run until ``predicate()`` holds (background tasks finish)."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.001)
    await asyncio.wait_for(poll(), timeout)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


# -- single flight ----------------------------------------------------------


async def test_one_fetch_for_100_concurrent_misses():
    cache = SecretsCache()
    fetch = Counter(gate=asyncio.Event())
    tasks = [asyncio.create_task(cache.get("k", fetch)) for _ in range(100)]
    await settle()
    assert fetch.calls == 1
    fetch.gate.set()
    results = await asyncio.gather(*tasks)
    assert results == ["v-1"] * 100
    assert fetch.calls == 1
    stats = cache.stats
    assert (stats.misses, stats.hits, stats.size) == (100, 0, 1)
    assert await cache.get("k", fetch) == "v-1"
    assert cache.stats.hits == 1


async def test_failing_fetch_reaches_every_waiter_and_is_not_cached():
    cache = SecretsCache()
    gate = asyncio.Event()
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise ValueError("backend down")

    tasks = [asyncio.create_task(cache.get("k", failing)) for _ in range(20)]
    await settle()
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, ValueError) and str(r) == "backend down" for r in results)
    assert cache.peek("k") is None
    assert cache.stats.failures == 1 and cache.stats.size == 0

    fetch = Counter()
    assert await cache.get("k", fetch) == "v-1"
    assert fetch.calls == 1


async def test_cancelling_first_waiter_does_not_break_the_others():
    cache = SecretsCache()
    fetch = Counter(gate=asyncio.Event())
    first = asyncio.create_task(cache.get("k", fetch))
    await fetch.started.wait()
    others = [asyncio.create_task(cache.get("k", Counter("unused"))) for _ in range(5)]
    await settle()
    first.cancel()
    await settle()
    fetch.gate.set()
    assert await asyncio.gather(*others) == ["v-1"] * 5
    assert first.cancelled()
    assert fetch.calls == 1
    assert cache.peek("k") == "v-1"


async def test_distinct_keys_never_share_values():
    cache = SecretsCache()
    gate = asyncio.Event()
    fetches = {key: Counter(f"{key[0]}:{key[1]}", gate)
               for key in [("alice", "b1"), ("bob", "b1"), ("alice", "b2")]}
    tasks = {key: [asyncio.create_task(cache.get(key, f)) for _ in range(3)]
             for key, f in fetches.items()}
    await settle()
    gate.set()
    for key, group in tasks.items():
        assert await asyncio.gather(*group) == [f"{key[0]}:{key[1]}-1"] * 3
        assert fetches[key].calls == 1
    assert cache.peek(("alice", "b1")) == "alice:b1-1"
    assert cache.peek(("bob", "b1")) == "bob:b1-1"


async def test_sync_fetch_works():
    cache = SecretsCache()
    calls = []

    def fetch() -> str:
        calls.append(1)
        return "sync"

    assert await cache.get("k", fetch) == "sync"
    assert await cache.get("k", fetch) == "sync"
    assert len(calls) == 1
    assert await cache.get("c", lambda: Cached("wrapped", ttl=5)) == "wrapped"


async def test_sync_fetch_raising_is_reported_not_cached():
    cache = SecretsCache()

    def fetch() -> str:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        await cache.get("k", fetch)
    assert cache.stats.failures == 1
    assert await cache.get("k", lambda: "ok") == "ok"


# -- lifetimes --------------------------------------------------------------


async def test_default_and_argument_ttl():
    clock = FakeClock()
    cache = SecretsCache(default_ttl=100, refresh_ahead=0, clock=clock)
    fetch = Counter()
    short = Counter("s")
    assert await cache.get("d", fetch) == "v-1"
    assert await cache.get("s", short, ttl=5) == "s-1"
    clock.advance(6)
    assert await cache.get("s", short, ttl=5) == "s-2"
    assert await cache.get("d", fetch) == "v-1"
    clock.advance(95)
    assert await cache.get("d", fetch) == "v-2"


async def test_cached_ttl_overrides_argument():
    clock = FakeClock()
    cache = SecretsCache(default_ttl=300, refresh_ahead=0, clock=clock)
    n = 0

    async def fetch() -> Cached[str]:
        nonlocal n
        n += 1
        return Cached(f"v-{n}", ttl=10)

    assert await cache.get("k", fetch, ttl=1000) == "v-1"
    clock.advance(9)
    assert await cache.get("k", fetch, ttl=1000) == "v-1"
    clock.advance(2)
    assert await cache.get("k", fetch, ttl=1000) == "v-2"


async def test_cached_expires_at_honours_margin():
    clock = FakeClock()
    cache = SecretsCache(refresh_ahead=0, expiry_margin=30, clock=clock)
    fetch = Counter()

    async def wrapped() -> Cached[str]:
        return Cached(await fetch(), expires_at=clock.now + 100)

    assert await cache.get("k", wrapped) == "v-1"
    clock.advance(69)
    assert cache.peek("k") == "v-1"
    clock.advance(2)
    assert cache.peek("k") is None
    assert await cache.get("k", wrapped) == "v-2"


async def test_credentials_expiry_margin_shortens_lifetime():
    clock = FakeClock()
    cache = SecretsCache(default_ttl=3600, refresh_ahead=0, expiry_margin=30, clock=clock)
    issued = []

    async def fetch() -> Credentials:
        creds = Credentials(f"AK{len(issued)}", "secret", expires_at=clock.now + 100)
        issued.append(creds)
        return creds

    first = await cache.get("creds", fetch)
    clock.advance(69)
    assert await cache.get("creds", fetch) is first
    clock.advance(2)  # now 71s in: inside the 30s margin of expires_at
    second = await cache.get("creds", fetch)
    assert second is not first and second.access_key == "AK1"
    assert len(issued) == 2


async def test_credentials_already_inside_margin_are_returned_not_cached():
    clock = FakeClock()
    cache = SecretsCache(expiry_margin=30, clock=clock)
    calls = 0

    async def fetch() -> Credentials:
        nonlocal calls
        calls += 1
        return Credentials("AK", "secret", expires_at=clock.now + 10)

    creds = await cache.get("creds", fetch)
    assert creds.access_key == "AK"
    assert cache.peek("creds") is None
    assert cache.stats.size == 0
    await cache.get("creds", fetch)
    assert calls == 2


async def test_non_expiring_credentials_use_ttl():
    clock = FakeClock()
    cache = SecretsCache(default_ttl=50, refresh_ahead=0, clock=clock)
    creds = Credentials("AK", "secret", expires_at=None)
    assert await cache.get("c", lambda: creds) is creds
    clock.advance(49)
    assert cache.peek("c") is creds
    clock.advance(2)
    assert cache.peek("c") is None


# -- refresh ahead ----------------------------------------------------------


async def test_refresh_ahead_serves_old_value_then_new():
    clock = FakeClock()
    cache = SecretsCache(default_ttl=300, refresh_ahead=60, clock=clock)
    gate = asyncio.Event()
    gate.set()
    fetch = Counter(gate=gate)
    assert await cache.get("k", fetch) == "v-1"
    clock.advance(250)  # 50s before the end: inside refresh_ahead
    gate.clear()
    assert await cache.get("k", fetch) == "v-1"
    await settle()
    assert fetch.calls == 2
    # While the refresh runs, further hits get the old value and start nothing.
    assert [await cache.get("k", fetch) for _ in range(5)] == ["v-1"] * 5
    assert cache.stats.refreshes == 1
    gate.set()
    await eventually(lambda: cache.peek("k") == "v-2")
    assert await cache.get("k", fetch) == "v-2"
    assert fetch.calls == 2
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.refreshes, stats.failures) == (7, 1, 1, 0)


async def test_get_fresh_serves_only_what_get_would_serve_without_fetching():
    """The synchronous fast path: a hit while fresh; nothing (so get() runs) once a refresh is
    due, once expired, or when absent; it never starts a fetch itself."""
    clock = FakeClock()
    cache = SecretsCache(default_ttl=300, refresh_ahead=60, clock=clock)
    fetch = Counter()
    missing = object()
    assert cache.get_fresh("k", missing) is missing
    assert await cache.get("k", fetch) == "v-1"
    assert cache.get_fresh("k", missing) == "v-1"
    clock.advance(239)
    assert cache.get_fresh("k", missing) == "v-1"
    clock.advance(2)  # inside refresh_ahead: get() must see it to refresh
    assert cache.get_fresh("k", missing) is missing
    assert await cache.get("k", fetch) == "v-1"
    await settle()
    assert fetch.calls == 2 and cache.get_fresh("k", missing) == "v-2"
    clock.advance(301)
    assert cache.get_fresh("k", missing) is missing
    assert fetch.calls == 2
    assert (cache.stats.hits, cache.stats.misses) == (4, 1)  # 3 fresh hits, 1 get() hit that refreshed


async def test_refresh_ahead_for_expiring_credentials():
    clock = FakeClock()
    cache = SecretsCache(clock=clock)  # defaults: ttl 300, refresh 60, margin 30
    n = 0

    async def fetch() -> Credentials:
        nonlocal n
        n += 1
        return Credentials(f"AK{n}", "s", expires_at=clock.now + 180)

    assert (await cache.get("c", fetch)).access_key == "AK1"
    clock.advance(80)  # entry ends at +150, refresh window opens at +90
    assert (await cache.get("c", fetch)).access_key == "AK1"
    assert cache.stats.refreshes == 0
    clock.advance(20)
    assert (await cache.get("c", fetch)).access_key == "AK1"
    await eventually(lambda: getattr(cache.peek("c"), "access_key", None) == "AK2")
    assert n == 2 and cache.stats.refreshes == 1


async def test_short_lived_entries_refresh_only_after_half_life():
    clock = FakeClock()
    cache = SecretsCache(refresh_ahead=60, clock=clock)
    fetch = Counter()
    await cache.get("k", fetch, ttl=10)
    clock.advance(4)
    await cache.get("k", fetch, ttl=10)
    await settle()
    assert fetch.calls == 1 and cache.stats.refreshes == 0
    clock.advance(2)
    assert await cache.get("k", fetch, ttl=10) == "v-1"
    await eventually(lambda: cache.peek("k") == "v-2")
    assert cache.stats.refreshes == 1


def scripted(answers):
    """A fetch that returns (or raises) the given answers in order."""
    results = iter(answers)

    async def fetch() -> str:
        item = next(results)
        if isinstance(item, Exception):
            raise item
        return item

    return fetch


async def test_failing_refresh_keeps_old_value_until_its_end(caplog):
    clock = FakeClock()
    cache = SecretsCache(default_ttl=300, refresh_ahead=60, clock=clock)
    fetch = scripted(["good-secret", RuntimeError("token=hunter2"), "fresh"])

    assert await cache.get("k", fetch) == "good-secret"
    clock.advance(250)
    with caplog.at_level(logging.WARNING, logger="inproxy.secrets"):
        assert await cache.get("k", fetch) == "good-secret"
        await eventually(lambda: cache.stats.failures == 1)
    assert cache.peek("k") == "good-secret"
    assert "RuntimeError" in caplog.text
    assert "hunter2" not in caplog.text and "good-secret" not in caplog.text
    # Backed off: an immediate hit does not hammer the failing backend again.
    assert await cache.get("k", fetch) == "good-secret"
    assert cache.stats.refreshes == 1
    clock.advance(51)  # past the entry's end: a real miss
    assert await cache.get("k", fetch) == "fresh"
    assert cache.stats.failures == 1


async def test_failed_refresh_is_retried_after_backoff():
    clock = FakeClock()
    cache = SecretsCache(default_ttl=300, refresh_ahead=60, clock=clock)
    fetch = scripted(["old", RuntimeError("x"), "new"])

    await cache.get("k", fetch)
    clock.advance(250)
    await cache.get("k", fetch)
    await eventually(lambda: cache.stats.failures == 1)
    clock.advance(26)  # half of the 50s left, plus one
    assert await cache.get("k", fetch) == "old"
    await eventually(lambda: cache.peek("k") == "new")
    assert cache.stats.refreshes == 2


async def test_miss_joins_running_refresh_after_expiry():
    clock = FakeClock()
    cache = SecretsCache(default_ttl=100, refresh_ahead=60, clock=clock)
    gate = asyncio.Event()
    gate.set()
    fetch = Counter(gate=gate)
    await cache.get("k", fetch)
    clock.advance(60)
    gate.clear()
    assert await cache.get("k", fetch) == "v-1"  # starts the refresh
    clock.advance(50)  # the entry has now expired; the refresh still runs
    waiter = asyncio.create_task(cache.get("k", fetch))
    await settle()
    assert not waiter.done()
    gate.set()
    assert await waiter == "v-2"
    assert fetch.calls == 2


# -- size, invalidate, clear, close -----------------------------------------


async def test_size_bound_evicts_least_recently_used():
    cache = SecretsCache(maxsize=3)
    for i in range(3):
        await cache.get(i, lambda i=i: f"v{i}")
    assert await cache.get(0, lambda: "refetched") == "v0"  # 0 is now most recent
    await cache.get(3, lambda: "v3")
    assert cache.peek(1) is None
    assert [cache.peek(k) for k in (0, 2, 3)] == ["v0", "v2", "v3"]
    stats = cache.stats
    assert stats.size == 3 and stats.evictions == 1


async def test_invalidate_and_clear():
    cache = SecretsCache()
    fetch = Counter()
    await cache.get("a", fetch)
    await cache.get("b", fetch)
    cache.invalidate("a")
    cache.invalidate("missing")
    assert cache.peek("a") is None and cache.peek("b") == "v-2"
    assert await cache.get("a", fetch) == "v-3"
    cache.clear()
    assert cache.stats.size == 0
    assert cache.peek("b") is None
    assert await cache.get("b", fetch) == "v-4"


async def test_invalidate_during_fetch_answers_waiters_but_stores_nothing():
    cache = SecretsCache()
    fetch = Counter(gate=asyncio.Event())
    early = asyncio.create_task(cache.get("k", fetch))
    await fetch.started.wait()
    cache.invalidate("k")
    later = Counter("later")
    late = asyncio.create_task(cache.get("k", later))  # must not join the stale fetch
    fetch.gate.set()
    assert await early == "v-1"
    assert await late == "later-1"
    assert cache.peek("k") == "later-1"


async def test_clear_cancels_background_refresh():
    clock = FakeClock()
    cache = SecretsCache(default_ttl=100, refresh_ahead=60, clock=clock)
    gate = asyncio.Event()
    gate.set()
    fetch = Counter(gate=gate)
    await cache.get("k", fetch)
    clock.advance(60)
    gate.clear()
    await cache.get("k", fetch)
    await settle()
    assert fetch.calls == 2
    cache.clear()
    await settle()
    gate.set()
    await settle()
    assert cache.peek("k") is None
    assert cache.stats.failures == 0


async def test_aclose_cancels_tasks_and_waiters_retry():
    cache = SecretsCache()
    hung = Counter(gate=asyncio.Event())  # never released
    waiter = asyncio.create_task(cache.get("k", hung))
    await hung.started.wait()
    await cache.aclose()
    # The waiter's fetch was cancelled, so it starts a fresh one (its own).
    hung.gate.set()
    assert await asyncio.wait_for(waiter, 2) == "v-2"
    assert hung.calls == 2


async def test_peek_changes_no_counters():
    cache = SecretsCache()
    await cache.get("k", lambda: "v")
    before = cache.stats
    assert cache.peek("k") == "v" and cache.peek("nope") is None
    assert cache.stats == before
    assert isinstance(before, CacheStats)


def test_bad_arguments_rejected():
    with pytest.raises(ValueError):
        SecretsCache(maxsize=0)
    with pytest.raises(ValueError):
        SecretsCache(default_ttl=-1)


async def test_two_caches_share_nothing():
    one, two = SecretsCache(), SecretsCache()
    await one.get("k", lambda: "one")
    assert two.peek("k") is None
    assert await two.get("k", lambda: "two") == "two"
    assert one.peek("k") == "one"


# -- several event loops ----------------------------------------------------


def _run_in_thread(coro_fn, results: dict, name: str) -> threading.Thread:
    def target() -> None:
        try:
            results[name] = asyncio.run(coro_fn())
        except BaseException as exc:  # surfaced by the test's asserts
            results[name] = exc
    thread = threading.Thread(target=target, name=name)
    thread.start()
    return thread


def _wait_until(predicate, timeout: float = 5.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        done.wait(0.005)
    raise AssertionError("condition not reached")


def test_single_flight_across_two_event_loops():
    cache = SecretsCache()
    started, release = threading.Event(), threading.Event()
    calls = []

    async def slow_fetch() -> str:
        calls.append(threading.current_thread().name)
        started.set()
        await asyncio.to_thread(release.wait, 5)
        return "shared"

    async def other_fetch() -> str:
        calls.append("other")
        return "other"

    results: dict = {}
    a = _run_in_thread(lambda: cache.get("k", slow_fetch), results, "A")
    assert started.wait(5)
    b = _run_in_thread(lambda: cache.get("k", other_fetch), results, "B")
    _wait_until(lambda: cache.stats.misses == 2)  # B is waiting on A's fetch
    release.set()
    a.join(5)
    b.join(5)
    assert results == {"A": "shared", "B": "shared"}
    assert calls == ["A"]


def test_waiter_in_other_loop_survives_owner_loop_shutdown():
    cache = SecretsCache()
    started = threading.Event()

    async def owner() -> str:
        async def never() -> str:
            started.set()
            await asyncio.Event().wait()
            return "never"
        task = asyncio.create_task(cache.get("k", never))
        await asyncio.sleep(0.2)  # B joins meanwhile
        task.cancel()
        return "owner done"  # asyncio.run now cancels the fetch task

    results: dict = {}
    a = _run_in_thread(owner, results, "A")
    assert started.wait(5)
    b = _run_in_thread(lambda: cache.get("k", lambda: "from B"), results, "B")
    a.join(5)
    b.join(5)
    assert results == {"A": "owner done", "B": "from B"}
    assert cache.peek("k") == "from B"


def test_concurrent_use_from_two_loops_keeps_values_apart():
    cache = SecretsCache(maxsize=16)

    async def worker(tag: str) -> list:
        wrong = []
        for i in range(400):
            key = ("key", i % 40)
            value = await cache.get(key, lambda key=key: f"value-{key[1]}")
            if value != f"value-{key[1]}":
                wrong.append((key, value))
            if i % 97 == 0:
                cache.invalidate(key)
            await asyncio.sleep(0)
        return wrong

    results: dict = {}
    threads = [_run_in_thread(lambda t=t: worker(t), results, t) for t in ("A", "B", "C")]
    for thread in threads:
        thread.join(20)
    assert results == {"A": [], "B": [], "C": []}
    stats = cache.stats
    assert stats.size <= 16 and stats.evictions > 0
    assert stats.hits + stats.misses == 1200
