"""The shape of the code: no import cycles, the use cases without HTTP, the environment read
in one place. Checked on the source (every import, function-level ones too) and by importing
modules in fresh interpreters."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src"
# The modules that may read the environment: the settings, and `serve`'s hand-over of what to
# serve to its worker processes.
ENVIRONMENT_READERS = {"songscan.settings", "songscan.api.serve"}
# What a task-queue worker or the CLI imports to run a scan: no web framework in there.
WITHOUT_HTTP = ("songscan.enterprise", "songscan.settings", "songscan.fields", "songscan.jobs")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in (SOURCE / "songscan").rglob("*.py"):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The songscan modules `module` imports anywhere in its body."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return {name for name in out if name in known and name != module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_imports_one_that_imports_it_back() -> None:
    known = _modules()
    graph = {name: _imported(name, path, known) for name, path in known.items()}
    assert graph["songscan.api.app"] >= {"songscan.api.recognition", "songscan.api.jobs"}
    assert _cycle(graph) is None, " → ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_imports_first_on_its_own() -> None:
    """Each module imported with no other songscan module loaded before it (a cycle that
    works in one order breaks in another). Alembic's migration scripts are Alembic's to run."""
    names = sorted(name for name in _modules() if ".migrations" not in name)
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'songscan']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {exc!r}')\n"
        "print('\\n'.join(failed))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
    assert len(names) > 40


def _loaded(modules: tuple[str, ...], packages: set[str]) -> list[str]:
    """Which of `packages` a fresh interpreter has loaded once it has imported `modules`."""
    script = (
        f"import sys, {', '.join(modules)}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {packages!r}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = ast.literal_eval(proc.stdout.strip())
    return loaded


def test_the_use_cases_load_without_a_web_framework() -> None:
    assert _loaded(WITHOUT_HTTP, {"fastapi", "starlette"}) == []
    assert _loaded(("songscan.api.app",), {"fastapi", "starlette"}) == ["fastapi", "starlette"]


def test_the_enterprise_use_case_loads_what_the_command_line_scan_needs_only() -> None:
    """`songscan scan` shares the use case's plan, scan and reply; it has no accounts and no
    URLs, so the module loads neither SQLAlchemy nor the URL fetchers (httpx, yt-dlp)."""
    heavy = {"sqlalchemy", "httpx", "yt_dlp", "fastapi", "starlette"}
    assert _loaded(("songscan.enterprise",), heavy) == []


def test_the_environment_is_read_by_the_settings_alone() -> None:
    readers: dict[str, int] = {}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            reads = (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")) or (
                isinstance(node, ast.Name) and node.id in ("environ", "getenv")
            )
            if reads:
                readers[name] = readers.get(name, 0) + 1
    assert set(readers) <= ENVIRONMENT_READERS, readers
    assert "songscan.settings" in readers  # the check sees what it looks for
