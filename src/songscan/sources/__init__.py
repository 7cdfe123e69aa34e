"""Where media comes from when a request names a URL: checks, downloads, web pages.

Data flow: `check_url` (is this URL allowed?) → `download` (stream it to a temp file)
or `fetch_media` (the same, or find the media a web page embeds with yt-dlp) → a file
for `songscan.media` to decode. `temporary_media` owns the files' directory;
`remove_orphan_media` removes those a killed process left.
"""

from songscan.sources.download import download
from songscan.sources.fetch import (
    MEDIA_DIR_PREFIX,
    fetch_media,
    is_media,
    remove_orphan_media,
    sniff_media,
    temporary_media,
)
from songscan.sources.netguard import AllowList, ParsedURL, check_url, is_public_address
from songscan.sources.timecode import parse_timecode, timecode_from_url

__all__ = [
    "MEDIA_DIR_PREFIX",
    "AllowList",
    "ParsedURL",
    "check_url",
    "download",
    "fetch_media",
    "is_media",
    "is_public_address",
    "parse_timecode",
    "remove_orphan_media",
    "sniff_media",
    "temporary_media",
    "timecode_from_url",
]
