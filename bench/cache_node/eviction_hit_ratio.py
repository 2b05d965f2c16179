"""Hit ratio of the node's eviction policies against libCacheSim on one Zipf trace.

One synthetic Zipf trace (libCacheSim's own generator, fixed seed), written
as an oracleGeneral trace file with next-access times (which Belady needs), is
replayed
through libCacheSim's LRU, S3-FIFO, SIEVE and Belady (the offline optimum)
and through :mod:`cache_node.eviction` (LRU, SIEVE, S3-FIFO) driven the way
the store drives them: on a miss, evict victims until the new object fits,
then insert; on a hit, record the access. Three cache sizes (1 %, 5 % and
10 % of the trace's unique objects). Prints the hit ratio of each.

    pip install libcachesim
    python bench/cache_node/eviction_hit_ratio.py [--requests 500000] [--objects 50000]
"""

from __future__ import annotations

import argparse
import struct
import tempfile
from pathlib import Path

import libcachesim as lcs

from cache_node.eviction import make_policy

OBJ_SIZE = 1000


def replay_ours(name: str, trace: list[int], capacity: int) -> float:
    policy = make_policy(name, capacity)  # type: ignore[arg-type]
    resident: set[int] = set()
    used = 0
    hits = 0
    for obj in trace:
        key = str(obj)
        if obj in resident:
            hits += 1
            policy.hit(key)
            continue
        while used + OBJ_SIZE > capacity:
            victim = policy.victim()
            if victim is None:
                break
            resident.discard(int(victim))
            used -= OBJ_SIZE
        policy.insert(key, OBJ_SIZE)
        resident.add(obj)
        used += OBJ_SIZE
    return hits / len(trace)


def write_oracle_trace(trace: list[int], path: Path) -> None:
    """oracleGeneral records: u32 time, u64 object id, u32 size, i64 next access (-1: none)."""
    next_access = [-1] * len(trace)
    seen: dict[int, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        next_access[i] = seen.get(trace[i], -1)
        seen[trace[i]] = i
    with path.open("wb") as fh:
        for i, (obj, nxt) in enumerate(zip(trace, next_access, strict=True)):
            fh.write(struct.pack("<IQIq", i, obj, OBJ_SIZE, nxt))


def replay_libcachesim(cls: type, reader: lcs.TraceReader, capacity: int) -> float:
    reader.reset()
    cache = cls(cache_size=capacity)
    miss_ratio, _ = cache.process_trace(reader)
    return 1.0 - float(miss_ratio)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500_000)
    parser.add_argument("--objects", type=int, default=50_000)
    parser.add_argument("--alpha", type=float, default=1.0)
    args = parser.parse_args()
    reader = lcs.SyntheticReader(
        num_of_req=args.requests,
        obj_size=OBJ_SIZE,
        alpha=args.alpha,
        num_objects=args.objects,
        seed=42,
    )
    trace = [req.obj_id for req in reader]
    oracle = Path(tempfile.mkdtemp(prefix="edgefill-trace-")) / "zipf.oracleGeneral"
    write_oracle_trace(trace, oracle)
    trace_reader = lcs.TraceReader(trace=str(oracle), trace_type=lcs.TraceType.ORACLE_GENERAL_TRACE)
    print(
        f"Zipf alpha={args.alpha}, {args.requests} requests over {args.objects} objects "
        f"({len(set(trace))} seen), {OBJ_SIZE} B each"
    )
    rows: dict[str, list[float]] = {}
    reference = {
        "libCacheSim LRU": lcs.LRU,
        "libCacheSim S3-FIFO": lcs.S3FIFO,
        "libCacheSim SIEVE": lcs.Sieve,
        "libCacheSim Belady": lcs.Belady,
    }
    ours = {"edgefill LRU": "lru", "edgefill SIEVE": "sieve", "edgefill S3-FIFO": "s3fifo"}
    fractions = (0.01, 0.05, 0.10)
    print(f"{'policy':<22}" + "".join(f"{f'{f:.0%} cache':>12}" for f in fractions))
    for label, cls in reference.items():
        rows[label] = [
            replay_libcachesim(cls, trace_reader, int(f * args.objects) * OBJ_SIZE)
            for f in fractions
        ]
    for label, name in ours.items():
        rows[label] = [
            replay_ours(name, trace, int(f * args.objects) * OBJ_SIZE) for f in fractions
        ]
    for label, values in rows.items():
        print(f"{label:<22}" + "".join(f"{v:12.4f}" for v in values))
    best_online = [
        max(rows[k][i] for k in reference if "Belady" not in k) for i in range(len(fractions))
    ]
    default = rows["edgefill S3-FIFO"]
    print(
        "edgefill S3-FIFO vs best non-Belady libCacheSim: "
        + ", ".join(f"{d - b:+.4f}" for d, b in zip(default, best_online, strict=True))
    )
    oracle.unlink()
    oracle.parent.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
