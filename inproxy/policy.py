"""PrefixPolicy: an Authorizer from a list of (identity, bucket, key prefix, actions) rules.

::

    policy = PrefixPolicy([
        {"identity": "alice", "bucket": "data", "prefix": "team-a/", "actions": "read"},
        {"identity": "alice", "bucket": "data", "prefix": "team-a/inbox/", "actions": ["PutObject"]},
        Rule(identity=lambda who: who.claims.get("role") == "admin", bucket="*", actions="*"),
    ])
    ProxyServer(backends=..., authorizer=policy)

A request is allowed when any rule allows it; how a rule matches depends on what
the operation reads or writes:

* **object operations** (GetObject, PutObject, CopyObject, the multipart calls...):
  the rule's actions include the operation and the key starts with the rule's prefix;
* **listings** (ListObjects, ListObjectsV2, ListObjectVersions, ListMultipartUploads):
  the rule's actions include the operation and the request's ``prefix`` lies inside the
  rule's prefix (no ``prefix`` is the whole bucket, so listing a bucket needs a rule
  without a prefix);
* **HeadBucket, GetBucketLocation, ListBuckets** (per bucket): any rule of the identity
  on the bucket, whatever its actions or prefix;
* **DeleteObjects**: a rule on the bucket with ``DeleteObject`` (or ``DeleteObjects``);
  the proxy then authorizes ``DeleteObject`` for every key in the request, so the
  prefixes are enforced key by key;
* **other bucket operations** (CreateBucket, PutBucketPolicy...): a rule naming the
  operation (or ``"*"``) *without* a prefix.

Matching is by exact string prefix, as in S3: ``"team-a/"`` does not cover
``"team-ab/x"``, ``"team-a"`` does.  Identity strings match :attr:`Identity.name`;
a callable gets the :class:`~inproxy.Identity` (for the method or claims) and must be
a plain, fast, non-blocking function.  The policy keeps no cache: the proxy's
``cache_decisions`` does that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Union

from .hooks import Authorizer, Decision
from .s3 import operations as _ops
from .s3.operations import LISTING_OPERATIONS, READ_OPERATIONS

if TYPE_CHECKING:
    from .context import AccessRequest
    from .identity import Identity

__all__ = ["ALL_OPERATIONS", "LISTING_OPERATIONS", "PrefixPolicy", "READ_OPERATIONS", "Rule",
           "WRITE_OPERATIONS", "expand_actions"]

#: Bucket operations any rule on the bucket allows.
_BUCKET_PRESENCE = frozenset({"HeadBucket", "GetBucketLocation", "ListBuckets"})

#: Operations that create, change or delete objects (not bucket configuration).
WRITE_OPERATIONS = frozenset({
    "PutObject", "CopyObject", "DeleteObject", "DeleteObjects", "CreateMultipartUpload", "UploadPart",
    "UploadPartCopy", "CompleteMultipartUpload", "AbortMultipartUpload", "PutObjectTagging",
    "DeleteObjectTagging", "PutObjectAcl", "PutObjectRetention", "PutObjectLegalHold", "RestoreObject",
})


def _all_operations() -> frozenset[str]:
    names = {"ListBuckets", "ListObjects", "ListObjectsV2", "ListObjectVersions", "ListMultipartUploads",
             "GetBucketLocation", "HeadBucket", "CreateBucket", "DeleteBucket", "DeleteObjects",
             "HeadObject", "GetObject", "PutObject", "CopyObject", "DeleteObject",
             "CreateMultipartUpload", "CompleteMultipartUpload", "UploadPart", "UploadPartCopy",
             "ListParts", "AbortMultipartUpload", "RestoreObject", "SelectObjectContent"}
    for suffix in _ops._BUCKET_SUBRESOURCES.values():
        names.update(f"{verb}Bucket{suffix}" for verb in _ops._METHOD_VERB.values())
    for suffix in _ops._OBJECT_SUBRESOURCES.values():
        names.update(f"{verb}Object{suffix}" for verb in _ops._METHOD_VERB.values())
    return frozenset(names)


#: Every operation name the proxy classifies requests as (what ``actions`` may name).
ALL_OPERATIONS = _all_operations() | READ_OPERATIONS | WRITE_OPERATIONS

_GROUPS = {"read": READ_OPERATIONS, "write": WRITE_OPERATIONS}

IdentityMatcher = Union[str, Callable[["Identity"], bool]]


def expand_actions(actions: "str | Iterable[str]") -> frozenset[str] | None:
    """The operation names of ``actions``: ``"*"`` (None: every operation), ``"read"``,
    ``"write"``, one operation name, or a list of those.  Unknown names raise ValueError."""
    if isinstance(actions, str):
        actions = [actions]
    out: set[str] = set()
    items = list(actions)
    if not items:
        raise ValueError("a rule needs at least one action")
    for action in items:
        if not isinstance(action, str):
            raise TypeError(f"actions must be strings, got {type(action).__name__}")
        if action == "*":
            return None
        if action in _GROUPS:
            out |= _GROUPS[action]
        elif action in ALL_OPERATIONS:
            out.add(action)
        else:
            raise ValueError(f"unknown S3 action {action!r}")
    return frozenset(out)


@dataclass(frozen=True)
class Rule:
    """Allows ``identity`` the ``actions`` on ``bucket`` (``"*"``: any) under ``prefix``."""

    identity: IdentityMatcher
    bucket: str
    prefix: str = ""
    actions: Any = "read"
    operations: frozenset[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.identity, str) and self.identity) and not callable(self.identity):
            raise TypeError("identity must be a name, '*' or a callable (Identity) -> bool")
        if not isinstance(self.bucket, str) or not self.bucket:
            raise ValueError("bucket must be a bucket name or '*'")
        if not isinstance(self.prefix, str):
            raise TypeError("prefix must be a str")
        object.__setattr__(self, "operations", expand_actions(self.actions))

    @classmethod
    def coerce(cls, value: "Rule | Mapping[str, Any]") -> "Rule":
        if isinstance(value, Rule):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"identity", "bucket", "prefix", "actions"}
            if unknown:
                raise ValueError(f"unknown rule fields: {sorted(unknown)}")
            return cls(**value)
        raise TypeError(f"not a rule: {value!r}")

    def applies_to(self, identity: "Identity", bucket: str | None) -> bool:
        """Whether this rule is about this identity and bucket at all."""
        if bucket is None or (self.bucket != "*" and self.bucket != bucket):
            return False
        if isinstance(self.identity, str):
            return self.identity == "*" or self.identity == identity.name
        return self.identity(identity) is True

    def grants(self, operation: str) -> bool:
        return self.operations is None or operation in self.operations

    def allows(self, access: "AccessRequest") -> bool:
        """Whether this rule alone allows ``access``."""
        if not self.applies_to(access.identity, access.bucket):
            return False
        op = access.operation
        if op in _BUCKET_PRESENCE:
            return True
        if access.key is not None:
            return self.grants(op) and access.key.startswith(self.prefix)
        if op in LISTING_OPERATIONS:
            return self.grants(op) and (access.prefix or "").startswith(self.prefix)
        if op == "DeleteObjects":
            return self.grants("DeleteObject") or self.grants("DeleteObjects")
        return self.grants(op) and self.prefix == ""


class PrefixPolicy(Authorizer):
    """An Authorizer that allows what any of its :class:`Rule` s (or rule dicts) allows."""

    def __init__(self, rules: Iterable["Rule | Mapping[str, Any]"]) -> None:
        self.rules = tuple(Rule.coerce(rule) for rule in rules)

    def __repr__(self) -> str:
        return f"PrefixPolicy({len(self.rules)} rules)"

    def check(self, access: "AccessRequest") -> Decision:
        """The decision, synchronously."""
        for number, rule in enumerate(self.rules):
            if rule.allows(access):
                return Decision(True, reason=f"rule {number}")
        return Decision(False, reason="no rule matches")

    async def authorize(self, access: "AccessRequest") -> Decision:
        return self.check(access)
