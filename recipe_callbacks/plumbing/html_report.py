"""``recipe_report.html``: the checklist with each check's pictures, numbers and advice, in one file.

The page is self-contained (pictures inline as ``data:`` URIs, styles inline, no script or font
from elsewhere), so it opens from any logger's run: the TensorBoard or CSV log dir, the W&B run's
files, the MLflow run's artifacts. The pictures are the latest of each tag that rank 0 logged
(``log_writer.logged``).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping

from recipe_callbacks.plumbing.callback_base import snake_case
from recipe_callbacks.plumbing.console_report import Checklist, checklist
from recipe_callbacks.plumbing.finding import Finding
from recipe_callbacks.plumbing.log_writer import LoggedRecord, markdown_to_html

_COLOURS = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "skip": "#6e7781", "pending": "#6e7781"}
_WORD = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP", "pending": "pending"}
_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:0 0 8px}
.tally{color:#57606a;margin-bottom:16px}
table{border-collapse:collapse;background:#fff;width:100%}
td,th{border-bottom:1px solid #d0d7de;padding:6px 10px;text-align:left;vertical-align:top}
th{background:#eaeef2;font-weight:600}
.checklist td:nth-child(-n+3),.checklist th:nth-child(-n+3){white-space:nowrap;width:1%}
.badge{display:inline-block;min-width:48px;text-align:center;border-radius:4px;color:#fff;font-weight:700;
font-size:12px;padding:2px 6px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:16px;margin:16px 0}
.advice{background:#fff8c5;border-left:4px solid #d4a72c;padding:6px 10px;margin:6px 0}
.values td{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px;padding:2px 10px}
.values{width:auto}
figure{display:inline-block;margin:8px 12px 8px 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #d0d7de;image-rendering:auto}
figcaption{font-size:12px;color:#57606a}
details{margin-top:8px}pre{white-space:pre-wrap}
.notrun{color:#57606a}
"""


# Marks on <body> how many pictures the browser decoded: what a test in a real browser reads back.
_SCRIPT = (
    "<script>window.addEventListener('load',function(){var n=0;"
    "for(var i=0;i<document.images.length;i++){if(document.images[i].naturalWidth>0){n++;}}"
    "document.body.setAttribute('data-pictures-shown',String(n));});</script>"
)


def _badge(status: str) -> str:
    return f'<span class="badge" style="background:{_COLOURS[status]}">{_WORD[status]}</span>'


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _values_table(values: Mapping[str, float]) -> str:
    if not values:
        return ""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_number(v)}</td></tr>" for k, v in values.items())
    return f'<table class="values">{rows}</table>'


def _anchor(check: str) -> str:
    return "check-" + snake_case(check)


def _pictures(prefix: str, record: LoggedRecord) -> str:
    parts = []
    for tag, (step, image) in record.images.items():
        if not tag.startswith(prefix):
            continue
        uri = "data:image/png;base64," + base64.b64encode(record.png(tag)).decode("ascii")
        name = html.escape(tag[len(prefix):])
        parts.append(f'<figure><img src="{uri}" alt="{html.escape(tag)}" width="{image.shape[1]}">'
                     f"<figcaption>{name} (step {step})</figcaption></figure>")
    return "".join(parts)


def _texts(prefix: str, record: LoggedRecord) -> str:
    parts = []
    for tag, (step, text) in record.texts.items():
        if tag.startswith(prefix):
            parts.append(f"<details><summary>{html.escape(tag[len(prefix):])} (step {step})</summary>"
                         f"{markdown_to_html(text)}</details>")
    return "".join(parts)


def _section(check: str, findings: list[Finding], record: LoggedRecord) -> str:
    prefix = f"recipe.{snake_case(check)}/"
    body = []
    for f in findings:
        body.append(f"<p>{_badge(f.status)} {html.escape(f.summary)}</p>")
        if f.advice:
            body.append(f'<div class="advice"><b>Advice:</b> {html.escape(f.advice)}</div>')
        body.append(_values_table(f.values))
    body.append(_pictures(prefix, record))
    body.append(_texts(prefix, record))
    return f'<section id="{_anchor(check)}"><h2>{html.escape(check)}</h2>{"".join(body)}</section>'


def render_html(findings: list[Finding], present: set[str], record: LoggedRecord | None = None,
                versions: Mapping[str, str] | None = None) -> str:
    """The whole report as one self-contained HTML page.

    Example:
        >>> page = render_html([Finding("InitLossCheck", "fail", "loss 9.1", {"observed": 9.1}, "shrink")],
        ...                    {"InitLossCheck"})
        >>> page.startswith("<!DOCTYPE html>") and 'id="check-init_loss_check"' in page and "shrink" in page
        True
    """
    record = record if record is not None else LoggedRecord()
    rows: Checklist = checklist(findings, present)
    table = ['<table class="checklist"><tr><th>Status</th><th>Step</th><th>Check</th><th>Summary</th></tr>']
    for r in rows.rows:
        table.append(f"<tr><td>{_badge(r.status)}</td><td>{html.escape(r.step)}</td>"
                     f'<td><a href="#{_anchor(r.check)}">{html.escape(r.check)}</a></td>'
                     f"<td>{html.escape(r.summary)}</td></tr>")
    table.append("</table>")
    not_run = ""
    if rows.not_run:
        names = ", ".join(f"{html.escape(check)} ({step})" for step, check in rows.not_run)
        not_run = f'<p class="notrun">Recipe steps with no callback on the Trainer: {names}.</p>'
    by_check: dict[str, list[Finding]] = {}
    for f in findings:
        by_check.setdefault(f.check, []).append(f)
    sections = [_section(check, by_check.get(check, []), record)
                for check in dict.fromkeys(r.check for r in rows.rows)]
    footer = ""
    if versions:
        footer = '<p class="notrun">' + ", ".join(f"{html.escape(k)} {html.escape(v)}"
                                                  for k, v in versions.items()) + "</p>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Recipe report</title><style>{_CSS}</style></head><body><main>"
        f'<h1>Recipe report</h1><div class="tally">{html.escape(rows.tally())}</div>'
        + "".join(table) + not_run + "".join(sections) + footer + "</main>" + _SCRIPT + "</body></html>\n"
    )
