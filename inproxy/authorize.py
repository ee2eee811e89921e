"""Authorization of one request: the main access check (and, for multi-object
operations, every object it touches)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors

if TYPE_CHECKING:
    from .context import RequestContext
    from .pipeline import Pipeline


async def authorize_request(pipeline: "Pipeline", ctx: "RequestContext") -> None:
    """Raise AccessDenied unless the authorizer allows everything this request does."""
    if not await pipeline.is_allowed(ctx.access):
        raise errors.AccessDenied()
