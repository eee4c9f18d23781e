"""Development sessions: ``python -m nox -s tests`` (see README).

Every session installs the locked workspace (the root and the local plugin
distributions) into its own virtual environment with ``uv sync --locked``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from email import message_from_bytes
from email.message import Message
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
    """mypy --strict over the core, the plugins, the example plugin and the docs' programs.

    Also the typing test: what a user's type checker sees (lines marked
    ``type: ignore[...]`` must be rejected).
    """
    sync(session, "typecheck", "test")
    session.run("mypy")
    session.run("mypy", "tests/typing")
    programs = Path(session.create_tmp()) / "programs"
    shutil.rmtree(programs, ignore_errors=True)
    programs.mkdir()
    session.run("mypy", "--strict", *write_programs(programs))


REQUIRED_CLASSIFIERS = {
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
    "Typing :: Typed",
}
"""Classifiers every distribution carries. (No Project-URL yet: healkit has no public URL.)"""

SDIST_ALWAYS = {"pyproject.toml", "PKG-INFO", "README.md", "LICENSE", ".gitignore"}
CORE_SDIST_TOP = SDIST_ALWAYS | {"src", "tests", "docs", "benchmarks", "CHANGELOG.md"}
"""What the core sdist may hold at its top: not uv.lock, plugins/, .ci/ or the nox sessions."""
PLUGIN_SDIST_TOP = SDIST_ALWAYS | {"src", "tests"}
"""What a plugin's sdist may hold at its top."""

LINK_TARGET = re.compile(
    r"\]\(\s*<?([^)\s>]+)"  # [text](target)
    r"|^\s*\[[^\]]+\]:\s*<?(\S+?)>?\s*$"  # [label]: target
    r"|\b(?:href|src)\s*=\s*[\"']([^\"']+)",  # HTML
    re.MULTILINE,
)
ABSOLUTE = re.compile(r"(?:https?|mailto):", re.IGNORECASE)
NAMED_PATH = re.compile(r"\(`([\w./-]+)`\)")
"""A repository path that the core's PyPI readme names in place of a link (see pyproject.toml)."""


def metadata_of(archive: Path) -> Message:
    """The core metadata of a built wheel (METADATA) or sdist (PKG-INFO)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            return message_from_bytes(wheel.read(name))
    with tarfile.open(archive) as sdist:
        member = sdist.extractfile(f"{sdist.getnames()[0].split('/')[0]}/PKG-INFO")
        if member is None:
            raise ValueError(f"{archive.name}: no PKG-INFO")
        return message_from_bytes(member.read())


def members(archive: Path) -> list[str]:
    """File names of a wheel, or of an sdist without its top directory."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            return wheel.namelist()
    with tarfile.open(archive) as sdist:
        return [name.partition("/")[2] for name in sdist.getnames() if "/" in name]


def relative_links(markdown: str) -> list[str]:
    """Link targets of a long description that PyPI cannot follow (no scheme)."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    targets = (next(group for group in m.groups() if group) for m in LINK_TARGET.finditer(prose))
    return [target for target in targets if not ABSOLUTE.match(target)]


def check_distribution(archive: Path) -> list[str]:
    """What is wrong with one built distribution, as PyPI and installers see it."""
    metadata = metadata_of(archive)
    problems = [f"relative link {link}" for link in relative_links(str(metadata.get_payload()))]
    if metadata["License-Expression"] != "Apache-2.0":
        problems.append(f"License-Expression {metadata['License-Expression']}")
    missing = REQUIRED_CLASSIFIERS - set(metadata.get_all("Classifier") or [])
    problems += [f"no classifier {classifier}" for classifier in sorted(missing)]
    names = members(archive)
    if not any(n == "LICENSE" or n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append("no LICENSE")
    if archive.name.endswith(".tar.gz"):
        problems += sdist_problems(metadata, names)
    return [f"{archive.name}: {problem}" for problem in problems]


def sdist_problems(metadata: Message, names: list[str]) -> list[str]:
    """What an sdist holds that it should not, or lacks."""
    name = metadata["Name"]
    allowed = CORE_SDIST_TOP if name == "healkit" else PLUGIN_SDIST_TOP
    problems = [f"holds {top}" for top in sorted({n.split("/")[0] for n in names} - allowed)]
    module = name.replace("-", "_")
    if not any(n.startswith(f"src/{module}/") for n in names):
        problems.append(f"no src/{module}")
    if name == "healkit":
        problems += [
            f"holds {n}"
            for n in names
            if n.startswith("benchmarks/") and n != "benchmarks/README.md"
        ]
        for path in NAMED_PATH.findall(str(metadata.get_payload())):
            if not any(n == path or n.startswith(f"{path}/") for n in names):
                problems.append(f"readme names {path}, which it does not hold")
    return problems


def readme_example() -> str:
    """The first ```python block of README.md's "Use it" section."""
    section = Path("README.md").read_text(encoding="utf-8").split("\n## Use it\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    found = re.search(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    if found is None:
        raise ValueError('README.md: no ```python block under "## Use it"')
    return found.group(1)


@nox.session(python=PYTHON)
def package(session: nox.Session) -> None:
    """Build every distribution and check it as PyPI and a new user meet it.

    twine check --strict and check-wheel-contents; every distribution has its
    LICENSE, the classifiers and a long description without relative links;
    the sdists hold what they should. Then, in a fresh virtual environment
    outside the repository, ``healkit[breaker,tls]`` from the built wheels (so
    nothing of healkit's comes from an index) runs the README's example against
    a local server; the example plugin, copied out of the repository, installs
    against it; the remaining plugins install too.
    """
    sync(session, "package")
    dist = Path(session.create_tmp()).resolve() / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("uv", "build", "--all-packages", "--out-dir", str(dist), external=True)
    archives = sorted(dist.glob("*.whl")) + sorted(dist.glob("*.tar.gz"))
    session.run("twine", "check", "--strict", *map(str, archives))
    session.run("check-wheel-contents", *(str(a) for a in archives if a.suffix == ".whl"))
    problems = [problem for archive in archives for problem in check_distribution(archive)]
    if problems:
        session.error("\n".join(problems))
    session.log(f"{len(archives)} distributions: LICENSE, classifiers, links and contents ok")

    def wheel(distribution: str) -> str:
        return str(next(dist.glob(f"{distribution.replace('-', '_')}-*.whl")))

    smoke = str(Path("tests/install_smoke.py").resolve())
    with tempfile.TemporaryDirectory(prefix="healkit-package-") as tmp:
        python = str(Path(tmp) / "venv" / "bin" / "python")
        session.run("uv", "venv", "--quiet", "--python", PYTHON, f"{tmp}/venv", external=True)

        def install(*requirements: str) -> None:
            session.run("uv", "pip", "install", "--python", python, *requirements, external=True)

        core = Path(wheel("healkit")).as_uri()
        install(
            f"healkit[breaker,tls] @ {core}",
            *map(wheel, ("healkit-timeout", "healkit-breaker", "healkit-tls")),
        )
        session.run(python, smoke, "breaker", "timeout", "tls", external=True)

        # The README's example, exactly as printed (it starts its own upstream).
        script = Path(tmp) / "readme_example.py"
        script.write_text(readme_example(), encoding="utf-8")
        session.run(python, str(script), external=True)

        # Copied out of the repository, the example plugin installs as it is,
        # against the core already installed (--find-links: none from an index).
        copy = Path(tmp) / "healkit-example-plugin"
        shutil.copytree("docs/examples/healkit-example-plugin", copy)
        install("--find-links", str(dist), str(copy))
        session.run(python, smoke, "breaker", "request-id", "timeout", "tls", external=True)

        install(
            wheel("healkit-retry"),
            wheel("healkit-tracing"),
            wheel("healkit-limit"),
            wheel("healkit-hedge"),
        )
        session.run(
            python,
            smoke,
            "breaker",
            "hedge",
            "limit",
            "request-id",
            "retry",
            "timeout",
            "tls",
            "tracing",
            external=True,
        )


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
    session.run("healkit", "demo", *session.posargs, external=False)
