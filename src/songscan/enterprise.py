"""The enterprise use case: a long file recognised chunk by chunk, billed by the chunks
recognised, answered in the `response_type` asked for (api-contract.md §3, §5).

No HTTP here. Its callers hand it plain data (a path, the checked parameters, an account) and
get plain data back (a `ScanResult`, the reply's body and media type, what was billed): the
API's synchronous call (`api/recognition.py`), the long jobs' runner (`api/jobs.py`), the
command line's `scan` (which has no accounts: it uses `enterprise_scan` and `reply_body`) and,
later, a task queue's worker.

The steps of one request: `enterprise_request` checks the parameters against the account's
entitlements; `checked_media` finds the file (the upload, or what `url` points to) within the
size limit; `EnterpriseScans.run` plans, reserves, scans, settles and builds the reply; a long
job is queued by `submit_job` (its chunks reserved at once) and run by `run_job` (settled by
the runner once its outcome is recorded, so a job run again after a crash is billed once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from songscan.chunks import ChunkPlan, PlanParams
from songscan.config import EngineConfig
from songscan.errors import InvalidParameters, MediaTooLarge, NoMedia, NotEntitled, QuotaExceeded
from songscan.fields import bool_param, choice_param, float_param, int_param, text_param
from songscan.results import OutputOptions, enterprise_csv, enterprise_response, segments_json
from songscan.scan import ScanResult, plan_for, scan_file

# `songscan scan` uses neither the accounts (SQLAlchemy), nor long jobs, nor URLs: what they
# need is imported when first used (the URL fetchers bring httpx and yt-dlp, ~0.4 s of the
# command's start-up); the callers that use them have them loaded already.
if TYPE_CHECKING:
    from songscan.accounts.plans import Entitlements
    from songscan.accounts.service import Account, Accounts
    from songscan.jobs import JobRecord, JobStore
    from songscan.sources import AllowList

ENTERPRISE = "enterprise"  # the API method, and the ledger's name for what it bills
RESPONSE_TYPES = ("json", "csv", "segments")
ASYNC = "async"  # the parameter that runs the request as a long job
_MB = 1024 * 1024

Progress = Callable[[int, int], None]  # (chunks done, chunks planned)


@dataclass(frozen=True)
class EnterpriseRequest:
    """The checked parameters of an enterprise scan: which chunks, and how to answer."""

    params: PlanParams
    opts: OutputOptions
    response_type: str
    url: str | None  # the media's URL; None when a file was sent


def enterprise_request(
    fields: Mapping[str, str], has_file: bool, entitlements: Entitlements
) -> EnterpriseRequest:
    """The enterprise parameters in `fields`, or InvalidParameters (50) / NotEntitled (904)."""
    use_timecode = bool_param(fields, "use_timecode")
    skip_first = float_param(fields, "skip_first_seconds", minimum=0)
    if use_timecode and skip_first is not None:
        raise InvalidParameters("use_timecode cannot be combined with skip_first_seconds")
    params = PlanParams(
        skip=_or(int_param(fields, "skip", minimum=0), 0),
        every=_or(int_param(fields, "every", minimum=1), 1),
        limit=int_param(fields, "limit", minimum=0),
        skip_first_seconds=skip_first or 0.0,
    )
    opts = OutputOptions(
        accurate_offsets=bool_param(fields, "accurate_offsets"),
        enterprise_metadata=entitlements.enterprise_metadata,
    )
    response_type = choice_param(fields, "response_type", RESPONSE_TYPES)
    url = None if has_file else text_param(fields, "url")
    if url and not entitlements.enterprise_url_input:
        raise NotEntitled("url input on /enterprise is not available to this token")
    if use_timecode and url:
        from songscan.sources import timecode_from_url  # see the imports

        params = replace(params, skip_first_seconds=timecode_from_url(url) or 0.0)
    return EnterpriseRequest(params, opts, response_type, url)


def wants_job(fields: Mapping[str, str]) -> bool:
    """Whether the request asks to run as a long job (`async=true`)."""
    return bool_param(fields, ASYNC)


@dataclass(frozen=True)
class ReplyBody:
    """A finished scan's answer: a JSON body (a dict) or CSV text, and its media type."""

    body: dict[str, Any] | str
    media_type: str = "application/json"


def reply_body(result: ScanResult, request: EnterpriseRequest) -> ReplyBody:
    """The body of a finished enterprise scan, in the requested `response_type`."""
    if request.response_type == "csv":
        return ReplyBody(enterprise_csv(result, request.opts), "text/csv; charset=utf-8")
    if request.response_type == "segments":
        return ReplyBody(segments_json(result))
    return ReplyBody(enterprise_response(result, request.opts))


def enterprise_scan(
    path: Path,
    data_dir: Path,
    request: EnterpriseRequest,
    cfg: EngineConfig,
    *,
    owners: tuple[str, ...],
    progress: Progress | None = None,
    started: float | None = None,
    plan: ChunkPlan | None = None,
) -> ScanResult:
    """Recognise the planned chunks of `path` against the tracks of `owners`; with `started`
    (a `time.perf_counter()`), the execution time counts from then (the request's arrival).
    `plan`: the file's plan, when the caller has made it (as `scan_file` takes it)."""
    result = scan_file(
        path, data_dir, request.params, cfg, owners=owners, progress=progress, plan=plan
    )
    if started is None:
        return result
    return replace(result, execution_time_s=time.perf_counter() - started)


def owner_of(account: Account) -> str:
    """The catalog namespace of an account's own uploads ("" is the server's shared catalog)."""
    return str(account.id)


def catalog_owners(account: Account) -> tuple[str, ...]:
    """The tracks an account's queries match: the shared catalog and its own uploads."""
    return ("", owner_of(account))


@dataclass(frozen=True)
class Scanned:
    """A finished enterprise scan: the result, its reply, and the requests billed for it."""

    result: ScanResult
    reply: ReplyBody
    billed: int

    @property
    def audio_s(self) -> float:
        return sum(c.chunk.duration_s for c in self.result.chunks)


@dataclass(frozen=True)
class UrlFetch:
    """How media named by a `url` is fetched (`[api] fetch_timeout_s`, `url_allow`)."""

    timeout_s: float = 600.0
    allow: AllowList | None = None  # private hosts `url` may reach; None: only public ones

    def check(self, url: str) -> None:
        """Refuse a URL that may not be fetched (error 600), before anything is fetched."""
        from songscan.sources import AllowList, check_url  # see the imports

        check_url(url, self.allow or AllowList())

    def fetch(self, url: str, dest_dir: Path, max_bytes: int) -> Path:
        """Download what `url` points to into `dest_dir` (errors 600, 400)."""
        from songscan.sources import AllowList, fetch_media  # see the imports

        allow = self.allow or AllowList()
        return fetch_media(
            url, dest_dir, max_bytes=max_bytes, timeout_s=self.timeout_s, allow=allow
        )


def checked_media(
    upload: Path | None,
    upload_bytes: int,
    url: str | None,
    workdir: Path,
    max_bytes: int,
    fetcher: UrlFetch,
) -> Path:
    """The media to work on: the upload (within `max_bytes`), else what `url` points to
    (downloaded into `workdir`), else error 700."""
    if upload is not None:
        if upload_bytes > max_bytes:
            raise MediaTooLarge(
                f"the media is over this endpoint's limit of {max_bytes / _MB:g} MB"
            )
        return upload
    if url:
        return fetcher.fetch(url, workdir, max_bytes)
    raise NoMedia()


class EnterpriseScans:
    """The enterprise use case over one catalog (`data_dir`) and one ledger (`accounts`)."""

    def __init__(
        self,
        accounts: Accounts,
        data_dir: Path,
        engine_config: EngineConfig,
        fetcher: UrlFetch,
    ) -> None:
        self.accounts = accounts
        self.data_dir = Path(data_dir)
        self.engine_config = engine_config
        self.fetcher = fetcher

    def chunk_count(self, path: Path, request: EnterpriseRequest) -> int:
        """The chunks the scan will recognise: what it reserves."""
        return len(plan_for(path, request.params, self.engine_config))

    def scan(
        self,
        account: Account,
        path: Path,
        request: EnterpriseRequest,
        *,
        started: float,
        progress: Progress | None = None,
    ) -> ScanResult:
        return enterprise_scan(
            path,
            self.data_dir,
            request,
            self.engine_config,
            owners=catalog_owners(account),
            progress=progress,
            started=started,
        )

    # -- the synchronous call -------------------------------------------------------------
    def run(
        self, account: Account, path: Path, request: EnterpriseRequest, *, started: float
    ) -> Scanned:
        """Plan, reserve the planned chunks, scan, bill the chunks recognised (at most the
        reserved), answer. A scan that fails bills nothing."""
        n_chunks = self.chunk_count(path, request)
        with self.accounts.reservation(account, n_chunks, ENTERPRISE) as held:
            result = self.scan(account, path, request, started=started)
            used = min(result.billable_chunks, n_chunks)
            billed = held.settle(used, "ok", result.billable_chunks)
        return Scanned(result, reply_body(result, request), billed)

    # -- long jobs ------------------------------------------------------------------------
    def check_job_account(self, account: Account) -> None:
        if account.is_test:
            raise NotEntitled("long jobs need an api_token of your own, not the public test token")

    def submit_job(
        self,
        jobs: JobStore,
        account: Account,
        request: EnterpriseRequest,
        *,
        fields: Mapping[str, str],
        http_method: str,
        media: Path | None,
    ) -> JobRecord:
        """Queue a long job (api-contract.md §5). `media`: the checked upload, moved into the
        job's directory and its chunks reserved now (so a queued job cannot run out of quota);
        without it, `request.url` is checked now and downloaded by the job, which reserves
        then. `fields` are stored with the job: the token in them masked."""
        self.check_job_account(account)
        n_chunks: int | None = None
        if media is not None:
            n_chunks = self.chunk_count(media, request)
        elif request.url:
            self.fetcher.check(request.url)
            if self.accounts.remaining(account) + self.accounts.plan(account).overage_limit < 1:
                raise QuotaExceeded()
        else:
            raise NoMedia()
        with self.accounts.reservation(account, n_chunks or 0, ENTERPRISE) as held:
            record = jobs.create(
                account.id,
                fields,
                http_method,
                media,
                chunks_total=n_chunks,
                reservation_id=held.entry_id,
                reserved=n_chunks or 0,
            )
            held.hand_over(record.id)  # the job settles it, whichever process runs it
        return record

    def run_job(
        self,
        jobs: JobStore,
        record: JobRecord,
        account: Account,
        path: Path,
        request: EnterpriseRequest,
        *,
        progress: Progress,
        started: float,
    ) -> Scanned:
        """The synchronous call's work for a job: plan, make sure the job holds a reservation,
        scan (reporting `progress`), and say what the job is to be billed; its runner settles
        that once the outcome is recorded."""
        n_chunks = self.chunk_count(path, request)
        progress(0, n_chunks)  # also: stop here if cancelled meanwhile
        reserved = self._job_reservation(jobs, record, account, n_chunks)
        result = self.scan(account, path, request, started=started, progress=progress)
        billed = min(result.billable_chunks, reserved)
        return Scanned(result, reply_body(result, request), billed)

    def _job_reservation(
        self, jobs: JobStore, record: JobRecord, account: Account, n_chunks: int
    ) -> int:
        """The requests the job holds: the reservation made at submission, else (a `url` job,
        whose size is now known, or one whose reservation a crash sweep released because its
        submitter died before handing it over) one made now."""
        reservation_id = record.reservation_id
        if reservation_id is not None and self.accounts.is_pending(reservation_id):
            return record.reserved
        if not n_chunks:
            return record.reserved
        with self.accounts.reservation(account, n_chunks, ENTERPRISE) as held:
            jobs.set_reservation(record.id, held.entry_id, n_chunks)
            held.hand_over(record.id)
        return n_chunks


def _or(value: int | None, default: int) -> int:
    return default if value is None else value
