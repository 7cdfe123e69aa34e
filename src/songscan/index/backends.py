"""Which `PostingIndex` a deployment uses, from its index URL (`SONGSCAN_INDEX_URL`):
unset, the segment files in the data dir; `redis-cluster://[[USER]:PASSWORD@]h1:p1,h2:p2,…` a
Redis Cluster (the password, percent-encoded, is its nodes' `requirepass`, or a user's of their
ACL; options: `?prefix=NAME` for its keys, `&wait_replicas=N` replicas that must hold a write
before it counts, 1 by default: 0 for a cluster without replicas)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from ..errors import ConfigError
from . import PostingIndex

SCHEME = "redis-cluster"


def open_index(url: str | None, directory: Path) -> PostingIndex:
    if not url:
        from .segments import SegmentIndex

        return SegmentIndex(directory)
    nodes, options = parse_redis_cluster_url(url)
    from .rediscluster import RedisClusterIndex

    return RedisClusterIndex(nodes, **options)  # type: ignore[arg-type]


def parse_redis_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, str | int]]:
    """(startup nodes, RedisClusterIndex options) of a `redis-cluster://` URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != SCHEME:
        raise ConfigError(f"index URL: expected {SCHEME}://host:port,host:port,…")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    options: dict[str, str | int] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        if not colon or not password:
            raise ConfigError(f"index URL: expected {SCHEME}://[USER]:PASSWORD@host:port,…")
        options["password"] = urllib.parse.unquote(password)
        if user:
            options["username"] = urllib.parse.unquote(user)
    nodes = []
    for node in hosts.split(","):
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"index URL: expected {SCHEME}://host:port,host:port,…")
        nodes.append((host.strip("[]"), int(port)))
    if parts.path not in ("", "/"):
        raise ConfigError("index URL: no path expected (use ?prefix=NAME)")
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if name == "prefix" and value and not any(c in value for c in "{}:*?[]\\"):
            options["prefix"] = value
        elif name == "wait_replicas" and value.isdigit():
            options["wait_replicas"] = int(value)
        else:
            raise ConfigError(
                f"index URL: unknown or invalid option {name!r} (prefix=NAME, wait_replicas=N)"
            )
    return nodes, options
