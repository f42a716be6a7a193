"""The one list of rights: the docs are made from it, and the code runs no cmdlet it does not hold."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from shared.microsoft import rights

ROOT = Path(__file__).resolve().parents[2]
CMDLET = re.compile(r"^(Get|Set|New|Remove|Add|Enable|Disable|Test|Invoke)-[A-Z][A-Za-z]+$")
NOT_CMDLETS = {"Set-Cookie"}  # an HTTP header, in the web layer


def test_the_permissions_doc_is_made_from_the_list() -> None:
    assert (ROOT / "docs" / "permissions.md").read_text() == rights.render_markdown(), (
        "docs/permissions.md is out of date: python -m shared.microsoft.rights > docs/permissions.md"
    )


def test_the_code_runs_only_cmdlets_on_the_list() -> None:
    used: dict[str, str] = {}
    for path in [*ROOT.glob("shared/**/*.py"), *ROOT.glob("functions/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and CMDLET.match(node.value):
                used.setdefault(node.value, str(path.relative_to(ROOT)))
    unlisted = {name: where for name, where in used.items() if name not in rights.cmdlets() | NOT_CMDLETS}
    assert unlisted == {}, f"cmdlets the rights list does not hold: {unlisted}"
    assert rights.cmdlets() <= set(used), "a listed cmdlet the code no longer runs"


def test_every_right_says_why_and_what_breaks() -> None:
    for right in rights.EXCHANGE_RIGHTS:
        assert right.why and right.without, right.cmdlet
    for permission in rights.GRAPH_PERMISSIONS:
        assert permission.why and permission.without, permission.name
