"""The peer port: objects for members and child sites, and cache digests.

``GET|HEAD /peer/v1/objects/<key>`` serves exactly like the client port
(ranges, ``If-Match`` for resumes, cut-through, abort on failure) but needs
the site secret instead of a client token, and fills through the chain that
:meth:`cache_node.peering.Peering.chain` picks for the sender: a member gets
no further member hops, another site gets this site's owner.

``GET /peer/v1/digest`` returns this node's Bloom digest; ``?scope=site``
merges the digests of every member (what siblings fetch through the site's
peer Service, whichever pod answers).
"""

from __future__ import annotations

from aiohttp import web

from cache_node.appkeys import NODE
from cache_node.bloom import digest_of
from cache_node.objkeys import KeyRejectedError, normalise
from cache_node.peering import OBJECTS_PATH, PeerAuthError, check_auth, parse_hop
from cache_node.serve import method_answer, request_path, serve_key


async def peer_object(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    peering = node.peering
    answer = method_answer(request.method)
    if answer is not None:
        return answer
    try:
        check_auth(request.headers.get("Authorization"), peering.secret if peering else None)
    except PeerAuthError as exc:
        node.metrics.peer_requests.labels("unknown", "unauthorized").inc()
        return web.Response(status=401, text=f"{exc}\n", headers={"WWW-Authenticate": "Bearer"})
    assert peering is not None
    if not node.ready or node.loader is None:
        return web.Response(status=503, text="starting\n", headers={"Retry-After": "5"})
    raw = request_path(request)
    if not raw.startswith(OBJECTS_PATH):
        return web.Response(status=404)
    try:
        key = normalise("/" + raw[len(OBJECTS_PATH) :])
    except KeyRejectedError as exc:
        return web.Response(status=exc.status, text=exc.reason + "\n")
    hop = parse_hop(request.headers, peering.member_names())
    if hop.hops > peering.config.max_hops or peering.site in hop.via[:-1]:
        # Defence in depth: a sender ignoring the via list cannot make us loop.
        node.metrics.peer_requests.labels("site", "loop").inc()
        return web.Response(status=508, text="loop detected in X-EdgeFill-Via\n")
    sender = "member" if hop.from_member else ("site" if hop.hops else "member")
    if "only-if-cached" in request.headers.get("Cache-Control", "").lower() and (
        node.store is None or key not in node.store
    ):
        # RFC 9111, 5.2.1.7: answer from the store or 504, never fill. Pre-positioning asks
        # a key's former owner this way, so a move costs no origin fetch on either side.
        node.metrics.peer_requests.labels(sender, "not_cached").inc()
        return web.Response(status=504, text="not cached here (only-if-cached)\n")
    node.metrics.peer_requests.labels(sender, "accepted").inc()
    return await serve_key(request, node, key, peering.chain(key, hop))


async def peer_digest(request: web.Request) -> web.Response:
    node = request.app[NODE]
    peering = node.peering
    try:
        check_auth(request.headers.get("Authorization"), peering.secret if peering else None)
    except PeerAuthError as exc:
        return web.Response(status=401, text=f"{exc}\n", headers={"WWW-Authenticate": "Bearer"})
    assert peering is not None
    if node.store is None or not node.ready:
        return web.Response(status=503, text="starting\n")
    store = node.store
    local = node.digest.get(store.keys, store.version)
    if request.query.get("scope") != "site":
        return web.Response(body=local.to_bytes(), content_type="application/octet-stream")
    merged = digest_of(())
    merged.union(local)
    for member in peering.members:
        if member.name == peering.me:
            continue
        other = await peering.fetch_digest(member.peer_url, "node")
        if other is not None and (other.bits, other.hashes) == (merged.bits, merged.hashes):
            merged.union(other)
    return web.Response(body=merged.to_bytes(), content_type="application/octet-stream")
