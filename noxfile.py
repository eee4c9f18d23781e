"""Development sessions: ``python -m nox -s tests`` (see README).

Every session installs the locked workspace (the root and the local plugin
distributions) into its own virtual environment with ``uv sync --locked``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "typecheck", "package", "tests", "bench_smoke"]
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"
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


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the whole test suite (real servers, real TLS, real etcd; everything on loopback)."""
    sync(session, "test")
    session.run("pytest", *session.posargs)
    if not session.posargs and Path(SYSTEM_ETCD).is_file():
        session.log(f"etcd tests again, against {SYSTEM_ETCD}")
        etcd_tests = sorted(str(path) for path in Path("tests").glob("test_etcd_*.py"))
        session.run("pytest", *etcd_tests, env={"HEALKIT_ETCD_BINARY": SYSTEM_ETCD})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff: lint and formatting."""
    sync(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the core, the plugins and the example plugin."""
    sync(session, "typecheck", "test")
    session.run("mypy")


@nox.session(python=PYTHON)
def package(session: nox.Session) -> None:
    """Build every distribution; install each plugin alone beside the core wheel."""
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("uv", "build", "--all-packages", "--out-dir", str(dist), external=True)
    core = next(dist.glob("healkit-*.whl"))
    for plugin in PLUGINS:
        wheel = next(dist.glob(f"{plugin.replace('-', '_')}-*.whl"))
        session.run("uv", "pip", "install", "--reinstall", str(core), str(wheel))
        module = plugin.replace("-", "_")
        session.run("python", "-c", f"import healkit, {module}; print({module}.__name__, 'ok')")
        session.run("uv", "pip", "uninstall", plugin)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Run every code example of docs/ and check the reference against the models."""
    sync(session, "test")
    session.run("pytest", "tests/test_docs.py", *session.posargs)


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
