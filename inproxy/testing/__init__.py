"""Test helpers for inproxy: local S3 back-ends (see :mod:`inproxy.testing.servers`)."""

from .servers import MotoServer, S3ServerInfo, SeaweedFS, SeaweedFSError, find_weed

__all__ = ["MotoServer", "S3ServerInfo", "SeaweedFS", "SeaweedFSError", "find_weed"]
