"""Pre-positioning: each node fills the keys it owns of its site's fill plan.

The operator renders only *where* each ContentSet's catalogue is (a prefix
listing or a manifest object); every node resolves it itself, keeps the keys
it owns by rendezvous hashing over the site's members (``copies`` owners per
key) and fills them, highest priority first and by popularity rank, inside
the EdgeSite's daily fill window, under a rate cap shared by all of its fill
streams and a byte budget per window (the Open Connect fill model).

Modules, plain functions first, the running parts last:

* :mod:`.window` - the daily fill window in an IANA time zone (DST-correct);
* :mod:`.catalogue` - manifest parsing and source resolution;
* :mod:`.plan` - ownership and fill order;
* :mod:`.throttle` - the shared token bucket and the per-window byte budget;
* :mod:`.partial` - durable partial fills, so a restart resumes piece-exact;
* :mod:`.sources` - the fill chain: old owners by peer fill, then the origin;
* :mod:`.scheduler` - the loop that ties it together and reports progress.
"""
