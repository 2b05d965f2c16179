"""HMAC-SHA256 URL tokens: who may fetch which keys until when.

Format (Akamai EdgeAuth style, ``~``-separated ``name=value`` fields, the MAC
last and covering every byte before ``~hmac=``)::

    kid=2024a~nbf=1700000000~exp=1700003600~acl=%2Fvod%2Ftitle-0007%2F~hmac=<64 hex>

* ``kid``: key id, the file name of the key in the mounted Secret
  (``[A-Za-z0-9._-]``, at most 64 characters); two live keys allow rotation.
* ``exp``: expiry, Unix seconds (UTC, no time zones anywhere); required.
* ``nbf``: not-before, Unix seconds; optional.
* ``acl``: the path-prefix scope, percent-encoded (so it can never contain a
  ``~`` and smuggle a field: delimiter injection). A scope ending in ``/``
  covers everything below that folder; a scope ending in ``*`` is a raw
  prefix; any other scope covers that exact key or the folder of that name
  (``/vod/a`` covers ``/vod/a`` and ``/vod/a/x`` but not ``/vod/ab``).

Parsing is strict: known fields only, each at most once, in any order, with
``hmac`` last. The MAC is compared with :func:`hmac.compare_digest`. Clock skew
is tolerated by a configured number of seconds on both bounds.

The token is checked on every request before any cache lookup (a hit is not a
free pass), it is read from the query parameter or the header, and it never
enters the cache key (keys come from the path only) nor any upstream request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MAX_LIVE_KEYS = 2
MAX_TOKEN_LENGTH = 4096
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_FIELDS = ("kid", "nbf", "exp", "acl")


class TokenRejectedError(Exception):
    """The request's token does not allow it; ``status`` is 401 (absent) or 403."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    kid: str
    expires: int
    not_before: int | None
    scope: str


def sign(claims: Claims, secret: bytes) -> str:
    """Build a token (used by content providers' URL signers and by the tests)."""
    if not _KID.match(claims.kid):
        raise ValueError(f"key id {claims.kid!r} must match {_KID.pattern}")
    if not claims.scope.startswith("/"):
        raise ValueError("the scope must be an absolute path prefix starting with '/'")
    parts = [f"kid={claims.kid}"]
    if claims.not_before is not None:
        parts.append(f"nbf={claims.not_before}")
    parts.append(f"exp={claims.expires}")
    # quote() leaves "~" alone (it is unreserved), but here it is our delimiter.
    parts.append("acl=" + urllib.parse.quote(claims.scope, safe="").replace("~", "%7E"))
    body = "~".join(parts)
    mac = hmac.new(secret, body.encode("ascii"), hashlib.sha256).hexdigest()
    return f"{body}~hmac={mac}"


def parse(token: str) -> tuple[Claims, str, str]:
    """Split a token into claims, the signed text and the MAC (hex); 403 if malformed."""
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise TokenRejectedError(403, "malformed token")
    body, sep, mac = token.rpartition("~hmac=")
    if not sep or not re.fullmatch(r"[0-9a-f]{64}", mac):
        raise TokenRejectedError(403, "malformed token: no valid hmac field at the end")
    fields: dict[str, str] = {}
    for part in body.split("~"):
        name, eq, value = part.partition("=")
        if not eq or name not in _FIELDS:
            raise TokenRejectedError(403, f"malformed token: unknown field {name!r}")
        if name in fields:
            raise TokenRejectedError(403, f"malformed token: field {name!r} given twice")
        fields[name] = value
    for required in ("kid", "exp", "acl"):
        if required not in fields:
            raise TokenRejectedError(403, f"malformed token: field {required!r} missing")
    if not _KID.match(fields["kid"]):
        raise TokenRejectedError(403, "malformed token: bad key id")
    for num in ("exp", "nbf"):
        if num in fields and not re.fullmatch(r"[0-9]{1,12}", fields[num]):
            raise TokenRejectedError(403, f"malformed token: {num} must be Unix seconds")
    try:
        scope = urllib.parse.unquote(fields["acl"], errors="strict")
    except UnicodeDecodeError:
        raise TokenRejectedError(403, "malformed token: the scope is not UTF-8") from None
    if not scope.startswith("/"):
        raise TokenRejectedError(403, "malformed token: the scope must start with '/'")
    claims = Claims(
        kid=fields["kid"],
        expires=int(fields["exp"]),
        not_before=int(fields["nbf"]) if "nbf" in fields else None,
        scope=scope,
    )
    return claims, body, mac


def scope_covers(scope: str, path: str) -> bool:
    """Does the token scope cover ``path`` (``/``-prefixed normalised key)?"""
    if scope.endswith("*"):
        return path.startswith(scope[:-1])
    if scope.endswith("/"):
        return path.startswith(scope)
    return path == scope or path.startswith(scope + "/")


def verify(
    token: str | None,
    key: str,
    keys: Mapping[str, bytes],
    now: float,
    skew: int,
) -> Claims:
    """Check a token for object ``key`` (normalised, without a leading slash).

    Raises :class:`TokenRejectedError`; returns the claims when the request may proceed.
    """
    if token is None or token == "":
        raise TokenRejectedError(401, "a token is required (query parameter or header)")
    claims, body, mac = parse(token)
    secret = keys.get(claims.kid)
    expected = hmac.new(secret or b"", body.encode("ascii"), hashlib.sha256).hexdigest()
    # Always compare, even for an unknown key id, so timing does not tell key ids apart.
    if not hmac.compare_digest(expected, mac) or secret is None:
        raise TokenRejectedError(403, "token signature does not verify")
    if now > claims.expires + skew:
        raise TokenRejectedError(403, "token expired")
    if claims.not_before is not None and now + skew < claims.not_before:
        raise TokenRejectedError(403, "token not yet valid")
    if not scope_covers(claims.scope, "/" + key):
        raise TokenRejectedError(403, "token scope does not cover this path")
    return claims


def load_keys(directory: Path) -> dict[str, bytes]:
    """Read the live keys from a mounted Secret: one file per key id.

    Kubernetes mounts Secrets with hidden ``..data`` links; names starting with
    a dot are skipped. More than two keys is a configuration error, not a
    choice we make silently.
    """
    keys: dict[str, bytes] = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if not _KID.match(entry.name):
            raise ValueError(f"token key file {entry} is not a valid key id (use {_KID.pattern})")
        secret = entry.read_bytes().strip()
        if len(secret) < 16:
            raise ValueError(f"token key {entry.name} is shorter than 16 bytes")
        keys[entry.name] = secret
    if not keys:
        raise ValueError(f"no token keys in {directory}")
    if len(keys) > MAX_LIVE_KEYS:
        raise ValueError(
            f"{len(keys)} token keys in {directory}; at most {MAX_LIVE_KEYS} may be live "
            "(remove the retired key)"
        )
    return keys
