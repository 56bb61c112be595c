"""A standalone HTML page from a report's Markdown (headings, tables, code, images inlined as base64).

Only the Markdown that `longrange.report.markdown` writes is supported; no third-party converter.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
    "pre{background:#f4f4f4;padding:.6em;overflow-x:auto;white-space:pre-wrap}img{max-width:100%}"
)


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"_([^_]+)_$", r"<em>\1</em>", text)


def markdown_to_html(md: str, base: Path) -> str:
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1 : j])) + "</pre>")
            i = j + 1
            continue
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            head, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-:")]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body]
            out.append("</table>")
            continue
        m = re.match(r"(#+) (.*)", line)
        image = re.match(r"!\[(.*)\]\((.*)\)", line)
        if m:
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
        elif image:
            data = base64.b64encode((base / image.group(2)).read_bytes()).decode()
            out.append(f'<img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}">')
        elif line.startswith("- "):
            out.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def write_html(out: Path, name: str = "report") -> Path:
    """``out/<name>.md`` -> standalone ``out/<name>.html`` (no external files)."""
    body = markdown_to_html((out / f"{name}.md").read_text(), out)
    path = out / f"{name}.html"
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{name}</title>"
        f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )
    return path
