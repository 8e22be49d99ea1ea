"""The import rules of docs/architecture.md, checked on the source: a rule nobody checks is a
rule the next change breaks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = ("operations", "webhooks", "billing", "ingest")


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_composition_root_names_the_apps_only_as_strings() -> None:
    imported = _imports(ROOT / "neruba" / "urls.py", top_level_only=False)
    offending = sorted(n for n in imported if n.split(".")[0] in APPS)
    assert offending == []


@pytest.mark.parametrize("module", ["billing/selectors.py", "billing/drafts.py"])
def test_billing_reads_and_drafts_import_no_service_module(module: str) -> None:
    imported = _imports(ROOT / module, top_level_only=False)
    offending = sorted(n for n in imported if n.startswith("billing.services"))
    assert offending == []


@pytest.mark.parametrize(
    "module",
    [
        "billing.selectors",
        "billing.drafts",
        "billing.services",
        "billing.services.catalog",
        "billing.services.invoicing",
        "billing.services.scan",
        "billing.services.reruns",
        "billing.services.credits",
        "billing.services.outbox",
        "billing.shards",
    ],
)
def test_each_billing_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    # An import circle shows only when its module is the first one imported, so each gets a
    # process of its own.
    code = (
        "import os, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'neruba.settings'); "
        f"django.setup(); import importlib; importlib.import_module({module!r})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_billing_service_module_is_over_six_hundred_lines() -> None:
    sizes = {
        path.name: len(path.read_text().splitlines())
        for path in (ROOT / "billing" / "services").glob("*.py")
    }
    assert sizes and max(sizes.values()) < 600, sizes
