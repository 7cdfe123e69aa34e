"""Long enterprise jobs over HTTP (api-contract.md §5): the runner and `/enterprise/jobs`.

`/enterprise` with `async=true` is checked and queued by the recognition module through the
enterprise use case (`songscan.enterprise`), with the synchronous call's checks, reservation
and errors. Here, `JobRunner` runs queued jobs in this server process (`[api] concurrent_jobs`
at a time, in threads started by the app's lifespan) through the same use case, and reports
progress; the routes let a token list, poll and cancel its own jobs on any API node: jobs are
rows of the shared database (`songscan.jobs`), and a runner stops at its next progress report
once its job was cancelled, wherever that was asked.

Billing: a job's reservation is settled once, after the job's outcome is recorded (the
ledger refuses a second settlement), so a job that is run again after a crash is billed once.
The reservation is held by the job (`held.hand_over`), so no crash sweep releases it; one
released before the hand-over (its submitter died in between) is reserved anew when it runs.
A failed or cancelled job costs nothing, like a failed synchronous call.

While the database is away (PostgreSQL restarting), the runners wait: a job whose progress
could not be recorded stays `running` and is run again, by this process or another, once the
database is back.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from songscan.accounts.plans import Entitlements
from songscan.accounts.service import Account, Reservation
from songscan.api.errors import UnexpectedError, error_reply
from songscan.api.openapi import job_operation
from songscan.api.params import MAX_FIELDS
from songscan.api.recognition import (
    Recognition,
    Reply,
    log_access,
    record_request,
    reply_for_error,
)
from songscan.enterprise import ENTERPRISE, EnterpriseRequest, Scanned, enterprise_request
from songscan.errors import (
    AlreadySettled,
    DatabaseUnavailable,
    InvalidParameters,
    NotEntitled,
    SongscanError,
)
from songscan.fields import int_param, text_param
from songscan.jobs import (
    ACTIVE,
    CANCELLED,
    DONE,
    FAILED,
    FINISHED,
    JobClaim,
    JobRecord,
    job_json,
)
from songscan.results import to_json

log = logging.getLogger("songscan.api")

JOBS = "jobs"  # `request_api_method` of the job routes' errors
POLL_S = 1.0  # how often an idle runner looks for jobs queued or abandoned by other processes
HEARTBEAT_S = 10.0  # how often (at most) this node says it is alive (`JobStore.heartbeat`)
PRUNE_EVERY_S = 3600.0
MAX_ATTEMPTS = 5  # a job whose server stopped under it this often is not run again
LIST_LIMIT = 100
NODE_GONE = (
    "the job's media was on a server that stopped and did not come back; nothing was billed: "
    "submit the job again"
)


class _Cancelled(Exception):
    """The job was cancelled while it ran (or another server took it over)."""


class _Stopping(Exception):
    """The server is stopping: the job stays `running`, to be run again at the next start."""


class JobRunner:
    """Runs this node's jobs (and those of nodes gone for good), `concurrent_jobs` at a time,
    in this process."""

    def __init__(self, service: Recognition) -> None:
        self.service = service
        self.store = service.jobs
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pruned_at = 0.0
        self._heard_at = 0.0
        self._heartbeat_s = min(HEARTBEAT_S, self.store.node_timeout_s / 4)

    def start(self) -> None:
        self.store.remove_orphan_dirs()
        for i in range(self.service.settings.concurrent_jobs):
            thread = threading.Thread(target=self._loop, name=f"songscan-job-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Take no more jobs; a running scan stops at its next progress report."""
        self._stopping.set()
        self.store.changed.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._housekeeping()
                runner = self.service.accounts.ledger.instance_id  # this process's lease
                claim = self.store.claim(runner) if runner is not None else None
                if claim is None:
                    self.store.changed.wait(POLL_S)
                    self.store.changed.clear()
                    continue
                with claim:
                    self._work(claim)
            except DatabaseUnavailable:  # logged once per outage, where it was raised
                self._stopping.wait(POLL_S)
            except Exception:
                log.exception("the job runner failed; it carries on")
                self._stopping.wait(POLL_S)

    def _housekeeping(self) -> None:
        """Say that this node is alive (well within its timeout); prune old jobs (hourly)."""
        if time.monotonic() - self._heard_at >= self._heartbeat_s or not self._heard_at:
            self.store.heartbeat()
            self._heard_at = time.monotonic()
        if time.monotonic() - self._pruned_at < PRUNE_EVERY_S and self._pruned_at:
            return
        self._pruned_at = time.monotonic()
        pruned = self.store.prune(self.service.settings.job_retention_days * 86400)
        if pruned:
            log.info("pruned %d finished jobs", pruned)

    def _work(self, claim: JobClaim) -> None:
        record = self.store.require(claim.job_id)
        if record.state in ACTIVE:
            self._run(claim, record)
            record = self.store.require(claim.job_id)
        if record.state in FINISHED:
            self._clean_up(claim, record)

    # -- one run of a job -------------------------------------------------------------------
    def _run(self, claim: JobClaim, record: JobRecord) -> None:
        started = time.perf_counter()
        if record.node not in (None, self.store.node) and record.media_name is not None:
            self._fail(claim, record, SongscanError(NODE_GONE), started)  # (a url job reruns)
            return
        if not self.store.start(claim):
            return  # cancelled meanwhile
        try:
            if record.attempts >= MAX_ATTEMPTS:
                raise SongscanError(
                    f"the job was interrupted {record.attempts} times (its server stopped while "
                    "it ran); it is not run again"
                )
            scanned = self._scan(claim, record, started)
        except (_Cancelled, DatabaseUnavailable):
            return  # cancelled; or the database is away: run again once it is back
        except Exception as exc:
            if self._stopping.is_set():
                return  # the server is stopping: the job runs again at the next start
            self._fail(claim, record, exc, started)
            return
        reply, chunks = scanned.reply, scanned.result.billable_chunks
        body = reply.body if isinstance(reply.body, str) else to_json(reply.body)
        done = self.store.finish(
            claim,
            DONE,
            response=body,
            media_type=reply.media_type,
            billed=scanned.billed,
            chunks=chunks,
        )
        if done:
            self.service.metrics.chunks.inc(chunks)
            self.service.metrics.audio_seconds.inc(scanned.audio_s)

    def _scan(self, claim: JobClaim, record: JobRecord, started: float) -> Scanned:
        """The synchronous call's work (the enterprise use case) on the job's media."""
        accounts = self.service.accounts
        account = accounts.account(record.account_id)
        entitlements = accounts.entitlements(account)
        request = enterprise_request(record.fields, record.media_name is not None, entitlements)
        path = self._media(record, request, entitlements)
        return self.service.enterprise.run_job(
            claim,
            record,
            account,
            path,
            request,
            progress=lambda done, total: self._progress(claim, done, total),
            started=started,
        )

    def _media(
        self, record: JobRecord, request: EnterpriseRequest, entitlements: Entitlements
    ) -> Path:
        job_dir = self.store.job_dir(record.id)
        if record.media_name is not None:
            return job_dir / record.media_name
        assert request.url is not None  # checked at submission
        download_dir = job_dir / "download"
        shutil.rmtree(download_dir, ignore_errors=True)  # what an interrupted run left
        download_dir.mkdir(parents=True)
        return self.service.fetcher.fetch(request.url, download_dir, entitlements.max_file_bytes)

    def _progress(self, claim: JobClaim, done: int, total: int) -> None:
        if self._stopping.is_set():
            raise _Stopping()
        if not self.store.progress(claim, done, total):
            raise _Cancelled()

    def _fail(self, claim: JobClaim, record: JobRecord, exc: Exception, started: float) -> None:
        """Record the error body the synchronous call would have answered."""
        if not isinstance(exc, SongscanError):
            log.exception("job %s failed", record.id)
            exc = UnexpectedError(record.id)
        body = error_reply(
            exc,
            params=record.fields,
            api_method=ENTERPRISE,
            http_method=record.http_method,
            enterprise=True,
            execution_time_s=time.perf_counter() - started,
        ).body
        body["requested_params"]["api_token"] = record.fields.get("api_token", "")  # masked
        self.store.finish(
            claim,
            FAILED,
            response=to_json(body),
            media_type="application/json",
            error=(exc.code, exc.message),
        )

    def _clean_up(self, claim: JobClaim, record: JobRecord) -> None:
        """Settle the job's reservation (bill a done job, refund the others), delete its media
        (there is none here when it was on a node gone for good)."""
        if record.reservation_id is not None:
            used = record.billed if record.state == DONE else 0
            status = {DONE: "ok", CANCELLED: "cancelled"}.get(
                record.state, f"error {record.error_code}"
            )
            reservation = Reservation(
                record.reservation_id, record.account_id, record.reserved, ENTERPRISE
            )
            try:
                self.service.accounts.settle(reservation, used, status, record.chunks)
                self.service.metrics.billed.inc(used)
            except AlreadySettled:
                pass  # settled before this process went down: billed once
        self.store.remove_media(record.id)
        self.store.mark_cleaned(claim)


# -- routes -------------------------------------------------------------------------------------
router = APIRouter()

JobWork = Callable[[Recognition, Account, Mapping[str, str]], Reply]


async def _job_call(request: Request, work: JobWork) -> Response:
    """Authenticate the token, do `work` for its account, answer (errors as the contract's)."""
    service: Recognition = request.app.state.recognition
    request_id = secrets.token_hex(8)
    started = time.perf_counter()
    client_addr = request.client.host if request.client else ""
    fields: dict[str, str] = dict(request.query_params)
    account_id: int | None = None
    error_code = 0
    try:
        if request.method == "POST":
            form = await request.form(max_files=0, max_fields=MAX_FIELDS)
            fields.update({k: v for k, v in form.items() if isinstance(v, str)})

        def run() -> Reply:
            nonlocal account_id
            account = service.accounts.authenticate(text_param(fields, "api_token"), client_addr)
            account_id = account.id
            service.accounts.check_rate(account)
            if account.is_test:
                raise NotEntitled("long jobs need an api_token of your own")
            return work(service, account, fields)

        reply = await anyio.to_thread.run_sync(run)
    except SongscanError as exc:
        error_code = exc.code
        reply = reply_for_error(exc, fields, JOBS, request, started, True)
    except Exception:
        log.exception("request %s failed", request_id)
        unexpected = UnexpectedError(request_id)
        error_code = unexpected.code
        reply = reply_for_error(unexpected, fields, JOBS, request, started, True)
    elapsed = time.perf_counter() - started
    record_request(service.metrics, JOBS, error_code, elapsed)
    log_access(
        request,
        request_id,
        JOBS,
        fields,
        account_id=account_id,
        status=reply.http_status,
        error_code=error_code,
        elapsed=elapsed,
    )
    return reply.response(request_id)


def _success(result: object) -> Reply:
    return Reply({"status": "success", "result": result})


@router.get("/enterprise/jobs", response_model=None, openapi_extra=job_operation(listing=True))
async def list_jobs(request: Request) -> Response:
    """The token's long jobs, newest first (`limit`, default 100), without their responses."""

    def work(service: Recognition, account: Account, fields: Mapping[str, str]) -> Reply:
        limit = int_param(fields, "limit", minimum=1) or LIST_LIMIT
        return _success([job_json(r) for r in service.jobs.of_account(account.id, limit)])

    return await _job_call(request, work)


@router.get("/enterprise/jobs/{job_id}", response_model=None, openapi_extra=job_operation())
async def get_job(request: Request, job_id: str) -> Response:
    """A job's state and progress; once done, `response`: the synchronous call's body."""

    def work(service: Recognition, account: Account, _fields: Mapping[str, str]) -> Reply:
        record = service.jobs.require(job_id, account.id)
        return _success(job_json(record, with_response=True))

    return await _job_call(request, work)


@router.get("/enterprise/jobs/{job_id}/result", response_model=None, openapi_extra=job_operation())
async def get_job_result(request: Request, job_id: str) -> Response:
    """A finished job's body exactly as the synchronous call would have sent it (JSON, CSV,
    segments, or the error)."""

    def work(service: Recognition, account: Account, _fields: Mapping[str, str]) -> Reply:
        record = service.jobs.require(job_id, account.id)
        if record.state not in (DONE, FAILED) or record.response is None:
            raise InvalidParameters(f"job {job_id} is {record.state}: it has no result")
        return Reply(record.response, record.media_type or "application/json")

    return await _job_call(request, work)


@router.delete("/enterprise/jobs/{job_id}", response_model=None, openapi_extra=job_operation())
@router.post("/enterprise/jobs/{job_id}/cancel", response_model=None, openapi_extra=job_operation())
async def cancel_job(request: Request, job_id: str) -> Response:
    """Cancel a queued or running job (it costs nothing); a finished job is left as it is."""

    def work(service: Recognition, account: Account, _fields: Mapping[str, str]) -> Reply:
        service.jobs.require(job_id, account.id)
        service.jobs.cancel(job_id)
        return _success(job_json(service.jobs.require(job_id)))

    return await _job_call(request, work)
