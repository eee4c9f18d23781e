"""YAML support is the extra ``yaml``: without PyYAML, YAML is a ConfigError that says how.

Each test runs a fresh interpreter in which ``import yaml`` fails, as it does
where PyYAML is not installed (``sys.modules["yaml"] = None`` is how Python
marks a module as absent); JSON and TOML still work there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from healkit.testing import EtcdServer

WITHOUT_YAML = 'import sys\nsys.modules["yaml"] = None\n'
MESSAGE = "pip install 'healkit[yaml]'"


def script(code: str) -> list[str]:
    """The command running ``code`` in this interpreter, PyYAML made absent first."""
    return [sys.executable, "-c", WITHOUT_YAML + textwrap.dedent(code)]


def run_without_yaml(code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - this interpreter, a script of ours
        [*script(code), *argv], capture_output=True, text=True, check=True, timeout=60
    )


def test_import_healkit_does_not_load_yaml() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, healkit; print('yaml' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "False"


def test_yaml_documents_need_the_extra_json_and_toml_do_not(tmp_path: Path) -> None:
    document = {"services": {"users": {"endpoints": ["http://users.test"]}}}
    (tmp_path / "a.json").write_text(json.dumps(document), encoding="utf-8")
    (tmp_path / "a.toml").write_text(
        '[services.users]\nendpoints = ["http://users.test"]\n', encoding="utf-8"
    )
    (tmp_path / "a.yaml").write_text("services: {}\n", encoding="utf-8")
    (tmp_path / "a.yml").write_text("services: {}\n", encoding="utf-8")
    done = run_without_yaml(
        """
        import json
        import healkit
        from healkit._config.formats import load_file, parse_document

        folder = sys.argv[1]
        results = {}
        for name in ("a.json", "a.toml", "a.yaml", "a.yml"):
            try:
                results[name] = load_file(f"{folder}/{name}")
            except healkit.ConfigError as error:
                results[name] = [error.origin, error.path, error.reason]
        try:
            parse_document("services: {}", fmt="yaml", origin="/healkit/prod/config")
        except healkit.ConfigError as error:
            results["etcd"] = [error.origin, error.path, error.reason]
        print(json.dumps(results))
        """,
        str(tmp_path),
    )
    results = json.loads(done.stdout)
    assert results["a.json"] == document
    assert results["a.toml"] == document
    for name in ("a.yaml", "a.yml"):
        origin, path, reason = results[name]
        assert (origin, path) == (f"{tmp_path}/{name}", "$")
        assert MESSAGE in reason
    assert results["etcd"][0] == "/healkit/prod/config"
    assert MESSAGE in results["etcd"][2]


@pytest.mark.anyio
async def test_cli_format_yaml_needs_the_extra(tmp_path: Path, etcd_server: EtcdServer) -> None:
    source = tmp_path / "config.json"
    source.write_text(
        json.dumps({"services": {"users": {"endpoints": ["http://users.test"]}}}),
        encoding="utf-8",
    )
    connect = ["--endpoints", etcd_server.url, "--namespace", "noyaml"]
    code = """
        from healkit._cli.entry import main
        sys.exit(main(sys.argv[1:]))
        """
    pushed = await anyio.run_process(
        [*script(code), "config", "push", str(source), *connect], check=False
    )
    assert pushed.returncode == 0, pushed.stderr.decode()
    as_json = await anyio.run_process(
        [*script(code), "config", "get", "--format", "json", *connect], check=False
    )
    assert as_json.returncode == 0, as_json.stderr.decode()
    assert json.loads(as_json.stdout)["services"]["users"]["endpoints"] == ["http://users.test"]
    as_yaml = await anyio.run_process(
        [*script(code), "config", "get", "--format", "yaml", *connect], check=False
    )
    assert as_yaml.returncode == 1
    assert as_yaml.stdout == b""
    expected = (
        "healkit: --format yaml: $: YAML support is not installed: install it with"
        f" {MESSAGE} (or use a .json or .toml document)"
    )
    assert as_yaml.stderr.decode().splitlines() == [expected]
