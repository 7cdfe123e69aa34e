"""The API node's side: a scan's runs sent to the Celery workers, their results taken back in
file order (`scan._run_units` hands them on as it does the pool's; the neighbour and continuity
passes then run here, on the whole ordered result, as in the embedded scan).

All of a scan's runs are published at once: idle workers take them as they come free. The
scan then waits for run 1, run 2, … each until the scan's deadline (`[workers]
scan_timeout_s`), which is also when the scan's media link expires. Anything that keeps a run
from coming back (the broker down, a worker failing, the deadline) fails the whole scan with
`WorkersUnavailable` (code 100, logged): never a partial result. A scan left early (an error,
a cancelled job) revokes its runs that are still out; a revocation reaches the workers running
at the time, so each run also carries the scan's deadline as its expiry (a worker started later
drops it then, rather than run it for nobody).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from prometheus_client import CollectorRegistry, Counter, Histogram

from songscan import errors
from songscan.chunks import Chunk
from songscan.config import EngineConfig
from songscan.errors import SongscanError

from .celery_app import QUEUE, TASK, broker_address, celery_app
from .media_link import link
from .wire import VERSION, RunResult, engine_to_wire, result_from_wire, to_wire

log = logging.getLogger("songscan.dispatch")
POLL_S = 0.02  # between looks at the run the scan waits for

# On the API node's /metrics (`api/app.py` adds this registry to the service's).
REGISTRY = CollectorRegistry(auto_describe=True)
RUNS = Counter(
    "songscan_worker_runs",
    "Runs of chunks sent to Celery workers, by outcome (ok; error: a songscan error such as "
    "undecodable media; failed: the broker, a worker or the deadline failed the scan; "
    "revoked: the scan ended first)",
    ["outcome"],
    registry=REGISTRY,
)
RUN_WAIT = Histogram(
    "songscan_worker_run_seconds",
    "From publishing a run to its result being taken, per run (queueing included)",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900),
    registry=REGISTRY,
)


class WorkersUnavailable(SongscanError):
    """The scan's runs could not be sent to the workers, or did not all come back."""

    code = 100
    default_message = "the scan workers are unavailable"


class BrokerUnavailable(WorkersUnavailable):
    """The broker cannot be reached (nothing can be revoked through it either)."""


@functools.cache
def client_app(broker_url: str, visibility_timeout_s: float) -> Celery:
    return celery_app(broker_url, visibility_timeout_s)


def run_remote_units(
    path: Path, units: Sequence[list[Chunk]], cfg: EngineConfig, owners: tuple[str, ...] | None
) -> Iterator[RunResult]:
    """Each unit's result, in order, computed by the Celery workers."""
    remote = cfg.remote
    assert remote is not None
    app = client_app(remote.broker_url, remote.visibility_timeout_s)
    where = broker_address(remote.broker_url)
    deadline = time.monotonic() + remote.scan_timeout_s
    expires_at = time.time() + remote.scan_timeout_s
    media = link(remote.node_url, remote.media_secret, path, expires_at)
    # A run still queued at the deadline is dropped by whichever worker takes it, even one
    # started after the revocation (which reaches only the workers running then).
    expires = datetime.fromtimestamp(expires_at, UTC)
    common = {
        "v": VERSION,
        "scan": uuid.uuid4().hex,
        "media": to_wire(media),
        "owners": None if owners is None else list(owners),
        "engine": engine_to_wire(cfg),
    }
    sent: list[tuple[AsyncResult, float]] = []
    taken = 0
    try:
        for unit in units:
            payload = {**common, "chunks": to_wire(unit)}
            try:
                sent.append(
                    (
                        app.send_task(TASK, args=[payload], queue=QUEUE, expires=expires),
                        time.monotonic(),
                    )
                )
            except Exception as exc:
                RUNS.labels("failed").inc()
                raise _unavailable(f"cannot send the scan to the broker at {where}", exc) from None
        for result, published in sent:
            yield _outcome(result, published, deadline, where)
            taken += 1
    except BrokerUnavailable:
        taken = len(sent)  # nothing to revoke through a broker that is down
        raise
    finally:
        _revoke(app, [r for r, _ in sent[taken:]])


def _outcome(result: AsyncResult, published: float, deadline: float, where: str) -> RunResult:
    """The result of one run, once it is back (WorkersUnavailable when it cannot be)."""
    try:
        while not result.ready():
            if time.monotonic() > deadline:
                RUNS.labels("failed").inc()
                raise WorkersUnavailable(
                    "the scan workers did not finish the scan in time; is a `songscan worker` "
                    f"running on the broker at {where}?"
                )
            time.sleep(POLL_S)
        value: Any = result.result
        state = result.state
        result.forget()
    except WorkersUnavailable:
        raise
    except Exception as exc:
        RUNS.labels("failed").inc()
        raise _unavailable(f"lost the broker at {where} during the scan", exc) from None
    RUN_WAIT.observe(time.monotonic() - published)
    if state != "SUCCESS" or not isinstance(value, dict):
        RUNS.labels("failed").inc()
        reason = " ".join(str(value).split())[:300] or type(value).__name__
        log.error("a scan worker failed on a run: %s: %s", type(value).__name__, reason)
        raise WorkersUnavailable(f"a scan worker failed on a run ({reason})")
    if "error" in value:
        RUNS.labels("error").inc()
        raise _songscan_error(value["error"])
    RUNS.labels("ok").inc()
    return result_from_wire(value["result"])


def _songscan_error(error: dict[str, Any]) -> SongscanError:
    """The songscan error a worker reported, as the embedded scan would have raised it."""
    cls = getattr(errors, str(error.get("type")), None)
    if isinstance(cls, type) and issubclass(cls, SongscanError):
        return cls(str(error.get("message")))
    failure = SongscanError(str(error.get("message")))
    failure.code = int(error.get("code", failure.code))
    return failure


def _unavailable(what: str, exc: object) -> BrokerUnavailable:
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    log.error("%s: %s: %s", what, type(exc).__name__, reason)
    return BrokerUnavailable(f"{what} ({reason})")


def _revoke(app: Celery, results: list[AsyncResult]) -> None:
    """Tell the workers to drop the runs nobody waits for any more (best effort: a worker
    that already started one finishes it, and its result expires unread)."""
    if not results:
        return
    RUNS.labels("revoked").inc(len(results))
    with contextlib.suppress(Exception):
        app.control.revoke([r.id for r in results])
    for r in results:
        with contextlib.suppress(Exception):
            r.forget()
