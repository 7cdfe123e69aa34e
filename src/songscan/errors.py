"""One hierarchy of errors; each carries its AudD error code and the HTTP status it is sent with.

Every API error is HTTP 200 with `status: "error"` (AudD's way), except where the transport
needs a status of its own: 413 for a body over the server's hard cap, 429 for rate limiting.
"""

from __future__ import annotations


class SongscanError(Exception):
    """Base of every error songscan reports to a caller. `code` is the AudD error code."""

    code: int = 100
    http_status: int = 200
    default_message = "unexpected server error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)

    @property
    def message(self) -> str:
        return str(self.args[0])

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the reply carries besides the body (`Retry-After`, say)."""
        return {}


class ConfigError(SongscanError):
    """songscan.toml (or the environment) names an unknown key, gives a value of the wrong
    type, or is not valid TOML. Raised at start-up; the CLI ends it in one line."""

    code = 100
    default_message = "the configuration is invalid"


class InvalidParameters(SongscanError):
    code = 50
    default_message = "contradicting or invalid parameters"


class FingerprintFailed(SongscanError):
    code = 300
    default_message = "fingerprinting failed: the audio is too short or silent"


class MediaTooLarge(SongscanError):
    code = 400
    default_message = "the media is too big for this endpoint"


class AudioTooLong(MediaTooLarge):
    """Longer than the method takes (a reference over `[media] max_reference_s`)."""

    default_message = "the audio is longer than this method takes"


class DecodeFailed(SongscanError):
    code = 500
    default_message = "the media cannot be decoded as audio"


class NotARecording(DecodeFailed):
    """Audio no recording has (a sample rate under `[media] min_sample_rate_hz`): refused from
    its header, before a resampler would multiply it up to the engine's rate."""

    default_message = "the audio's sample rate is too low for a recording"


class UrlFailed(SongscanError):
    code = 600
    default_message = "the URL is malformed, unreachable, not allowed, or yields no media"


class NoMedia(SongscanError):
    code = 700
    default_message = "no url, file or audio was sent"


class UnknownToken(SongscanError):
    code = 900
    default_message = "the api_token is unknown, revoked or malformed"


class MissingToken(SongscanError):
    code = 901
    default_message = "no api_token was sent"


class QuotaExceeded(SongscanError):
    code = 902
    default_message = "the request quota of this account is used up"


class NotEntitled(SongscanError):
    code = 904
    default_message = "this method or option is not available to this token"


class AlreadySettled(SongscanError):
    """A reservation was settled already (billed once, or released by a crash sweep): settling
    it again changes nothing. Callers that may race a sweep or a rerun expect it."""

    code = 100
    default_message = "the reservation is already settled"


class NotFound(SongscanError):
    """A catalog entry or other named thing does not exist (CLI and admin use)."""

    code = 50
    default_message = "not found"


class AlreadyInCatalog(InvalidParameters):
    """A file being added holds audio the catalog already has (found by its fingerprint)."""

    default_message = "this audio is already in the catalog"


class IndexUnavailable(SongscanError):
    """The posting index's servers (a Redis Cluster) cannot be reached, lost a write, or are
    failing over: the request fails rather than answering from part of the index."""

    code = 100
    default_message = "the fingerprint index is unavailable"


class DatabaseUnavailable(SongscanError):
    """The database (accounts, jobs, catalog) cannot be reached, or the connection broke
    mid-statement (PostgreSQL restarting, say): the request fails cleanly, and the next one
    reconnects once the database is back."""

    code = 100
    default_message = "the database is unavailable; try again shortly"
