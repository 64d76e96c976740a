"""Architecture rules, checked on the source with ast.

* a service (services/<name>/) never imports another service;
* wiring imports logic, never the reverse: no module of a service imports that
  service's service.py (only its __main__.py may);
* only libs/common/config.py reads the environment;
* NATS subjects are never spelled out: no "sw." string literal outside libs/common/subjects.py.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
LIBS = ROOT / "libs"
CONFIG = LIBS / "common" / "config.py"
SUBJECTS = LIBS / "common" / "subjects.py"

SERVICE_NAMES = sorted(p.name for p in SERVICES.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def py_files(*roots: Path) -> list[Path]:
    return sorted(f for r in roots for f in r.rglob("*.py") if "__pycache__" not in f.parts)


@functools.cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, tree: ast.Module) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names; relative imports resolved), anywhere in the file."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            # `from services import router` names a module too
            out.extend((node.lineno, f"{mod}.{a.name}") for a in node.names)
    return out


# -- sanity of the helpers (a rule that cannot fail is no rule) --------------------------------


def test_services_found():
    assert {"ingress", "router", "worker", "health", "ledger"} <= set(SERVICE_NAMES)


def test_import_resolution():
    f = SERVICES / "worker" / "adapters" / "x.py"
    tree = ast.parse(
        "from ..chunks import a\nfrom ...router import policy\nimport services.ingress.render\ndef f():\n    from services.health import service\n"
    )
    mods = {m for _, m in imported_modules(f, tree)}
    assert {
        "services.worker.chunks",
        "services.router",
        "services.router.policy",
        "services.ingress.render",
        "services.health.service",
    } <= mods
    assert cross_service_imports(f, tree) == [
        (2, "services.router"),
        (2, "services.router.policy"),
        (3, "services.ingress.render"),
        (5, "services.health"),
        (5, "services.health.service"),
    ]


def test_env_detector_catches_every_spelling():
    src = "import os\nfrom os import environ\nimport os as o\na = os.environ['X']\nb = os.getenv('Y')\nc = o.environ.get('Z')\nd = environ\nos.putenv('a', 'b')\n"
    assert [line for line, _ in env_reads(ast.parse(src))] == [2, 4, 5, 6, 8]


def test_subject_detector():
    src = 'X = "sw.route." + op\nY = f"sw.exec.{p}"\n"""sw. in a docstring is prose"""\nZ = "answer.sw.x"\n'
    assert [line for line, _ in subject_literals(ast.parse(src))] == [1, 2]


def test_wiring_import_detector():
    f = SERVICES / "worker" / "adapters" / "x.py"
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..service import Binding\n"
        "from services.worker import service\nfrom ..binding import Binding\nfrom services.router.service import R\n"
    )
    assert wiring_imports(f, tree) == [(3, "services.worker.service"), (4, "services.worker.service")]
    assert wiring_imports(SERVICES / "worker" / "__main__.py", tree) == []


# -- the rules ------------------------------------------------------------------------------


def cross_service_imports(path: Path, tree: ast.Module) -> list[tuple[int, str]]:
    own = path.relative_to(SERVICES).parts[0]
    bad = []
    for line, mod in imported_modules(path, tree):
        parts = mod.split(".")
        if len(parts) >= 2 and parts[0] == "services" and parts[1] in SERVICE_NAMES and parts[1] != own:
            bad.append((line, mod))
    return bad


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_no_service_imports_another(service):
    problems = []
    for f in py_files(SERVICES / service):
        for line, mod in cross_service_imports(f, parse(f)):
            problems.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not problems, "services must talk over NATS, not imports:\n" + "\n".join(problems)


# A service's own wiring: its service.py, and the __main__.py that runs it.
_WIRING = ("service.py", "__main__.py")


def wiring_imports(path: Path, tree: ast.Module) -> list[tuple[int, str]]:
    """Imports of its own service's service.py by a logic module of that service."""
    own = path.relative_to(SERVICES).parts[0]
    if path.name in _WIRING and path.parent == SERVICES / own:
        return []
    wiring = f"services.{own}.service"
    return sorted({(line, mod) for line, mod in imported_modules(path, tree) if mod == wiring})


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_logic_never_imports_wiring(service):
    problems = []
    for f in py_files(SERVICES / service):
        for line, mod in wiring_imports(f, parse(f)):
            problems.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not problems, (
        "wiring imports logic, never the reverse; give a shared type its own module:\n" + "\n".join(problems)
    )


_ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def env_reads(tree: ast.Module) -> list[tuple[int, str]]:
    os_aliases = {"os"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_aliases |= {a.asname or a.name for a in node.names if a.name == "os"}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _ENV_NAMES:
            if isinstance(node.value, ast.Name) and node.value.id in os_aliases:
                out.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            for a in node.names:
                if a.name in _ENV_NAMES:
                    out.append((node.lineno, f"from os import {a.name}"))
    return sorted(out)


def test_only_config_reads_the_environment():
    problems = []
    for f in py_files(SERVICES, LIBS):
        if f == CONFIG:
            continue
        for line, what in env_reads(parse(f)):
            problems.append(f"{f.relative_to(ROOT)}:{line} {what}")
    assert not problems, "read the environment through libs/common/config.py:\n" + "\n".join(problems)


def test_config_does_read_the_environment():
    # the rule's exemption is not vacuous: the detector sees config.py's own reads
    assert env_reads(parse(CONFIG))


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            ids.add(id(node.value))
    return ids


def subject_literals(tree: ast.Module) -> list[tuple[int, str]]:
    skip = _docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if node.value.startswith("sw."):
                out.append((node.lineno, node.value))
    return sorted(out)


def test_no_subject_literals_outside_subjects():
    problems = []
    for f in py_files(SERVICES, LIBS):
        if f == SUBJECTS:
            continue
        for line, value in subject_literals(parse(f)):
            problems.append(f"{f.relative_to(ROOT)}:{line} {value!r}")
    assert not problems, "build subjects with libs/common/subjects.py:\n" + "\n".join(problems)


def test_subjects_module_has_the_literals():
    assert subject_literals(parse(SUBJECTS))
