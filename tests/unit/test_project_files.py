"""What a new user reads first: the README's commands and example, the LICENSE, the package metadata."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[tuple[int, str]]:
    """(offset, body) of every fenced ``lang`` block of the README."""
    return [(m.start(), m.group(1)) for m in re.finditer(rf"^```{lang}\n(.*?)^```$", README, re.M | re.S)]


def test_the_python_example_says_how_to_get_the_openai_package():
    (start, body), *_ = [(o, b) for o, b in _blocks("python") if "from openai import" in b]
    before = README[:start].rsplit("```", 1)[-1]  # the prose between the previous block and this one
    assert "pip install openai" in before
    run = next(b for _, b in _blocks("sh") if "switchman up" in b)
    assert "openai" not in run, "the run command installs the gateway only"


def test_the_two_commands_keep_their_shape():
    """.ci/run extracts the test command: the first ```sh block after "Run the tests"."""
    script = (ROOT / ".ci" / "run").read_text()
    extract = next(line for line in script.splitlines() if line.startswith("cmd="))
    out = subprocess.run(
        ["bash", "-c", extract + '\nprintf %s "$cmd"'], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout == "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest -q"
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/switchman up" in README


def test_readme_documents_compose_and_the_open_gateway_setting():
    assert "## Deploy with compose" in README
    section = README.split("## Deploy with compose", 1)[1].split("\n## ", 1)[0]
    for needle in ("cp .env.example .env", "SWITCHMAN_KEY", "127.0.0.1", "docker compose up"):
        assert needle in section
    assert "allow_open_gateway" in README and "SWITCHMAN_ALLOW_OPEN_GATEWAY" in README


def test_license_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    for needle in (
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
        "Copyright 2026 the Switchman authors",
    ):
        assert needle in text
    assert len(text.splitlines()) > 190, "the full text, not a summary"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "License" in README and "LICENSE" in README
