"""Zero-copy relay of a known number of bytes between two sockets, inside the event loop.

``await splice(src_fd, dst_fd, count, timeout=...)`` moves exactly ``count`` bytes from
one connected non-blocking socket to another through a pipe with Linux ``splice(2)``:
the bytes go socket -> pipe -> socket as page references and never enter Python.

How it runs inside asyncio (the default selector loop and uvloop alike):

* the caller owns the two sockets through asyncio transports; it guarantees that, while
  the splice runs, the source's transport is paused for reading and the destination's has
  nothing in its write buffer, so the transports neither take bytes from the source nor
  interleave bytes into the destination (the destination may keep reading: an upload's
  early answer).
* asyncio (and uvloop) refuse ``add_reader`` on an fd a transport owns, so the relay works
  on ``os.dup``-ed fds: epoll registers (file, fd) pairs, so a duplicate can be watched
  beside the transport's own registration.  The duplicates are unregistered before they
  are closed (an fd closed while registered would leave a stale epoll entry).
* the syscall is always tried first; readiness (``add_reader``/``add_writer``) is awaited
  only after EAGAIN, since every readiness wait costs a loop iteration and two epoll_ctl.
  Without EAGAIN the relay still yields to the loop every ``_YIELD_BYTES`` so a fast pair
  of sockets does not starve the other tasks.
* one deadline, checked lazily: a single timer handle, re-armed only when it fires early,
  compares the time of the last progress with ``timeout``.
* the pipe is filled only when empty and then drained, so bytes never sit in it
  unaccounted for: they are written to the destination or the call raises.  After any
  exception the two sockets are mid-stream and must be closed by the caller.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import sys

__all__ = ["available", "splice", "Pipe", "Pipes", "SpliceConnectionError", "SpliceIncomplete",
           "SpliceTimeout"]

_PIPE_SIZE = 1024 * 1024  # F_SETPIPE_SZ wish; /proc/sys/fs/pipe-max-size is 1 MiB by default
# A pipe smaller than this is not worth splicing through (a few KiB per system call): what
# a new pipe gets once its user is over the pipe quota (fs.pipe-user-pages-soft).
_MIN_PIPE_SIZE = 64 * 1024
_YIELD_BYTES = 4 * 1024 * 1024  # let the loop run at least this often without EAGAIN
_SPLICE = getattr(os, "splice", None)
_MOVE = getattr(os, "SPLICE_F_MOVE", 1)
_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# Errors of a socket that mean "the peer is gone": a ConnectionError for the caller.
# (ETIMEDOUT would otherwise surface as the builtin TimeoutError, i.e. asyncio's.)
_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                   errno.ENOTCONN, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
                   errno.EHOSTDOWN, errno.ESHUTDOWN})


def available() -> bool:
    """True where :func:`splice` works: Linux with ``os.splice``."""
    return sys.platform.startswith("linux") and _SPLICE is not None


class Pipe:
    """A non-blocking kernel pipe for :func:`splice`, and its size in bytes."""

    __slots__ = ("read_fd", "write_fd", "size")

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:  # a bigger pipe: fewer syscalls and loop iterations per byte
            fcntl.fcntl(self.write_fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # EPERM above pipe-max-size or over the user's pipe quota: keep the default
        try:
            self.size = fcntl.fcntl(self.write_fd, _F_GETPIPE_SZ)
        except OSError:  # pragma: no cover - kernels without F_GETPIPE_SZ
            self.size = 64 * 1024

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1


class Pipes:
    """At most ``limit`` pipes for splicing, each reused from one splice to the next.

    Why a bound: every pipe of 1 MiB counts against its user's pipe quota
    (``fs.pipe-user-pages-soft``, 64 MiB by default, shared by all the user's processes);
    past it new pipes get a few KiB and a splice through one crawls.  So a proxy keeps at
    most ``limit`` pipes, :meth:`take` says None when they are all in use or a new one came
    out small, and the caller copies through Python instead.  Reuse also saves a pipe's
    creation and closing per splice.  Meant for one event loop; no global state.
    """

    def __init__(self, limit: int = 32, *, min_size: int = _MIN_PIPE_SIZE) -> None:
        self.limit = limit
        self.min_size = min_size
        self._idle: list[Pipe] = []
        self._open = 0  # idle and in use
        self._closed = False

    @property
    def in_use(self) -> int:
        return self._open - len(self._idle)

    def take(self) -> Pipe | None:
        """A pipe of at least 64 KiB for one splice, or None (copy instead)."""
        self._closed = False  # serving (again, after close())
        if self._idle:
            return self._idle.pop()
        if self._open >= self.limit or not available():
            return None
        try:
            pipe = Pipe()
        except OSError:  # out of file descriptors: copying needs none
            return None
        if pipe.size < self.min_size:
            pipe.close()
            return None
        self._open += 1
        return pipe

    def give_back(self, pipe: Pipe, *, clean: bool) -> None:
        """Return a pipe after its splice.  Only a splice that completed left it empty:
        after a failure bytes may sit in it, so it is closed."""
        if clean and not self._closed:
            self._idle.append(pipe)
            return
        pipe.close()
        self._open -= 1

    def close(self) -> None:
        """Close the idle pipes (the proxy stops); those still in use are closed when given
        back.  A later :meth:`take` (the proxy started again) makes new ones."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
            self._open -= 1


class SpliceConnectionError(ConnectionError):
    """A socket of the splice failed (reset, broken pipe...).  ``moved``: bytes written to
    the destination; ``source``: True when the source failed, False for the destination."""

    moved: int = 0
    source: bool = False


class SpliceIncomplete(SpliceConnectionError):
    """The source ended (EOF) after ``moved`` of ``count`` bytes."""

    count: int = 0


class SpliceTimeout(asyncio.TimeoutError):
    """No progress for ``timeout`` seconds.  ``moved``: bytes written to the destination;
    ``source``: True when the relay was waiting for the source, False for the destination."""

    moved: int = 0
    source: bool = False


async def splice(src_fd: int, dst_fd: int, count: int, *, timeout: float | None,
                 pipe: Pipe | None = None) -> None:
    """Move exactly ``count`` bytes from socket ``src_fd`` to socket ``dst_fd``.

    Both must be connected, non-blocking stream sockets.  For the duration, the source's
    transport (if any) must be paused for reading (it must not take bytes meant for the
    splice) and the destination's must have an empty write buffer and not be written to
    (its bytes would interleave); the destination may keep reading.  Not one byte beyond
    ``count`` is read from the source.  ``timeout``: seconds without progress before
    :class:`SpliceTimeout` (None or 0: no limit).  Raises :class:`SpliceIncomplete` when the
    source ends early, :class:`SpliceConnectionError` when a socket fails.  A cancelled
    call leaves no reader, writer or fd behind.  ``pipe``: the caller's (from
    :class:`Pipes`, left open: empty after a complete splice, not after an exception);
    without one a pipe is made and closed for this call.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not available():
        raise OSError(errno.ENOSYS, "splice() needs Linux")
    if count == 0:
        return
    for fd in (src_fd, dst_fd):
        if os.get_blocking(fd):  # splice would block the whole loop on a blocking socket
            raise ValueError(f"fd {fd} is in blocking mode")
    loop = asyncio.get_running_loop()
    fds: list[int] = []
    own_pipe = pipe is None
    try:
        fds.append(os.dup(src_fd))
        fds.append(os.dup(dst_fd))
        if pipe is None:
            pipe = Pipe()
        await _Relay(loop, fds[0], fds[1], pipe, count, timeout or 0.0).run()
    finally:
        for fd in fds:  # readers/writers were removed in _Relay._wait's finally
            os.close(fd)
        if own_pipe and pipe is not None:
            pipe.close()


class _Relay:
    """The state of one splice: fds, counters, the pending readiness wait and the timer."""

    __slots__ = ("_loop", "_src", "_dst", "_pr", "_pw", "_count", "_left", "_read",
                 "_timeout", "_mark", "_mark_progress", "_timer", "_waiter", "_waiting_src",
                 "_pipe_size")

    def __init__(self, loop: asyncio.AbstractEventLoop, src: int, dst: int, pipe: Pipe,
                 count: int, timeout: float) -> None:
        self._loop = loop
        self._src, self._dst, self._pr, self._pw = src, dst, pipe.read_fd, pipe.write_fd
        self._count = count
        self._left = count  # bytes still to write to the destination
        self._read = 0  # bytes taken from the source
        self._timeout = timeout
        self._mark = loop.time()  # when progress was last noticed
        self._mark_progress = 0  # _read + written at that time
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_src = False
        self._pipe_size = pipe.size

    async def run(self) -> None:
        splice_ = _SPLICE
        src, dst, pr, pw = self._src, self._dst, self._pr, self._pw
        pipe_size = self._pipe_size
        in_pipe = 0
        since_yield = 0
        try:
            while self._left:
                if not in_pipe:
                    # Fill only an empty pipe: then EAGAIN can only mean "source not ready"
                    # (a pipe can look full before its byte size is reached: one slot per
                    # socket buffer fragment), and bytes in the pipe are never lost sight of.
                    try:
                        in_pipe = splice_(src, pw, min(self._left, pipe_size), None, None,
                                          _MOVE | _NONBLOCK)
                    except BlockingIOError:
                        await self._wait(src, source=True)
                        continue
                    except OSError as exc:
                        raise self._broken(exc, source=True) from exc
                    if not in_pipe:
                        error = SpliceIncomplete(
                            f"the source ended after {self._count - self._left} of {self._count} bytes")
                        error.moved, error.count, error.source = self._count - self._left, self._count, True
                        raise error
                    self._read += in_pipe
                # No SPLICE_F_MORE: it made no measurable difference (1 MiB per call), and
                # it can hold a partial last segment back while the source stalls.
                try:
                    written = splice_(pr, dst, in_pipe, None, None, _MOVE | _NONBLOCK)
                except BlockingIOError:
                    await self._wait(dst, source=False)
                    continue
                except OSError as exc:
                    raise self._broken(exc, source=False) from exc
                in_pipe -= written
                self._left -= written
                since_yield += written
                if since_yield >= _YIELD_BYTES and self._left:
                    since_yield = 0
                    self._noticed()
                    await asyncio.sleep(0)
        finally:
            timer, self._timer = self._timer, None
            if timer is not None:
                timer.cancel()

    def _broken(self, exc: OSError, *, source: bool) -> OSError:
        if exc.errno not in _GONE:
            return exc  # EBADF, EINVAL (not a socket)...: the caller's bug, as it is
        side = "source" if source else "destination"
        error = SpliceConnectionError(exc.errno, f"splice {side}: {exc.strerror}")
        error.moved, error.source = self._count - self._left, source
        return error

    def _noticed(self) -> None:
        """Move the progress mark to now if anything moved since it was last set."""
        progress = self._read + self._count - self._left
        if progress != self._mark_progress:
            self._mark_progress = progress
            self._mark = self._loop.time()

    async def _wait(self, fd: int, *, source: bool) -> None:
        """Until ``fd`` is readable (source) or writable (destination), or the deadline."""
        loop = self._loop
        self._noticed()
        if self._timeout and self._timer is None:
            self._timer = loop.call_at(self._mark + self._timeout, self._on_timer)
        waiter = self._waiter = loop.create_future()
        self._waiting_src = source
        if source:
            loop.add_reader(fd, _wake, waiter)
        else:
            loop.add_writer(fd, _wake, waiter)
        try:
            await waiter
        finally:  # also on cancellation: nothing stays registered on the fd
            self._waiter = None
            if source:
                loop.remove_reader(fd)
            else:
                loop.remove_writer(fd)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._mark + self._timeout
        waiter = self._waiter
        if waiter is not None and self._loop.time() >= deadline:
            if not waiter.done():
                side = "source" if self._waiting_src else "destination"
                error = SpliceTimeout(f"splice: no progress for {self._timeout:g} s (waiting for the {side})")
                error.moved, error.source = self._count - self._left, self._waiting_src
                waiter.set_exception(error)
            return
        # Progress since it was armed (or the relay is between waits): re-arm lazily.
        self._timer = self._loop.call_at(max(deadline, self._loop.time() + 0.001), self._on_timer)


def _wake(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)
