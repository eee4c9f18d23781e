"""Development sessions: ``python -m nox -s tests`` (see README).

Every session installs the locked workspace (the root and the local plugin
distributions) into its own virtual environment with ``uv sync --locked``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "typecheck", "package", "tests", "bench_smoke"]
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"
SUPPORTED_PYTHONS = ["3.11", "3.12", "3.13"]
"""The CPython versions healkit supports (pyproject's classifiers); the tests run on each."""


def _version_key(path: Path) -> tuple[int, ...]:
    """Order pyenv's version directories numerically (3.12.10 after 3.12.9)."""
    return tuple(int(part) for part in path.name.split(".") if part.isdigit())


def _expose_pyenv_interpreters(versions: list[str]) -> None:
    """Put pyenv's installed interpreters on PATH under their versioned names.

    pyenv's shims refuse a version that is not selected (``python3.12: command
    not found``), so nox would report it missing. For each version whose
    ``pythonX.Y`` does not run, the newest ``X.Y.*`` under ``pyenv root`` is
    linked by that name alone into a directory put first on PATH (``python``
    itself keeps pointing where it did).
    """
    missing = [v for v in versions if not _runs(f"python{v}")]
    pyenv = shutil.which("pyenv")
    if not missing or pyenv is None:
        return
    root = Path(
        subprocess.run(  # noqa: S603 - pyenv found on PATH, fixed arguments
            [pyenv, "root"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    links = Path(tempfile.gettempdir()) / "healkit-nox-pythons"
    links.mkdir(exist_ok=True)
    for version in missing:
        found = sorted(
            root.glob(f"versions/{version}.*/bin/python{version}"),
            key=lambda p: _version_key(p.parent.parent),
        )
        if not found:
            continue
        link = links / f"python{version}"
        link.unlink(missing_ok=True)
        link.symlink_to(found[-1])
    os.environ["PATH"] = f"{links}{os.pathsep}{os.environ.get('PATH', '')}"


def _runs(command: str) -> bool:
    """Whether ``command`` is on PATH and runs (a pyenv shim of an unselected version does not)."""
    if shutil.which(command) is None:
        return False
    ran = subprocess.run([command, "--version"], capture_output=True, check=False)  # noqa: S603 - a python command name of ours
    return ran.returncode == 0


_expose_pyenv_interpreters(SUPPORTED_PYTHONS)
PLUGINS = (
    "healkit-timeout",
    "healkit-retry",
    "healkit-breaker",
    "healkit-tls",
    "healkit-tracing",
)


def sync(session: nox.Session, *groups: str) -> None:
    """Install the locked workspace with every extra and the given dependency groups."""
    args = ["uv", "sync", "--locked", "--all-extras", "--no-default-groups"]
    for group in groups:
        args += ["--group", group]
    session.run_install(*args, env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location})


SYSTEM_ETCD = "/usr/bin/etcd"
"""Debian's etcd-server (3.4): when it is installed, the etcd tests run against it too."""


@nox.session(python=SUPPORTED_PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the whole test suite (real servers, real TLS, real etcd; everything on loopback)."""
    sync(session, "test")
    session.run("pytest", *session.posargs)
    if not session.posargs and session.python == PYTHON and Path(SYSTEM_ETCD).is_file():
        session.log(f"etcd tests again, against {SYSTEM_ETCD}")
        etcd_tests = sorted(str(path) for path in Path("tests").glob("test_etcd_*.py"))
        session.run("pytest", *etcd_tests, env={"HEALKIT_ETCD_BINARY": SYSTEM_ETCD})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff: lint and formatting."""
    sync(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


PROGRAM_PAGES = ("README.md", "docs/quickstart.md")
"""Pages whose python blocks are whole programs a user copies (tests/test_docs.py runs them)."""
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def write_programs(directory: Path) -> list[str]:
    """Write each python block of :data:`PROGRAM_PAGES` to a file of its own; return the paths."""
    paths = []
    for page in PROGRAM_PAGES:
        text = Path(page).read_text(encoding="utf-8")
        for number, code in enumerate(PYTHON_BLOCK.findall(text), start=1):
            path = directory / f"{Path(page).stem.lower()}_{number}.py"
            path.write_text(code, encoding="utf-8")
            paths.append(str(path))
    return paths


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the core, the plugins, the example plugin and the docs' programs."""
    sync(session, "typecheck", "test")
    session.run("mypy")
    programs = Path(session.create_tmp()) / "programs"
    shutil.rmtree(programs, ignore_errors=True)
    programs.mkdir()
    session.run("mypy", "--strict", *write_programs(programs))


@nox.session(python=PYTHON)
def package(session: nox.Session) -> None:
    """Build every distribution; install the core (with its timeout plugin) and each plugin."""
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("uv", "build", "--all-packages", "--out-dir", str(dist), external=True)

    def wheel(distribution: str) -> str:
        return str(next(dist.glob(f"{distribution.replace('-', '_')}-*.whl")))

    # The core depends on healkit-timeout: both wheels are given, so nothing
    # of healkit's is looked up on an index.
    core = [wheel("healkit"), wheel("healkit-timeout")]
    session.run("uv", "pip", "install", "--reinstall", *core)
    session.run("python", "-c", "import healkit, healkit_timeout; print('core and timeout ok')")
    for plugin in PLUGINS:
        if plugin == "healkit-timeout":
            continue
        session.run("uv", "pip", "install", "--reinstall", *core, wheel(plugin))
        module = plugin.replace("-", "_")
        session.run("python", "-c", f"import healkit, {module}; print({module}.__name__, 'ok')")
        session.run("uv", "pip", "uninstall", plugin)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Run every code example of docs/; check the reference, value lists and dashboard."""
    sync(session, "test")
    session.run(
        "pytest",
        *sorted(str(path) for path in Path("tests").glob("test_docs*.py")),
        *session.posargs,
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: pipeline overhead and end-to-end client CPU against peers."""
    sync(session, "bench")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(python=PYTHON)
def bench_smoke(session: nox.Session) -> None:
    """Run every benchmark briefly, so the harness keeps working (numbers not judged)."""
    sync(session, "bench")
    session.run("python", "benchmarks/run.py", "--quick", "--json", silent=True)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """healkit's main job on its embedded default: traffic through a scripted outage."""
    sync(session)
    session.run("healkit", "demo", *(session.posargs or ["--duration", "30"]), external=False)
