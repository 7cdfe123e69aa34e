"""`songscan …`: the command line. Results on stdout, progress and errors on stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer._click.exceptions import NoArgsIsHelpError  # Typer's own Click (typer is pinned)

from . import settings
from .cli_errors import fail, guard
from .errors import AlreadyInCatalog, InvalidParameters, SongscanError
from .settings import Settings

# The engine (numpy, SciPy, PyAV), the catalog and the server are imported by the commands
# that use them: `songscan --help` or `catalog stats` does not pay for what `scan` needs.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from .catalog import Catalog, Track
    from .config import EngineConfig

app = typer.Typer(
    help="songscan: recognise songs in audio, from short clips to days-long recordings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # Click's plain help: Rich's took a third of `--help`'s 0.3 s
    add_completion=False,
)
catalog_app = typer.Typer(
    help="List, remove and measure the reference catalog.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(catalog_app, name="catalog")

OwnerOption = Annotated[
    str | None,
    typer.Option(
        "--owner",
        metavar="ACCOUNT",
        help="That account's uploads (its id, as `songscan accounts list` shows it); "
        "without it, the shared catalog only.",
    ),
]


def _owner(account: str | None) -> str:
    """The catalog owner named by --owner: "" (the shared catalog) when not given."""
    if account is None:
        return ""
    if not account.strip().isdigit():
        raise InvalidParameters(
            f"--owner takes an account id (`songscan accounts list` shows them), not {account!r}"
        )
    return str(int(account))


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def _settings(ctx: typer.Context) -> Settings:
    """The settings (`songscan.settings`), read once per command: the data directory of
    `--data` (else `$SONGSCAN_DATA`, else the user's), its songscan.toml and the environment."""
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = settings.load(obj.get("data_dir"))
    loaded: Settings = obj["settings"]
    return loaded


def _data(ctx: typer.Context) -> Path:
    return _settings(ctx).data_dir


def _catalog(ctx: typer.Context, upgrade: bool = False) -> Catalog:
    from .catalog import Catalog

    loaded = _settings(ctx)
    return Catalog(
        _data(ctx), upgrade=upgrade, database_url=loaded.catalog_url, index_url=loaded.index_url
    )


def _engine(ctx: typer.Context) -> EngineConfig:
    """The engine's settings, with the data directory's songscan.toml `[media]` applied."""
    from .config import EngineConfig

    loaded = _settings(ctx)
    return EngineConfig.from_config(loaded.config, loaded.catalog_url, loaded.index_url)


def _run_app() -> None:
    """The app, where every error ends in one line on stderr: songscan errors raised outside
    a command body (opening a data dir of another format, say) and Click's usage errors (a
    bad option value, an unknown option, a missing argument) too."""
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `songscan` or `songscan catalog` alone: the help
        exc.show()
        code = exc.exit_code
    except typer.TyperException as exc:  # Click's usage errors
        code = fail(InvalidParameters(_usage_message(exc))).exit_code
    except typer.Abort:  # end of input at a prompt
        code = 1
    except SongscanError as exc:
        code = fail(exc).exit_code
    raise SystemExit(code if isinstance(code, int) else 0)


def _usage_message(exc: typer.TyperException) -> str:
    message = exc.format_message().rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    return f"{message} (see `{ctx.command_path} --help`)"


def _progress() -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    stderr = _stderr()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=False,
        disable=not stderr.is_terminal,
    )


@app.callback()
def main_options(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="Data directory (default: $SONGSCAN_DATA or the user data dir)."
        ),
    ] = None,
) -> None:
    ctx.obj = {"data_dir": settings.data_dir(data) if data else None}


@app.command()
def add(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Audio/video files or folders (recursive).")],
    audio_id: Annotated[int | None, typer.Option(help="audio_id (one file only).")] = None,
    title: Annotated[str | None, typer.Option()] = None,
    artist: Annotated[str | None, typer.Option()] = None,
    album: Annotated[str | None, typer.Option()] = None,
    release_date: Annotated[str | None, typer.Option()] = None,
    label: Annotated[str | None, typer.Option()] = None,
    isrc: Annotated[str | None, typer.Option()] = None,
    upc: Annotated[str | None, typer.Option()] = None,
    song_link: Annotated[str | None, typer.Option()] = None,
    owner: OwnerOption = None,
    replace: Annotated[
        bool, typer.Option(help="A file whose audio is already in the catalog replaces that track.")
    ] = False,
    allow_duplicate: Annotated[
        bool, typer.Option(help="Add a file whose audio is already in the catalog as a new track.")
    ] = False,
    workers: Annotated[int, typer.Option(help="Processes (0: one per core).")] = 0,
) -> None:
    """Add reference tracks (metadata from tags, the file name as fallback title). A file whose
    audio is already in the catalog (by its fingerprint, whatever its name) is refused unless
    --replace or --allow-duplicate is given."""
    from .allocator import tune_allocator
    from .catalog import FingerprintedTrack, TrackMetadata, iter_audio_files
    from .duplicates import find_duplicate
    from .ingest import IngestItem, IngestOutcome, ingest

    def run() -> None:
        if replace and allow_duplicate:
            raise InvalidParameters("--replace and --allow-duplicate contradict each other")
        files = list(iter_audio_files(paths))
        missing = [p for p in files if not p.exists()]
        if missing:
            raise InvalidParameters(f"no such file or folder: {missing[0]}")
        if not files:
            raise InvalidParameters("no files to add")
        if audio_id is not None and len(files) != 1:
            raise InvalidParameters("--audio-id names one track: give exactly one file")
        override = TrackMetadata(artist, title, album, release_date, label, isrc, upc, song_link)
        items = [IngestItem(p, override, audio_id, _owner(owner)) for p in files]
        tune_allocator()
        catalog = _catalog(ctx)
        engine = _engine(ctx)
        stderr = _stderr()

        def vet(track: FingerprintedTrack) -> None:
            """Refuse (or, with --replace, take the place of) audio already in the catalog."""
            if allow_duplicate:
                return
            same = find_duplicate(catalog, track, engine)
            if same is None:
                return
            if not replace:
                raise AlreadyInCatalog(
                    f"{Path(track.source or '').name} is already in the catalog as "
                    f"{_describe(same)}: "
                    "--replace replaces that track, --allow-duplicate adds it again"
                )
            if track.audio_id is not None and track.audio_id != same.audio_id:
                raise InvalidParameters(
                    f"--replace keeps the audio_id of {_describe(same)}: leave out --audio-id"
                )
            track.audio_id = same.audio_id

        failures: list[SongscanError] = []
        with _progress() as bar:
            task = bar.add_task("adding", total=len(items), rate="")
            audio_s = 0.0

            def done(outcome: IngestOutcome) -> None:
                nonlocal audio_s
                audio_s += outcome.audio_s
                elapsed = bar.tasks[task].elapsed or 1e-9
                bar.update(task, advance=1, rate=f"{audio_s / elapsed:.0f}x")
                if outcome.track is not None:
                    t = outcome.track
                    print(
                        f"added {t.audio_id}\t{t.metadata.artist or ''}\t{t.metadata.title}"
                        f"\t{t.duration_s:.1f}s\t{outcome.item.path}",
                        flush=True,
                    )
                    return
                assert outcome.error is not None
                failures.append(outcome.error)
                if len(items) > 1:
                    stderr.print(
                        f"skipped {outcome.item.path}: {outcome.error.message}",
                        highlight=False,
                        markup=False,
                        soft_wrap=True,
                    )

            ingest(
                catalog,
                items,
                engine,
                workers=workers,
                on_done=done,
                vet=vet,
                batch_postings_max=_settings(ctx).ingest_batch_postings,
            )
        if len(items) == 1 and failures:
            raise failures[0]
        if len(failures) == len(items):
            raise InvalidParameters("nothing was added")

    guard(run)


def _describe(track: Track) -> str:
    """`track 7 "Artist – Title"` (and whose upload it is, when it is one)."""
    m = track.metadata
    name = f"{m.artist} – {m.title}" if m.artist else f"{m.title or ''}"
    whose = f" of account {track.owner}" if track.owner else ""
    return f'track {track.audio_id}{whose} "{name}"'


def _owners(account: str | None) -> tuple[str, ...]:
    """What a query matches: the shared catalog, and with --owner that account's uploads too
    (as that account's API queries do)."""
    owner = _owner(account)
    return ("", owner) if owner else ("",)


@app.command()
def recognize(ctx: typer.Context, file: Path, owner: OwnerOption = None) -> None:
    """Standard recognition of a short clip (its first 25 s) against the shared catalog (and
    with --owner, that account's uploads): AudD JSON on stdout."""
    from .allocator import tune_allocator
    from .results import standard_response, to_json
    from .scan import recognize_clip

    tune_allocator()
    songs = guard(lambda: recognize_clip(file, _data(ctx), _engine(ctx), owners=_owners(owner)))
    print(to_json(standard_response(songs)))


@app.command()
def scan(
    ctx: typer.Context,
    file: Path,
    skip: Annotated[int, typer.Option(help="Chunks passed over after each `every`.")] = 0,
    every: Annotated[int, typer.Option(help="Chunks recognised in a row.")] = 1,
    limit: Annotated[int | None, typer.Option(help="At most this many chunks.")] = None,
    skip_first_seconds: Annotated[float, typer.Option(help="Seconds before chunk 0.")] = 0.0,
    accurate_offsets: Annotated[bool, typer.Option(help="start_offset/end_offset.")] = False,
    format: Annotated[str, typer.Option(help="json, csv or segments.")] = "json",
    workers: Annotated[int, typer.Option(help="Processes (0: one per core).")] = 0,
    owner: OwnerOption = None,
) -> None:
    """Enterprise scan of a long file in 12-second chunks against the shared catalog (and with
    --owner, that account's uploads): result on stdout."""
    from .allocator import tune_allocator
    from .chunks import PlanParams
    from .enterprise import RESPONSE_TYPES, EnterpriseRequest, enterprise_scan, reply_body
    from .results import OutputOptions, to_json
    from .scan import start_pool_for

    def run() -> str:
        if format not in RESPONSE_TYPES:
            raise InvalidParameters("--format must be json, csv or segments")
        owners = _owners(owner)
        params = PlanParams(skip, every, limit, skip_first_seconds)
        opts = OutputOptions(accurate_offsets=accurate_offsets)
        request = EnterpriseRequest(params, opts, format, url=None)
        cfg = _engine(ctx).with_workers(workers)
        data = _data(ctx)
        tune_allocator()
        plan = start_pool_for(file, data, params, cfg)  # before the progress bar's thread
        with _progress() as bar:
            task = bar.add_task("scanning", total=None, rate="")

            def progress(done: int, total: int) -> None:
                elapsed = bar.tasks[task].elapsed or 1e-9
                bar.update(
                    task,
                    completed=done,
                    total=total,
                    rate=f"{done * cfg.scan.chunk_s / elapsed:.0f}x",
                )

            result = enterprise_scan(
                file, data, request, cfg, owners=owners, progress=progress, plan=plan
            )
        reply = reply_body(result, request).body
        return reply if isinstance(reply, str) else to_json(reply) + "\n"

    sys.stdout.write(guard(run))


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(help="Uvicorn worker processes (0: one per core).", min=0)
    ] = 0,
    enterprise_port: Annotated[
        int | None, typer.Option(help="Also listen here, serving /enterprise on `/`.")
    ] = None,
) -> None:
    """Serve the AudD-compatible HTTP API and the dashboard (embedded defaults)."""
    from .allocator import tune_allocator
    from .api.serve import serve as run_server

    tune_allocator()
    guard(lambda: run_server(_settings(ctx), host, port, workers, enterprise_port))


@app.command()
def worker(
    ctx: typer.Context,
    concurrency: Annotated[
        int, typer.Option(help="Runs of chunks at once, one process each (0: one per core).", min=0)
    ] = 0,
    loglevel: Annotated[str, typer.Option(help="Celery's log level.")] = "INFO",
) -> None:
    """Run scans for the API nodes: a Celery worker on the broker of SONGSCAN_BROKER_URL,
    matching against the catalog and index of SONGSCAN_DATABASE_URL and SONGSCAN_INDEX_URL;
    and listen to the live streams beside it (unless [streams] listen = false)."""
    from .allocator import tune_allocator
    from .distributed.tasks import run_worker

    tune_allocator()
    guard(lambda: run_worker(_settings(ctx), concurrency or None, loglevel.upper()))


@catalog_app.command("list")
def catalog_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    owner: OwnerOption = None,
) -> None:
    """The reference tracks: the shared catalog's and every account's uploads (with --owner,
    that account's only). OWNER is "shared" or the account's id."""

    tracks = guard(lambda: _catalog(ctx).tracks(None if owner is None else _owner(owner)))
    if as_json:
        rows = [
            {
                "owner": t.owner,
                "audio_id": t.audio_id,
                "duration_s": round(t.duration_s, 3),
                **t.metadata.__dict__,
            }
            for t in tracks
        ]
        print(json.dumps(rows, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("owner", "audio_id", "artist", "title", "album", "duration")
    for t in tracks:
        m = t.metadata
        table.add_row(
            t.owner or "shared",
            str(t.audio_id),
            m.artist or "",
            m.title or "",
            m.album or "",
            f"{t.duration_s:.1f}s",
        )
    Console().print(table)


@catalog_app.command("remove")
def catalog_remove(ctx: typer.Context, audio_id: int, owner: OwnerOption = None) -> None:
    """Remove a track by audio_id: of the shared catalog, or with --owner of that account's
    uploads."""

    track = guard(lambda: _catalog(ctx).remove(audio_id, _owner(owner)))
    print(f"removed {track.audio_id}\t{track.owner or 'shared'}\t{track.metadata.title}")


@catalog_app.command("stats")
def catalog_stats(ctx: typer.Context) -> None:
    """Tracks, hours of reference audio, postings and index size."""

    print(json.dumps(guard(lambda: _catalog(ctx).stats())))


@catalog_app.command("reindex")
def catalog_reindex(ctx: typer.Context) -> None:
    """Rebuild the fingerprint index from the stored peaks: after an upgrade that changed the
    hashes (the data directory's format), no audio needed."""
    from .config import DEFAULT

    def run() -> None:
        catalog = _catalog(ctx, upgrade=True)
        with _progress() as bar:
            task = bar.add_task("reindexing", total=len(catalog.live_ids()), rate="")
            catalog.reindex(DEFAULT.fingerprint, on_track=lambda: bar.advance(task))
        print(json.dumps(catalog.stats()))

    guard(run)


@catalog_app.command("copy")
def catalog_copy(
    ctx: typer.Context,
    to: Annotated[
        str | None,
        typer.Option(help="Database URL (default: the settings' SONGSCAN_DATABASE_URL)."),
    ] = None,
) -> None:
    """Copy the data directory's SQLite catalog into an empty database (PostgreSQL), to move
    a data directory onto it: then set SONGSCAN_DATABASE_URL to that database."""
    from .catalog import Catalog

    def run() -> None:
        target = to or _settings(ctx).catalog_url
        if not target:
            raise InvalidParameters("name the database: --to URL or SONGSCAN_DATABASE_URL")
        source = Catalog(_data(ctx))  # the data directory's own catalog.sqlite
        with _progress() as bar:
            task = bar.add_task("copying", total=len(source.live_ids()), rate="")
            copied = source.copy_to(target, on_track=lambda: bar.advance(task))
        print(json.dumps({"tracks": copied}))

    guard(run)


@catalog_app.command("compact")
def catalog_compact(ctx: typer.Context) -> None:
    """Merge index segments and drop postings of removed tracks."""

    def run() -> None:
        catalog = _catalog(ctx)
        catalog.compact()
        print(json.dumps(catalog.stats()))

    guard(run)


def _mount_optional() -> None:
    """Sub-apps of other modules (accounts, server), when installed."""
    try:
        from .cli_accounts import accounts_app
    except ImportError:
        return
    app.add_typer(accounts_app, name="accounts", help="Accounts, tokens, plans (admin).")


_mount_optional()


def main() -> None:
    _run_app()


if __name__ == "__main__":
    main()
