"""A posting index on a Redis Cluster: the same `PostingIndex` as the segment files, sharded
over the cluster's hash slots, shared by every API node and worker.

Keys (PREFIX is `songscan` unless the URL names another; G a generation; S its bucket shift):
    PREFIX:G:{T}:B       a STRING per bucket B = hash >> S: 10-byte records, the hash's low S
                         bits (big-endian uint16) then the posting (little-endian uint64, see
                         pack_postings), sorted by the low bits (a hash's postings are a run).
                         The hash tag T (the hash's top TAG_BITS bits) puts 2^(28-S-10)
                         buckets in one slot (resharding moves whole tags)
    {PREFIX}:generation  "G:S", the generation readers use; changed atomically by a switch
    {PREFIX}:building    "G:S:token" while a rebuild or compaction writes generation G (a lease)
    {PREFIX}:postings:G  how many postings generation G holds
    {PREFIX}:next        the last generation number handed out

Memory: 10 bytes a record plus a key per bucket (about 100 bytes, spread over ~BUCKET_RECORDS
records: S is chosen for that by a rebuild or compaction, at most 16 so the low bits fit two
bytes). Buckets are small because a script's GET of a bucket copies it (~2 ns a byte).

A lookup is one pipeline, which ClusterPipeline sends each master in one round trip: one call
of a read-only script carrying all the query's hashes that master serves as one packed binary
argument (it builds their buckets' keys, reads each bucket once and binary searches it; the
keys are not declared, `allow-cross-slot-keys`, and a key of a slot the node does not serve is
an error), and a GET of the generation key to notice a switch. The reply is each hash's count
(an integer array) and the records found, as one string parsed by numpy. The first round trip
gives each hash's postings, or only their count when it has more than OVERFLOW_POSTINGS (the
ones a posting budget leaves out); the few long runs the budget keeps cost a second round
trip.

Writes go through one script call per hash tag (`_ADD`): it inserts each record the bucket does
not hold yet after its hash's run, so a write retried after a failure (by the caller, or by the
client after a lost reply) leaves no duplicates; a posting is stored once per hash. A write
then waits until each master it touched has passed it to `wait_replicas` replicas (WAIT) and
raises otherwise, so what was acknowledged survives a failover. A rebuild or compaction writes
a new generation and switches `{PREFIX}:generation` to it in one script call; adds made
meanwhile go to both generations (the deduplication makes that safe), readers use the old one
until the switch, and the old one is deleted `switch_grace_s` later (a lookup that read the old
generation key finishes first).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from ..errors import IndexUnavailable
from ..fingerprint import TRIPLET_BITS
from . import expand_runs, run_starts, unpack_postings
from .segments import _rarest_within

HASH_BITS = TRIPLET_BITS
FIELD_BITS = 16  # the low bits a record keeps (two bytes): S <= 16
RECORD = np.dtype([("field", ">u2"), ("posting", "<u8")])
# A rebuild or compaction sizes buckets for about this many records each.
BUCKET_RECORDS = 128
# A lookup's first round trip returns counts, not postings, for hashes with more than this.
OVERFLOW_POSTINGS = 64
# Buckets share a hash tag (a slot) by the hash's top TAG_BITS bits: a write is one script
# call per tag it touches, at most 2^TAG_BITS (against one per bucket).
TAG_BITS = 10
# Reads and deletions send this many buckets, writes this many script calls, in one pipeline.
PIPELINE_BUCKETS = 512
PIPELINE_CALLS = 64
BUILD_LEASE_MS = 10 * 60 * 1000
# what the client raises when the cluster fails it: a node's error, or no node reachable (or
# letting it in: a wrong password) as the client learns the cluster's layout
REDIS_FAILURES = (RedisError, RedisClusterException)

# Both scripts read a bucket as RECORD-byte records: the hash's low bits (big-endian uint16)
# then its posting (little-endian uint64), sorted by the low bits; a hash's postings are a run.
_RUNS = """
local byte = string.byte
local function field_at(blob, i)  -- the low bits of record i (0-based)
  local a, b = byte(blob, i * 10 + 1, i * 10 + 2)
  return a * 256 + b
end

-- The first record at or after `lo` whose low bits are >= field (> field when `after`).
local function bound(blob, lo, hi, field, after)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local at = field_at(blob, mid)
    if at < field or (after and at == field) then lo = mid + 1 else hi = mid end
  end
  return lo
end
"""

_LOOKUP = (
    "#!lua flags=no-writes,allow-cross-slot-keys\n"
    + _RUNS
    + """
-- One call per master for all of a query's hashes on it. ARGV: the generation's key stem
-- (PREFIX:G:), 2^S, buckets a hash tag, limit, then the hashes (distinct, ascending, each a
-- big-endian uint32). Its buckets' keys are not declared: the script builds them, and a
-- bucket whose slot this node does not serve is an error, never an empty bucket. Returns
-- each hash's count and, for those with at most `limit` (0: no limit), their records,
-- concatenated.
local stem, span, tag_span = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local limit, q = tonumber(ARGV[4]), ARGV[5]
local counts, runs = {}, {}
local bucket, blob, n, at = -1, '', 0, 0
for i = 1, #q, 4 do
  local a, b, c, d = byte(q, i, i + 3)
  local h = ((a * 256 + b) * 256 + c) * 256 + d
  local field = h % span
  local this = (h - field) / span
  if this ~= bucket then
    local key = string.format('%s{%x}:%x', stem, math.floor(this / tag_span), this)
    bucket, blob, at = this, redis.call('GET', key) or '', 0
    n = #blob / 10
  end
  local lo = bound(blob, at, n, field, false)
  local hi = lo  -- runs are short but for the commonest hashes: walk to the run's end
  while hi < n and field_at(blob, hi) == field do hi = hi + 1 end
  counts[#counts + 1] = hi - lo
  if limit == 0 or hi - lo <= limit then
    runs[#runs + 1] = string.sub(blob, lo * 10 + 1, hi * 10)
  end
  at = hi
end
return {counts, table.concat(runs)}
"""
)

_ADD = (
    _RUNS
    + """
-- Is `record` one of the records of `run` (aligned on records)?
local function holds(run, record)
  local at = 1
  while true do
    local found = string.find(run, record, at, true)
    if not found then return false end
    if found % 10 == 1 then return true end
    at = found + 1
  end
end

-- Adds each of `new`'s records (sorted by field) that the bucket does not hold yet after its
-- field's run (a retried write adds nothing); returns how many it added.
local function add(key, new)
  local blob = redis.call('GET', key) or ''
  local n, m = #blob / 10, #new / 10
  local out, kept, added = {}, 0, 0
  local j = 0
  while j < m do
    local field = field_at(new, j)
    local j_end = j + 1
    while j_end < m and field_at(new, j_end) == field do j_end = j_end + 1 end
    local lo = bound(blob, kept, n, field, false)
    local hi = bound(blob, lo, n, field, true)
    out[#out + 1] = string.sub(blob, kept * 10 + 1, hi * 10)
    local run, seen = string.sub(blob, lo * 10 + 1, hi * 10), {}
    for k = j, j_end - 1 do
      local record = string.sub(new, k * 10 + 1, k * 10 + 10)
      if not seen[record] and not holds(run, record) then
        seen[record] = true
        out[#out + 1] = record
        added = added + 1
      end
    end
    kept, j = hi, j_end
  end
  if added > 0 then
    out[#out + 1] = string.sub(blob, kept * 10 + 1)
    redis.call('SET', key, table.concat(out))
  end
  return added
end

-- KEYS: buckets (of one hash tag). ARGV: each bucket's new records.
local added = 0
for key = 1, #KEYS do added = added + add(KEYS[key], ARGV[key]) end
return added
"""
)

_SWITCH = """
-- KEYS: generation, building. ARGV: token. Makes the generation being built the current one.
local building = redis.call('GET', KEYS[2])
local generation, token = nil, nil
if building then generation, token = string.match(building, '^(%d+:%d+):(.+)$') end
if token ~= ARGV[1] then
  return redis.error_reply('songscan: this rebuild lost its lease to another writer')
end
redis.call('SET', KEYS[1], generation)
redis.call('DEL', KEYS[2])
return 1
"""

_LEASE = """
-- KEYS: building. ARGV: token, lease (ms). Renews (lease > 0) or releases (0) a build's lease.
local building = redis.call('GET', KEYS[1])
if not building or string.sub(building, -#ARGV[1] - 1) ~= ':' .. ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
"""

_SCRIPTS = (_LOOKUP, _ADD, _SWITCH, _LEASE)
# The slot of each hash tag (a bucket key's `{T}`), whatever the prefix and generation.
_TAG_SLOTS = [key_slot(f"{{{tag:x}}}".encode()) for tag in range(1 << TAG_BITS)]
_SHA = {script: hashlib.sha1(script.encode()).hexdigest() for script in _SCRIPTS}


@dataclass(frozen=True)
class Generation:
    number: int
    shift: int  # bucket = hash >> shift

    def encode(self) -> str:
        return f"{self.number}:{self.shift}"

    @staticmethod
    def decode(value: bytes | str) -> Generation:
        text = value if isinstance(value, str) else value.decode()
        number, shift = text.split(":")[:2]
        return Generation(int(number), int(shift))


def shift_for(postings: int) -> int:
    """The bucket shift for about BUCKET_RECORDS records a bucket, at most FIELD_BITS."""
    buckets = max(1, -(-postings // BUCKET_RECORDS))
    bits = max(HASH_BITS - FIELD_BITS, (buckets - 1).bit_length())
    return HASH_BITS - min(bits, HASH_BITS)


class RedisClusterIndex:
    def __init__(
        self,
        nodes: list[tuple[str, int]],
        prefix: str = "songscan",
        *,
        wait_replicas: int = 1,
        wait_timeout_ms: int = 5000,
        switch_grace_s: float = 2.0,
        socket_timeout_s: float = 5.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if not prefix or any(c in prefix for c in "{}:*?[]\\"):
            raise ValueError(f"unusable key prefix {prefix!r}")
        self.prefix = prefix
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.switch_grace_s = switch_grace_s
        self._keys = _MetaKeys(prefix)
        self._seen: Generation | None = None  # the generation the last lookup read
        try:
            self.redis = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=socket_timeout_s,
                username=username,
                password=password,
            )
            self._load_scripts()
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from None

    # ---- reading ----------------------------------------------------------------------------
    def lookup(
        self, hashes: np.ndarray, max_postings: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        hashes = np.asarray(hashes, dtype=np.uint32)
        if hashes.shape[0] == 0:
            return _no_hits()
        try:
            try:
                return self._lookup(hashes, max_postings)
            except NoScriptError:  # a replica promoted since: load the scripts, read again
                self._load_scripts()
                return self._lookup(hashes, max_postings)
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from None

    def _lookup(
        self, hashes: np.ndarray, max_postings: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        distinct, query_of = np.unique(hashes, return_inverse=True)
        first, generation = self._first_trip(distinct)
        if generation is None:
            return _no_hits()
        counts = first.counts[query_of]
        keep = counts > 0
        if max_postings is not None:
            keep &= _rarest_within(counts, max_postings)
        # Runs longer than OVERFLOW_POSTINGS came back as their counts: read the kept ones.
        long_runs = np.unique(query_of[keep & ~first.returned[query_of]])
        starts, postings = first.starts, first.postings
        if long_runs.shape[0]:
            more = self._runs(generation, distinct[long_runs], 0)
            starts = starts.copy()
            starts[long_runs] = more.starts + postings.shape[0]
            postings = np.concatenate([postings, more.postings])
        kept = np.flatnonzero(keep)
        lo = starts[query_of[kept]]
        return expand_runs(kept, lo, lo + counts[kept], postings)

    def _first_trip(self, distinct: np.ndarray) -> tuple[_Runs, Generation | None]:
        """Every hash's postings (or only their count), read from the generation the last
        lookup used, and in the same round trip the generation key: after a switch, read
        again."""
        generation = self._seen or self._current()
        for _attempt in range(5):
            if generation is None:
                runs, now = _Runs.none(distinct.shape[0]), self._current()
            else:
                pipe = self.redis.pipeline()
                pipe.get(self._keys.generation)
                pending = self._queue_runs(pipe, generation, distinct, OVERFLOW_POSTINGS)
                replies = pipe.execute()
                now = Generation.decode(replies[0]) if replies[0] is not None else None
                runs = pending.parsed(replies[1:])
            self._seen = now
            if now == generation:
                return runs, generation
            generation = now  # the old generation is kept a while: nothing was half read
        raise IndexUnavailable("the index generation keeps changing")

    def _runs(self, generation: Generation, distinct: np.ndarray, limit: int) -> _Runs:
        pipe = self.redis.pipeline()
        runs = self._queue_runs(pipe, generation, distinct, limit)
        return runs.parsed(pipe.execute())

    def _queue_runs(
        self, pipe: Any, generation: Generation, distinct: np.ndarray, limit: int
    ) -> _PendingRuns:
        """Queue one `_LOOKUP` call per master on `pipe`, for the hashes (distinct, sorted) of
        the hash tags it serves."""
        tags = distinct >> np.uint32(HASH_BITS - TAG_BITS)
        tag_values, tag_at = np.unique(tags, return_inverse=True)
        slots = self.redis.nodes_manager.slots_cache
        names, nodes = [], {}
        for tag in tag_values.tolist():
            served = slots.get(_TAG_SLOTS[tag])
            if not served:
                raise IndexUnavailable(f"hash slot {_TAG_SLOTS[tag]} is not served")
            names.append(served[0].name)
            nodes[served[0].name] = served[0]
        node_names = sorted(nodes)
        node_of = np.searchsorted(node_names, names)[tag_at]
        order = np.argsort(node_of, kind="stable")  # by node, each node's hashes ascending
        bounds = np.searchsorted(node_of[order], np.arange(len(node_names) + 1))
        stem = f"{self.prefix}:{generation.number}:"
        tag_span = 1 << max(0, HASH_BITS - generation.shift - TAG_BITS)
        query = distinct[order].astype(">u4")
        for name, lo, hi in zip(node_names, bounds[:-1], bounds[1:], strict=True):
            args = [stem, 1 << generation.shift, tag_span, limit, query[lo:hi].tobytes()]
            pipe.execute_command("EVALSHA", _SHA[_LOOKUP], 0, *args, target_nodes=nodes[name])
        return _PendingRuns(order, limit)

    def _queue_script(
        self, pipe: object, script: str, keys: list[str], args: list[Any]
    ) -> ClusterNode:
        """Queue a script call on a ClusterPipeline, addressed to its keys' master (one hash
        tag: one slot). The pipeline blocks its evalsha() method, not the command; named, its
        node is not asked for the call's keys by COMMAND GETKEYS. A MOVED reply (resharding)
        still redirects it."""
        node = self.redis.get_node_from_key(keys[0])
        pipe.execute_command(  # type: ignore[attr-defined]
            "EVALSHA", _SHA[script], len(keys), *keys, *args, target_nodes=node
        )
        return node

    def _current(self) -> Generation | None:
        value = self.redis.get(self._keys.generation)
        return Generation.decode(value) if value is not None else None

    def every_posting(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (hash, posting) stored, sorted by hash: for audits and tests of small indexes."""
        try:
            generation = self._current()
            parts = [] if generation is None else list(self._read(generation))
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from None
        if not parts:
            return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.uint64)
        hashes = np.concatenate([h for h, _ in parts])
        order = np.argsort(hashes, kind="stable")  # buckets come in SCAN's order
        return hashes[order], np.concatenate([p for _, p in parts])[order]

    def _read(
        self, generation: Generation, live_tracks: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The (hashes, postings) of a generation's buckets, PIPELINE_BUCKETS buckets at a time
        (found by SCAN on every master); only `live_tracks`' postings when given."""
        for keys in _batched(self._bucket_keys(generation), PIPELINE_BUCKETS):
            pipe = self.redis.pipeline()
            for key in keys:
                pipe.get(key)
            hashes, postings = [], []
            for key, blob in zip(keys, pipe.execute(), strict=True):
                records = np.frombuffer(blob or b"", dtype=RECORD)
                bucket = int(key.rsplit(b":", 1)[1], 16)
                hashes.append((bucket << generation.shift) | records["field"].astype(np.uint32))
                postings.append(records["posting"].astype(np.uint64))
            piece = np.concatenate(hashes), np.concatenate(postings)
            if live_tracks is not None:
                live = np.isin(unpack_postings(piece[1])[0], live_tracks)
                piece = piece[0][live], piece[1][live]
            if piece[0].shape[0]:
                yield piece

    def _bucket_keys(self, generation: Generation) -> Iterator[bytes]:
        pattern = f"{self.prefix}:{generation.number}:{{*}}:*"
        return self.redis.scan_iter(match=pattern, count=1000)

    def posting_count(self) -> int:
        try:
            generation = self._current()
            return 0 if generation is None else self._posting_count(generation)
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from None

    def _posting_count(self, generation: Generation) -> int:
        return int(self.redis.get(self._keys.postings(generation)) or 0)

    def size_bytes(self) -> int:
        """The masters' `used_memory_dataset`: the index and any other keys of the cluster."""
        try:
            info = self.redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from None
        return int(sum(node["used_memory_dataset"] for node in info.values()))

    def close(self) -> None:
        self.redis.close()

    # ---- writing ----------------------------------------------------------------------------
    def add(self, hashes: np.ndarray, postings: np.ndarray) -> None:
        """Add postings to the current generation, and to the one being built if a rebuild runs;
        raises (IndexUnavailable) unless every posting is stored and replicated."""
        hashes, postings = _checked(hashes, postings)
        if hashes.shape[0] == 0:
            return
        try:
            written: set[Generation] = set()
            for _attempt in range(5):
                targets = [g for g in self._write_targets() if g not in written]
                if not targets:
                    return
                for generation in targets:
                    self._write(generation, hashes, postings)
                    written.add(generation)
            raise IndexUnavailable("the index keeps switching generations; try again")
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from None

    def _write_targets(self) -> list[Generation]:
        """The current generation (made when there is none) and the one being built."""
        current, building = self.redis.mget(self._keys.generation, self._keys.building)
        if current is None and building is None:
            first = Generation(self._next_number(), shift_for(0))
            self.redis.set(self._keys.generation, first.encode(), nx=True)
            return self._write_targets()
        return [Generation.decode(v) for v in (current, building) if v is not None]

    def _write(self, generation: Generation, hashes: np.ndarray, postings: np.ndarray) -> None:
        order = np.argsort(hashes, kind="stable")
        hashes, postings = hashes[order], postings[order]
        records = np.empty(hashes.shape[0], dtype=RECORD)
        records["field"] = hashes & np.uint32((1 << generation.shift) - 1)
        records["posting"] = postings
        blob = records.tobytes()
        calls = [
            ([key for key, _, _ in buckets], [blob[lo * 10 : hi * 10] for _, lo, hi in buckets])
            for _, _, buckets in _tag_groups(self.prefix, generation, hashes)
        ]
        added = 0
        for piece in range(0, len(calls), PIPELINE_CALLS):
            batch = calls[piece : piece + PIPELINE_CALLS]
            try:
                added += self._add_calls(batch)
            except NoScriptError:  # a replica promoted since: load them, write again (no dups)
                self._load_scripts()
                added += self._add_calls(batch)
        self.redis.incrby(self._keys.postings(generation), added)

    def _add_calls(self, calls: list[tuple[list[str], list[bytes]]]) -> int:
        """Run `_ADD` on each (bucket keys of a tag, their records), replicated; how many
        postings were new."""
        pipe = self.redis.pipeline()
        primaries = {}
        for keys, records in calls:
            node = self._queue_script(pipe, _ADD, keys, records)
            primaries[node.name] = node
        added = sum(pipe.execute())
        self._replicated(list(primaries.values()))
        return int(added)

    def _replicated(self, primaries: list[ClusterNode]) -> None:
        """Wait until each master passed its writes to `wait_replicas` replicas."""
        if self.wait_replicas <= 0:
            return
        pipe = self.redis.pipeline()
        for node in primaries:
            pipe.execute_command(
                "WAIT", self.wait_replicas, self.wait_timeout_ms, target_nodes=node
            )
        for node, acked in zip(primaries, pipe.execute(), strict=True):
            if int(acked) < self.wait_replicas:
                raise IndexUnavailable(
                    f"postings written to {node.name} reached {acked} of "
                    f"{self.wait_replicas} replicas in {self.wait_timeout_ms} ms"
                )

    def rebuild(
        self,
        batches: Iterable[tuple[np.ndarray, np.ndarray]],
        expected_postings: int | None = None,
    ) -> None:
        """Replace every posting with those of `batches` (hashes, postings) in a new generation,
        then switch to it at once; readers use the old one until then, and a failure leaves it
        (what the failed rebuild wrote is removed). Buckets are sized for `expected_postings`
        (by default as many as the index holds now)."""
        try:
            if expected_postings is None:
                expected_postings = self.posting_count()
            self._build(batches, expected_postings)
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from None

    def compact(self, live_tracks: np.ndarray | None) -> None:
        """Rewrite the index into a new generation keeping only `live_tracks`' postings (every
        posting when None), re-bucketed for its size."""
        try:
            current = self._current()
            if current is None:
                return
            live = None if live_tracks is None else np.asarray(live_tracks, dtype=np.int64)
            self._build(self._read(current, live), self._posting_count(current))
        except REDIS_FAILURES as exc:
            raise unavailable(exc) from None

    def _build(self, batches: Iterable[tuple[np.ndarray, np.ndarray]], expected: int) -> None:
        target = Generation(self._next_number(), shift_for(expected))
        token = uuid.uuid4().hex
        if not self.redis.set(
            self._keys.building, f"{target.encode()}:{token}", nx=True, px=BUILD_LEASE_MS
        ):
            raise IndexUnavailable("another rebuild or compaction of the index is running")
        old = self._current()
        try:
            self._remove_orphans(keep={g.number for g in (old, target) if g is not None})
            self.redis.set(self._keys.postings(target), 0)
            for hashes, postings in batches:
                checked = _checked(hashes, postings)
                if checked[0].shape[0]:
                    self._write(target, *checked)
                self._lease(token, BUILD_LEASE_MS)
            self._script(_SWITCH, [self._keys.generation, self._keys.building], [token])
        except BaseException:
            with contextlib.suppress(*REDIS_FAILURES):
                self._lease(token, 0)
                self._delete(target)
            raise
        if old is not None:
            time.sleep(self.switch_grace_s)  # lookups that read the old generation key finish
            self._delete(old)

    def _lease(self, token: str, lease_ms: int) -> None:
        """Renew the build's lease (or release it: 0)."""
        if not self._script(_LEASE, [self._keys.building], [token, lease_ms]) and lease_ms:
            raise IndexUnavailable("the rebuild lost its lease (it took too long between batches)")

    def _script(self, script: str, keys: list[str], args: list[str | int]) -> object:
        """Run one of the meta-key scripts (their keys share the `{PREFIX}` slot)."""
        try:
            return self.redis.evalsha(_SHA[script], len(keys), *keys, *args)
        except NoScriptError:
            self._load_scripts()
            return self.redis.evalsha(_SHA[script], len(keys), *keys, *args)

    def _delete(self, generation: Generation) -> None:
        keys = list(self._bucket_keys(generation))  # SCAN, then delete (no SCAN of a changing set)
        self._unlink(keys)
        self.redis.delete(self._keys.postings(generation))

    def _unlink(self, keys: list[bytes]) -> None:
        for batch in _batched(iter(keys), PIPELINE_BUCKETS):
            pipe = self.redis.pipeline()
            for key in batch:
                pipe.unlink(key)
            pipe.execute()

    def _remove_orphans(self, keep: set[int]) -> None:
        """Delete the keys of generations neither current nor being built (left by a writer that
        died mid-rebuild)."""
        found = self.redis.scan_iter(match=f"{self.prefix}:*:{{*}}:*", count=1000)
        self._unlink([k for k in found if int(k.split(b":", 2)[1]) not in keep])

    def _next_number(self) -> int:
        return int(self.redis.incr(self._keys.next))

    def _load_scripts(self) -> None:
        """Load the scripts on every master (again after a failover: a promoted replica's
        script cache may lack them)."""
        for script in _SCRIPTS:
            self.redis.execute_command(
                "SCRIPT", "LOAD", script, target_nodes=RedisCluster.PRIMARIES
            )


@dataclass(frozen=True)
class _MetaKeys:
    prefix: str

    @property
    def generation(self) -> str:
        return f"{{{self.prefix}}}:generation"

    @property
    def building(self) -> str:
        return f"{{{self.prefix}}}:building"

    @property
    def next(self) -> str:
        return f"{{{self.prefix}}}:next"

    def postings(self, generation: Generation) -> str:
        return f"{{{self.prefix}}}:postings:{generation.number}"


@dataclass(frozen=True)
class _Runs:
    """What a lookup read, for each of its distinct hashes (ascending): how many postings it
    has, whether they came back, and where they start in `postings`."""

    counts: np.ndarray
    returned: np.ndarray
    starts: np.ndarray
    postings: np.ndarray

    @staticmethod
    def none(n: int) -> _Runs:
        nothing = np.zeros(n, dtype=np.int64)
        return _Runs(nothing, np.ones(n, dtype=bool), nothing, np.zeros(0, dtype=np.uint64))


@dataclass(frozen=True)
class _PendingRuns:
    """`_LOOKUP` calls queued on a pipeline, one a master: `order` lists the distinct hashes
    in the order the calls send them (by master, ascending within one)."""

    order: np.ndarray
    limit: int

    def parsed(self, replies: list[tuple[list[int], bytes]]) -> _Runs:
        """The calls' replies (each hash's count, and the records of those that came back) as
        `_Runs` in hash order."""
        counts = np.fromiter(
            itertools.chain.from_iterable(c for c, _ in replies), np.int64, self.order.shape[0]
        )
        returned = counts <= self.limit if self.limit else np.ones(counts.shape[0], dtype=bool)
        sizes = counts * returned
        records = np.frombuffer(b"".join(r for _, r in replies), dtype=RECORD)
        by_hash = np.empty_like(self.order)
        by_hash[self.order] = np.arange(self.order.shape[0])
        return _Runs(
            counts[by_hash],
            returned[by_hash],
            (np.cumsum(sizes) - sizes)[by_hash],
            records["posting"].astype(np.uint64),
        )


def bucket_key(prefix: str, generation: Generation, bucket: int) -> str:
    """`PREFIX:G:{T}:B`: the hash tag T is the hash's top TAG_BITS bits, so the buckets of a
    tag share a slot and one script call reads or writes all of a query's buckets in it."""
    tag = bucket >> max(0, HASH_BITS - generation.shift - TAG_BITS)
    return f"{prefix}:{generation.number}:{{{tag:x}}}:{bucket:x}"


def unavailable(exc: Exception) -> IndexUnavailable:
    return IndexUnavailable(f"the Redis Cluster index is unavailable ({type(exc).__name__}: {exc})")


def _checked(hashes: np.ndarray, postings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hashes = np.asarray(hashes, dtype=np.uint32)
    postings = np.asarray(postings, dtype=np.uint64)
    if hashes.shape != postings.shape:
        raise ValueError("hashes and postings differ in length")
    if hashes.shape[0] and int(hashes.max()) >> HASH_BITS:
        raise ValueError(f"hashes must be below 2^{HASH_BITS}")
    return hashes, postings


def _tag_groups(
    prefix: str, generation: Generation, sorted_hashes: np.ndarray
) -> list[tuple[int, int, list[tuple[str, int, int]]]]:
    """Sorted hashes grouped by hash tag, then bucket: for each tag [lo, hi) of
    `sorted_hashes` and its buckets' (key, start, end)."""
    buckets = sorted_hashes >> np.uint32(generation.shift)
    starts = run_starts(buckets).tolist()
    ends = [*starts[1:], sorted_hashes.shape[0]]
    groups: list[tuple[int, int, list[tuple[str, int, int]]]] = []
    tag = None
    for start, end in zip(starts, ends, strict=True):
        key = bucket_key(prefix, generation, int(buckets[start]))
        key_tag = key[: key.index("}")]
        if key_tag != tag:
            groups.append((start, end, []))
            tag = key_tag
        groups[-1][2].append((key, start, end))
        groups[-1] = (groups[-1][0], end, groups[-1][2])
    return groups


def _batched(items: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def _no_hits() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
