"""Streams given as a web page (yt-dlp finds the stream its player plays) or as a shortcut
(`youtube:`, `youtube-ch:`, `twitch:`): the page each shortcut names, a station's page on
loopback whose plays are reported (its page read again on reconnecting), a page with an HLS
player, and the pages refused. Real servers on loopback; YouTube and Twitch are not reachable
here, so their shortcuts are tested as far as the page they name."""

from __future__ import annotations

import time

import pytest

from songscan.errors import UrlFailed
from songscan.sources import AllowList
from songscan.streams.source import StreamOptions, probe_stream, shortcut_page, stream_target
from tests.api.music import excerpt, music
from tests.streams.conftest import StreamsServer, quiet_url
from tests.streams.radio import (
    CallbackReceiver,
    Icecast,
    LiveHls,
    PageServer,
    Piece,
    SourceClient,
    player_page,
)
from tests.streams.test_api import error_code
from tests.streams.test_live import check_plays


@pytest.mark.parametrize(
    ("url", "page"),
    [
        ("youtube:dQw4w9WgXcQ", "https://www.youtube.com/watch?v=dQw4w9WgXcQ"),
        ("youtube:a-b_c1234XY", "https://www.youtube.com/watch?v=a-b_c1234XY"),
        ("youtube:@LofiGirl", "https://www.youtube.com/@LofiGirl/live"),
        ("YouTube:@lofi.girl-2", "https://www.youtube.com/@lofi.girl-2/live"),
        (
            "youtube-ch:UCSJ4gkVC6NrvII8umztf0Ow",
            "https://www.youtube.com/channel/UCSJ4gkVC6NrvII8umztf0Ow/live",
        ),
        ("twitch:monstercat", "https://www.twitch.tv/monstercat"),
        ("TWITCH:Some_Channel_1", "https://www.twitch.tv/Some_Channel_1"),
    ],
)
def test_a_shortcut_names_its_page(url: str, page: str) -> None:
    assert shortcut_page(url) == page
    assert stream_target(url) == page


@pytest.mark.parametrize(
    "url",
    ["http://radio.example/live.mp3", "https://www.youtube.com/watch?v=dQw4w9WgXcQ", "icy:x"],
)
def test_other_urls_are_no_shortcut(url: str) -> None:
    assert shortcut_page(url) is None
    assert stream_target(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "youtube:",
        "youtube:dQw4w9WgXc",  # 10 characters
        "youtube:dQw4w9WgXcQQ",
        "youtube:dQw4w9WgX/Q",
        "youtube:@ab",
        "youtube:@has space",
        "youtube:https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        "youtube-ch:dQw4w9WgXcQ",
        "youtube-ch:UCSJ4gkVC6NrvII8umztf0Ow/../x",
        "twitch:",
        "twitch:a/b",
        "twitch:@monstercat",
        "twitch:monstercat?x=1",
    ],
)
def test_malformed_shortcuts_are_refused(url: str) -> None:
    with pytest.raises(UrlFailed, match="shortcut takes") as refused:
        shortcut_page(url)
    assert refused.value.code == 600


# -- a station's page on loopback ----------------------------------------------------------------


def test_a_station_page_plays_and_is_read_again_on_reconnecting(
    streams_server: StreamsServer, icecast: Icecast
) -> None:
    """addStream with a page whose <audio> plays an Icecast mount: the plays are reported.
    Then the page moves its player to another mount (as a page's media URL expires) and the
    first mount ends: the listener reads the page again and reports the new mount's plays."""
    songs = streams_server.songs
    first = [
        Piece("unknown", music(951, 8.0)),
        Piece("song1", excerpt(songs[1], 0.0, 24.0)),
        Piece("unknown", music(952, 10.0)),
    ]
    second = [
        Piece("unknown", music(953, 6.0)),
        Piece("song2", excerpt(songs[2], 10.0, 34.0)),
        Piece("unknown", music(954, 14.0)),
    ]
    token = streams_server.new_token()
    with CallbackReceiver() as receiver, PageServer() as site:
        page = site.url("/listen/live")
        site.pages["/listen/live"] = player_page(icecast.url("page-a.mp3"))
        source = SourceClient(icecast, "page-a.mp3", first).play()
        streams_server.call("setCallbackUrl", token, url=receiver.url())
        added = streams_server.call("addStream", token, url=page, radio_id=8)
        assert added["status"] == "success", added
        try:
            listed = streams_server.call("getStreams", token)["result"]
            assert isinstance(listed, list)
            assert [(s["radio_id"], s["url"]) for s in listed] == [(8, page)]  # as given
            assert receiver.wait_for(lambda r: r.results(), timeout_s=45)
            site.pages["/listen/live"] = player_page(icecast.url("page-b.mp3"), tag="video")
            source.wait()
            again = SourceClient(icecast, "page-b.mp3", second).play()
            again.wait()
            assert receiver.wait_for(lambda r: len(r.results()) >= 2, timeout_s=20)
            results = receiver.results()
            check_plays(results[:1], first, source.started, lengths=True)
            check_plays(results[1:], second, again.started, lengths=True)
            assert icecast.listeners("page-a.mp3") == 0
        finally:
            streams_server.call("deleteStream", token, radio_id=8)


def test_a_page_with_an_hls_player(streams_server: StreamsServer) -> None:
    """A page whose <video> plays an HLS live playlist: the stream runs (read through our own
    fetches of the playlist yt-dlp found), its URL stays the page's."""
    token = streams_server.new_token()
    with LiveHls([Piece("unknown", music(961, 40.0))]) as hls, PageServer() as site:
        hls.play()
        site.pages["/tv"] = player_page(hls.url, tag="video")
        added = streams_server.call("addStream", token, url=site.url("/tv"), radio_id=9)
        assert added["status"] == "success", added
        try:
            deadline = time.monotonic() + 30
            listed: object = []
            while time.monotonic() < deadline:
                listed = streams_server.call("getStreams", token)["result"]
                assert isinstance(listed, list)
                if listed[0]["stream_running"]:
                    break
                time.sleep(0.3)
            assert isinstance(listed, list)
            assert (listed[0]["url"], listed[0]["stream_running"]) == (site.url("/tv"), True)
        finally:
            streams_server.call("deleteStream", token, radio_id=9)


@pytest.mark.parametrize(
    ("player", "message"),
    [
        ("<p>Our stream is off the air.</p>", "yields no media"),
        (player_page("http://10.0.0.1/live.mp3"), "not allowed"),  # its media: a private address
        (player_page("http://169.254.169.254/latest/meta-data"), "not allowed"),
        (player_page("/other-page.html"), "web page"),  # its "media" is another page
    ],
    ids=["no-media", "private-media", "metadata-media", "page-media"],
)
def test_pages_without_a_stream_are_refused(
    streams_server: StreamsServer, player: str, message: str
) -> None:
    token = streams_server.new_token()
    with PageServer() as site:
        site.pages["/station"] = f"<!DOCTYPE html><html><body>{player}</body></html>"
        site.pages["/other-page.html"] = "<!DOCTYPE html><html><body>Hello</body></html>"
        body = streams_server.call("addStream", token, url=site.url("/station"), radio_id=1)
    assert error_code(body) == 600, body
    error = body["error"]
    assert isinstance(error, dict) and message in str(error["error_message"]), body
    assert "Traceback" not in str(body) and token not in str(body)
    assert streams_server.call("getStreams", token)["result"] == []


def test_a_malformed_shortcut_is_refused_by_add_stream(streams_server: StreamsServer) -> None:
    token = streams_server.new_token()
    body = streams_server.call("addStream", token, url="youtube:no video id", radio_id=1)
    assert error_code(body) == 600
    assert "youtube: shortcut takes" in str(body)
    assert streams_server.call("getStreams", token)["result"] == []


def test_a_page_on_a_private_address_is_not_fetched(streams_server: StreamsServer) -> None:
    """Without the allow list, a page on loopback is refused before any request is made (nor
    does yt-dlp get to send one); with it, its stream plays."""
    with PageServer() as site:
        site.pages["/radio"] = player_page(quiet_url(streams_server))
        closed = StreamOptions(AllowList(), read_timeout_s=4.0, sample_rate_hz=11025)
        with pytest.raises(UrlFailed, match="not allowed"):
            probe_stream(site.url("/radio"), closed, within_s=8.0)
        assert site.hits == {}
        allowed = StreamOptions(AllowList(["127.0.0.1"]), read_timeout_s=4.0, sample_rate_hz=11025)
        probe_stream(site.url("/radio"), allowed, within_s=8.0)
        assert site.hits["/radio"] >= 1
