"""The notification mails' templates (`shared/workflow/templates/mail/`): subject, text and HTML parts."""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


@cache
def _templates() -> Environment:
    return Environment(
        loader=PackageLoader("shared.workflow", "templates"),
        # The HTML part is escaped; the plain-text part and the subject are not HTML.
        autoescape=select_autoescape(enabled_extensions=("html",), disabled_extensions=("txt",), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_mail(kind: str, **context: Any) -> tuple[str, str, str]:
    """The subject (one line), the text part and the HTML part of one notification mail."""
    subject = " ".join(_render("mail/subject.txt", kind=kind, **context).split())
    return subject, _render("mail/body.txt", kind=kind, **context), _render("mail/body.html", kind=kind, **context)


def _render(name: str, **context: Any) -> str:
    return _templates().get_template(name).render(**context)
