"""`songscan …`: the command line. Results on stdout, progress and errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from . import settings
from .allocator import tune_allocator
from .catalog import Catalog, TrackMetadata, iter_audio_files
from .chunks import PlanParams
from .config import DEFAULT
from .errors import InvalidParameters, SongscanError
from .ingest import IngestItem, IngestOutcome, ingest
from .results import (
    OutputOptions,
    enterprise_csv,
    enterprise_response,
    segments_json,
    standard_response,
    to_json,
)
from .scan import recognize_clip, scan_file

app = typer.Typer(
    help="songscan: recognise songs in audio, from short clips to days-long recordings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
catalog_app = typer.Typer(
    help="List, remove and measure the reference catalog.", no_args_is_help=True
)
app.add_typer(catalog_app, name="catalog")
stderr = Console(stderr=True)
T = TypeVar("T")


def _data(ctx: typer.Context) -> Path:
    obj = ctx.obj or {}
    return obj.get("data_dir") or settings.data_dir()


def _fail(exc: SongscanError) -> typer.Exit:
    stderr.print(
        f"[red]error[/red] ({exc.code}): {escape(exc.message)}", highlight=False, soft_wrap=True
    )
    return typer.Exit(2 if isinstance(exc, InvalidParameters) else 1)


def _run_app() -> None:
    """The app, with songscan errors raised outside a command body (opening a data dir of
    another format, say) ending in one line too."""
    try:
        app()
    except SongscanError as exc:
        raise SystemExit(_fail(exc).exit_code) from None


def _guard(fn: Callable[[], T]) -> T:
    """Run a command body: songscan errors end in one line on stderr and a non-zero exit."""
    try:
        return fn()
    except SongscanError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _progress() -> Progress:
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
    workers: Annotated[int, typer.Option(help="Processes (0: one per core).")] = 0,
) -> None:
    """Add reference tracks (metadata from tags, the file name as fallback title)."""

    def run() -> None:
        files = list(iter_audio_files(paths))
        missing = [p for p in files if not p.exists()]
        if missing:
            raise InvalidParameters(f"no such file or folder: {missing[0]}")
        if not files:
            raise InvalidParameters("no files to add")
        if audio_id is not None and len(files) != 1:
            raise InvalidParameters("--audio-id names one track: give exactly one file")
        override = TrackMetadata(artist, title, album, release_date, label, isrc, upc, song_link)
        items = [IngestItem(p, override, audio_id) for p in files]
        catalog = Catalog(_data(ctx))
        failures = 0
        with _progress() as bar:
            task = bar.add_task("adding", total=len(items), rate="")
            audio_s = 0.0

            def done(outcome: IngestOutcome) -> None:
                nonlocal audio_s, failures
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
                else:
                    failures += 1
                    assert outcome.error is not None
                    stderr.print(
                        f"skipped {outcome.item.path}: {outcome.error.message}",
                        highlight=False,
                        markup=False,
                        soft_wrap=True,
                    )

            ingest(catalog, items, DEFAULT, workers=workers, on_done=done)
        if failures == len(items):
            raise InvalidParameters("nothing was added")

    _guard(run)


@app.command()
def recognize(ctx: typer.Context, file: Path) -> None:
    """Standard recognition of a short clip (its first 25 s): AudD JSON on stdout."""
    songs = _guard(lambda: recognize_clip(file, _data(ctx)))
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
) -> None:
    """Enterprise scan of a long file in 12-second chunks: result on stdout."""

    def run() -> str:
        if format not in ("json", "csv", "segments"):
            raise InvalidParameters("--format must be json, csv or segments")
        params = PlanParams(skip, every, limit, skip_first_seconds)
        cfg = DEFAULT.with_workers(workers)
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

            result = scan_file(file, _data(ctx), params, cfg, progress=progress)
        opts = OutputOptions(accurate_offsets=accurate_offsets)
        if format == "csv":
            return enterprise_csv(result, opts)
        body: dict[str, Any] = (
            segments_json(result) if format == "segments" else enterprise_response(result, opts)
        )
        return to_json(body) + "\n"

    sys.stdout.write(_guard(run))


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
    from .api.serve import serve as run_server

    _guard(lambda: run_server(str(_data(ctx)), host, port, workers, enterprise_port))


@catalog_app.command("list")
def catalog_list(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """The reference tracks."""
    tracks = Catalog(_data(ctx)).tracks(owner=None)
    if as_json:
        rows = [
            {
                "audio_id": t.audio_id,
                "owner": t.owner,
                "duration_s": round(t.duration_s, 3),
                **t.metadata.__dict__,
            }
            for t in tracks
        ]
        print(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("audio_id", "artist", "title", "album", "duration", "owner")
    for t in tracks:
        m = t.metadata
        table.add_row(
            str(t.audio_id),
            m.artist or "",
            m.title or "",
            m.album or "",
            f"{t.duration_s:.1f}s",
            t.owner,
        )
    Console().print(table)


@catalog_app.command("remove")
def catalog_remove(ctx: typer.Context, audio_id: int) -> None:
    """Remove a track by audio_id."""
    track = _guard(lambda: Catalog(_data(ctx)).remove(audio_id))
    print(f"removed {track.audio_id}\t{track.metadata.title}")


@catalog_app.command("stats")
def catalog_stats(ctx: typer.Context) -> None:
    """Tracks, hours of reference audio, postings and index size."""
    print(json.dumps(Catalog(_data(ctx)).stats()))


@catalog_app.command("reindex")
def catalog_reindex(ctx: typer.Context) -> None:
    """Rebuild the fingerprint index from the stored peaks: after an upgrade that changed the
    hashes (the data directory's format), no audio needed."""

    def run() -> None:
        catalog = Catalog(_data(ctx), upgrade=True)
        with _progress() as bar:
            task = bar.add_task("reindexing", total=len(catalog.live_ids()), rate="")
            catalog.reindex(DEFAULT.fingerprint, on_track=lambda: bar.advance(task))
        print(json.dumps(catalog.stats()))

    _guard(run)


@catalog_app.command("compact")
def catalog_compact(ctx: typer.Context) -> None:
    """Merge index segments and drop postings of removed tracks."""
    catalog = Catalog(_data(ctx))
    catalog.compact()
    print(json.dumps(catalog.stats()))


def _mount_optional() -> None:
    """Sub-apps of other modules (accounts, server), when installed."""
    try:
        from .cli_accounts import accounts_app
    except ImportError:
        return
    app.add_typer(accounts_app, name="accounts", help="Accounts, tokens, plans (admin).")


_mount_optional()


def main() -> None:
    tune_allocator()
    _run_app()


if __name__ == "__main__":
    main()
