"""/docs documents every parameter and error code of the three methods."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Browser, Route, expect

from tests.api.conftest import Api
from tests.browser import PageProblems

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
        "async",
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


def test_openapi_lists_the_long_job_routes(api: Api) -> None:
    with api.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    routes = {
        "/enterprise/jobs": ["get"],
        "/enterprise/jobs/{job_id}": ["get", "delete"],
        "/enterprise/jobs/{job_id}/result": ["get"],
        "/enterprise/jobs/{job_id}/cancel": ["post"],
    }
    for path, methods in routes.items():
        for method in methods:
            op = paths[path][method]
            params = {p["name"]: p for p in op["parameters"]}
            assert params["api_token"]["required"], (path, method)
            assert ("job_id" in params) == ("{job_id}" in path)
            assert "`running`" in op["responses"]["200"]["description"]
    assert "limit" in {p["name"] for p in paths["/enterprise/jobs"]["get"]["parameters"]}


def test_docs_render_with_no_network(browser: Browser, api: Api) -> None:
    """Swagger UI comes from this server: with every request off this machine refused, /docs
    still shows each operation, and its page's CSP refuses nothing it needs."""
    context = browser.new_context(base_url=api.base_url)
    refused: list[str] = []

    def only_loopback(route: Route) -> None:
        host = urlsplit(route.request.url).hostname
        if host in ("127.0.0.1", "localhost", "::1"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_loopback)
    page = context.new_page()
    problems = PageProblems(page)
    try:
        page.goto("/docs")
        for path in CONTRACT:
            for method in ("get", "post"):
                summary = page.locator(f".opblock-{method} [data-path='{path}']")
                expect(summary).to_be_visible(timeout=30_000)
        expect(
            page.locator(".opblock-delete [data-path='/enterprise/jobs/{job_id}']")
        ).to_be_visible()
        page.locator(".opblock-post [data-path='/enterprise']").click()  # open it: its form
        expect(page.locator(".opblock-post .parameters").first).to_contain_text("every")
        assert refused == []
        assert problems.csp_violations(page) == []
        assert problems.console_errors == []
    finally:
        context.close()
