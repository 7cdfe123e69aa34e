"""/docs documents every parameter and error code of the three methods."""

from __future__ import annotations

from tests.api.conftest import Api

CONTRACT = {
    "/": ["api_token", "url", "file", "audio", "return", "method"],
    "/enterprise": [
        "api_token",
        "url",
        "file",
        "return",
        "every",
        "skip",
        "limit",
        "skip_first_seconds",
        "use_timecode",
        "accurate_offsets",
        "response_type",
    ],
    "/upload/": ["api_token", "url", "file", "audio_id", "artist", "title", "release_date"],
}
CODES = [900, 901, 902, 904, 50, 600, 700, 500, 400, 300, 100]


def test_openapi_lists_every_parameter_and_error_code(api: Api) -> None:
    with api.client() as client:
        spec = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    for path, names in CONTRACT.items():
        for method in ("get", "post"):
            op = spec["paths"][path][method]
            body = op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
            query = {p["name"] for p in op["parameters"]}
            for name in names:
                assert name in body, (path, name)
                assert name in query or body[name].get("format") == "binary", (path, name)
            described = op["responses"]["200"]["description"]
            assert all(f"`{code}`" in described for code in CODES)
