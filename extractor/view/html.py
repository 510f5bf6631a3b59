"""The HTML view of extractions: each document with its extracted values highlighted by field.
Pure rendering: items in, one self-contained page out (inline CSS, no script, no external asset).

Every piece of document text, value, id, path and message is HTML-escaped, and the page
carries a Content-Security-Policy that allows no script at all, so a document holding
`<script>` or `<img onerror=...>` shows as text and never runs.

A value's highlights come from `meta.spans` when the result has them (`--spans`), else they are
computed here with `extractor.grounding.spans`. Fields get colours by their path without list positions
(`line_items[].description`), so one field of every item of a list shares a colour; text that
several fields point at shows the first and lists them all in its tooltip.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from extractor.grounding.fieldpath import field_key, field_path, leaves
from extractor.grounding.spans import Span, ground_record
from extractor.pipeline.visible import visible_text

#: the page's Content-Security-Policy: inline styles, nothing else (no script, no request)
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; base-uri 'none'"
PALETTE = ("#ffd166", "#8ecae6", "#b5e48c", "#f4a6c1", "#cdb4db", "#ffb703", "#90e0ef", "#f8ad9d", "#a3c4f3",
           "#d0f4de", "#fcd5ce", "#e9c46a")


@dataclass(frozen=True)
class ViewItem:
    """One document and its outcome: `data` (with `spans`, `confidence`) or an `error`."""

    id: str
    text: str | None = None
    data: Any = None
    spans: Mapping[str, Sequence[Span]] = field(default_factory=dict)
    confidence: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    schema: str | None = None


@dataclass(frozen=True)
class ViewForm:
    """The service's form: pick a schema, paste a document (and an API key when keys are on)."""

    schemas: Sequence[str]
    schema: str | None = None
    text: str = ""
    api_key_field: bool = False
    action: str = "/view"


def item_from_result(line: Mapping[str, Any], *, text: str | None = None, fallback_id: str = "") -> ViewItem:
    """A result line of `extract batch` (`{"id", "data", "meta"}` or `{"id", "error"}`), of
    `extract run` or of the service (`{"schema", "version", "data", "meta"}`) as a `ViewItem`.
    The text is `text`, else the line's own `text` member; spans are `meta.spans`, else computed."""
    meta = line.get("meta") if isinstance(line.get("meta"), Mapping) else {}
    assert isinstance(meta, Mapping)
    ident = line.get("id", meta.get("file", fallback_id))
    if text is None and isinstance(line.get("text"), str):
        text = line["text"]
    schema = line.get("schema", meta.get("schema"))
    raw_error = line.get("error")
    if raw_error is not None or "data" not in line:
        message = raw_error.get("message") if isinstance(raw_error, Mapping) else raw_error
        return ViewItem(id=str(ident), text=text, error=str(message or "no data"), schema=_str(schema))
    data = line["data"]
    raw_spans = meta.get("spans")
    spans: dict[str, list[Span]] = {}
    if isinstance(raw_spans, Mapping):
        spans = {str(path): [Span.from_dict(s) for s in found] for path, found in raw_spans.items()}
    elif text is not None:  # found in the text the model read, pointing into the document as given
        view = visible_text(text)
        spans = view.spans(ground_record(data, view.text))
    raw_confidence = meta.get("confidence")
    confidence = {str(k): float(v) for k, v in raw_confidence.items()} if isinstance(raw_confidence, Mapping) else {}
    return ViewItem(id=str(ident), text=text, data=data, spans=spans, confidence=confidence, schema=_str(schema))


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


class _Colours:
    def __init__(self) -> None:
        self.keys: dict[str, int] = {}

    def of(self, path: str) -> int:
        return self.keys.setdefault(field_key(path), len(self.keys)) % len(PALETTE)


def highlight(text: str, spans: Mapping[str, Sequence[Span]], colours: _Colours) -> str:
    """The document as HTML: every character escaped, the spans' characters in `<mark>`s."""
    marks = [(s.start, s.end, path, s.match) for path, found in spans.items() for s in found
             if 0 <= s.start < s.end <= len(text)]
    if not marks:
        return _e(text)
    order = {path: i for i, path in enumerate(spans)}
    cuts = sorted({0, len(text), *(m[0] for m in marks), *(m[1] for m in marks)})
    out = []
    for a, b in pairwise(cuts):
        piece = _e(text[a:b])
        covering = sorted((m for m in marks if m[0] <= a and b <= m[1]), key=lambda m: order[m[2]])
        if not covering:
            out.append(piece)
            continue
        _, _, path, match = covering[0]
        fields = list(dict.fromkeys(m[2] for m in covering))
        tip = ", ".join(f"{p} ({next(m[3] for m in covering if m[2] == p)})" for p in fields)
        extra = " multi" if len(fields) > 1 else ""
        out.append(f'<mark class="c{colours.of(path)}{extra}" data-field="{_e(path)}" data-match="{_e(match)}" '
                   f'title="{_e(tip)}">{piece}</mark>')
    return "".join(out)


def _where(spans: Sequence[Span] | None) -> str:
    if spans is None:
        return '<span class="muted">-</span>'
    if not spans:
        return '<span class="missing">not found</span>'
    kinds = list(dict.fromkeys(s.match for s in spans))
    count = f" &times;{len(spans)}" if len(spans) > 1 else ""
    return _e("/".join(kinds)) + count


def _fields_table(item: ViewItem, colours: _Colours) -> str:
    rows = []
    for parts, value in leaves(item.data):
        path = field_path(parts)
        if not path:
            continue
        found = item.spans.get(path)
        if found is None and isinstance(value, str | int | float) and not isinstance(value, bool) and item.text is None:
            where = '<span class="muted">no text</span>'
        else:
            where = _where(found)
        p = item.confidence.get(path)
        conf = f"{p:.3f}" if p is not None else ""
        rows.append(f'<tr><td><span class="swatch c{colours.of(path)}"></span>{_e(path)}</td>'
                    f'<td class="value">{_e(json.dumps(value, ensure_ascii=False))}</td><td>{where}</td>'
                    f'<td class="num">{conf}</td></tr>')
    if not rows:
        return '<p class="muted">no fields</p>'
    return ('<table class="fields"><thead><tr><th>field</th><th>value</th><th>in the document</th>'
            '<th>confidence</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")


def _item(item: ViewItem, colours: _Colours) -> str:
    head = f'<h2><span class="id">{_e(item.id)}</span>'
    if item.schema:
        head += f' <span class="muted">{_e(item.schema)}</span>'
    head += "</h2>"
    if item.text is None:
        doc = '<p class="muted">document text not available (pass the batch input with --docs)</p>'
    else:
        doc = f'<pre class="doc">{highlight(item.text, item.spans if item.error is None else {}, colours)}</pre>'
    if item.error is not None:
        side = f'<p class="error">{_e(item.error)}</p>'
    else:
        side = _fields_table(item, colours)
    return f'<section class="item" data-id="{_e(item.id)}">{head}<div class="cols"><div>{doc}</div><div>{side}</div></div></section>'


def _form(form: ViewForm) -> str:
    options = "".join(f'<option value="{_e(n)}"{" selected" if n == form.schema else ""}>{_e(n)}</option>'
                      for n in form.schemas)
    key = ('<label>API key <input type="password" name="api_key" autocomplete="off"></label>'
           if form.api_key_field else "")
    return (f'<form method="post" action="{_e(form.action)}" class="form">'
            f'<label>schema <select name="schema">{options}</select></label>{key}'
            f'<textarea name="text" rows="10" placeholder="paste a document">{_e(form.text)}</textarea>'
            '<button type="submit">extract</button></form>')


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{font-size:1.3rem}h2{font-size:1rem;margin:0 0 .5rem}
.item{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1rem;margin:1rem 0}
.cols{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:1rem}
pre.doc{white-space:pre-wrap;word-wrap:break-word;margin:0;font:13px/1.5 ui-monospace,monospace;
background:#fcfcfc;border:1px solid #eee;padding:.6rem;max-height:40rem;overflow:auto}
mark{border-radius:2px;padding:0 1px}mark.multi{outline:2px dashed #555}
table.fields{border-collapse:collapse;width:100%}table.fields td,table.fields th{border-bottom:1px solid #eee;
padding:.2rem .4rem;text-align:left;vertical-align:top}td.value{font-family:ui-monospace,monospace;word-break:break-word}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.swatch{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.3rem;vertical-align:middle}
.muted{color:#888}.missing{color:#b00020;font-weight:600}.error{color:#b00020;white-space:pre-wrap}
.notice{background:#fff3cd;border:1px solid #e0c56e;padding:.5rem;border-radius:4px}
.form{display:grid;gap:.5rem;max-width:60rem}.form textarea{width:100%;font:13px ui-monospace,monospace}
"""


def render_page(items: Iterable[ViewItem], *, title: str = "extractions", notice: str | None = None,
                form: ViewForm | None = None) -> str:
    """One HTML page: an optional form and notice, then a section per item."""
    colours = _Colours()
    sections = "".join(_item(item, colours) for item in items)
    swatches = "".join(f".c{i}{{background:{colour}}}" for i, colour in enumerate(PALETTE))
    legend = " ".join(f'<span><span class="swatch c{i % len(PALETTE)}"></span>{_e(key)}</span>'
                      for key, i in colours.keys.items())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_STYLE}{swatches}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    if form is not None:
        parts.append(_form(form))
    if notice:
        parts.append(f'<p class="notice">{_e(notice)}</p>')
    if legend:
        parts.append(f'<p class="legend">{legend}</p>')
    parts.append(sections)
    parts.append("</body></html>\n")
    return "\n".join(parts)
