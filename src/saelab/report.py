"""A small self-contained HTML report: sections of text, tables, images (embedded) and links.

    report = HtmlReport("saelab demo")
    section = report.section("Training")
    section.paragraph("A JumpReLU SAE on blocks.1.attn.hook_z.")
    section.table([{"metric": "l0", "value": 12.3}])
    section.image(Path("frontier.png"), alt="FVU against L0")
    section.link("dashboard/index.html", "Feature dashboards")
    report.write(out_dir / "index.html")

Everything is escaped; images are inlined as data URIs, so the page opens offline and can be moved.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saelab.fileio import atomic_write_bytes

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;
padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;border-bottom:1px solid #d8dde6;padding-bottom:.2rem;
margin-top:2rem}p.sub{color:#5b6475;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}th,td{border:1px solid #d8dde6;padding:.25rem .55rem;
text-align:left;vertical-align:top}th{background:#f1f4f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #e3e7ee;margin:.5rem 0}a{color:#1f5fbf}code{background:#f1f4f8;padding:0 .2rem}
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    if isinstance(value, (list, tuple)):
        value = ", ".join(map(str, value))
    return f"<td>{html.escape(str(value))}</td>"


@dataclass
class Section:
    title: str
    parts: list[str] = field(default_factory=list)

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def table(self, rows: Iterable[Mapping[str, Any]], columns: list[str] | None = None) -> None:
        rows = list(rows)
        if not rows:
            self.paragraph("(no rows)")
            return
        columns = columns or list(dict.fromkeys(k for row in rows for k in row))
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(_cell(row.get(c, "")) for c in columns) + "</tr>" for row in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, path: Path, alt: str) -> None:
        data = base64.b64encode(Path(path).read_bytes()).decode()
        self.parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')

    def link(self, href: str, text: str) -> None:
        self.parts.append(f'<p><a href="{html.escape(href)}">{html.escape(text)}</a></p>')

    def render(self) -> str:
        return f"<section><h2>{html.escape(self.title)}</h2>{''.join(self.parts)}</section>"


@dataclass
class HtmlReport:
    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str) -> Section:
        section = Section(title)
        self.sections.append(section)
        return section

    def render(self) -> str:
        sub = f'<p class="sub">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        body = "".join(s.render() for s in self.sections)
        return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}'
                f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>{sub}{body}"
                "</body></html>\n")

    def write(self, path: Path) -> Path:
        atomic_write_bytes(path, self.render().encode())
        return Path(path)
