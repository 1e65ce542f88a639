"""Render the book: ``quarto render`` where Quarto is installed, else an nbconvert HTML preview.

Quarto does not execute ``.ipynb`` chapters by default, so both paths only render the stored
outputs. The preview follows the chapter list of ``_quarto.yml`` and gives every page a sidebar
and previous/next links, so it reads like the book even without Quarto.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

PREVIEW_DIR = "_preview"
_INCLUDE = re.compile(r"\{\{<\s*include\s+(\S+)\s*>\}\}")
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


@dataclass(frozen=True)
class Page:
    source: Path
    html_name: str
    title: str


def book_chapters(project_root: Path) -> list[str]:
    """The chapter files listed in ``_quarto.yml``, in order."""
    config = yaml.safe_load((project_root / "_quarto.yml").read_text())
    return [str(entry) for entry in _flatten_chapters(config["book"]["chapters"])]


def book_appendices(project_root: Path) -> list[str]:
    """The appendix files listed in ``_quarto.yml``, in order."""
    config = yaml.safe_load((project_root / "_quarto.yml").read_text())
    return [str(entry) for entry in _flatten_chapters(config["book"].get("appendices", []))]


def _flatten_chapters(entries: list) -> list[str]:
    flat: list[str] = []
    for entry in entries:
        if isinstance(entry, dict) and "chapters" in entry:
            flat.extend(_flatten_chapters(entry["chapters"]))
        elif isinstance(entry, dict) and "href" in entry:
            flat.append(entry["href"])
        else:
            flat.append(str(entry))
    return flat


def render_book(
    project_root: Path, *, notebooks_dir: Path | None = None, use_quarto: bool | None = None
) -> Path:
    """Render with Quarto when available (and allowed), otherwise build the HTML preview."""
    quarto = shutil.which("quarto")
    if use_quarto is None:
        use_quarto = quarto is not None and notebooks_dir is None
    if use_quarto:
        if quarto is None:
            raise RuntimeError("quarto is not on PATH; install Quarto 1.7+ or use the preview")
        subprocess.run([quarto, "render"], cwd=project_root, check=True)
        return project_root / "_book"
    return build_preview(project_root, notebooks_dir=notebooks_dir)


def build_preview(
    project_root: Path, *, notebooks_dir: Path | None = None, out_dir: Path | None = None
) -> Path:
    """Convert ``index.qmd`` and every chapter notebook to linked HTML pages with nbconvert."""
    from nbconvert import HTMLExporter

    out = out_dir or project_root / PREVIEW_DIR
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = yaml.safe_load((project_root / "_quarto.yml").read_text())
    book_title = config["book"].get("title", "Book")
    pages: list[Page] = []
    for entry in [*book_chapters(project_root), *book_appendices(project_root)]:
        source = project_root / entry
        if (
            notebooks_dir is not None
            and source.suffix == ".ipynb"
            and (notebooks_dir / source.name).exists()
        ):
            # A partial run shows its executed chapters and the recorded ones for the rest.
            source = notebooks_dir / source.name
        html_name = "index.html" if Path(entry).stem == "index" else f"{Path(entry).stem}.html"
        pages.append(Page(source, html_name, _page_title(source)))

    exporter = HTMLExporter(template_name="lab", embed_images=True)
    for position, page in enumerate(pages):
        notebook = _as_notebook(page.source)
        body, _ = exporter.from_notebook_node(
            notebook, resources={"metadata": {"name": page.title}}
        )
        body = _drop_remote_scripts(body)
        body = _add_navigation(body, pages, position, book_title)
        (out / page.html_name).write_text(body, encoding="utf-8")
    return out


def _page_title(source: Path) -> str:
    if source.suffix == ".qmd":
        match = _FRONT_MATTER.match(source.read_text())
        if match:
            title = (yaml.safe_load(match.group(1)) or {}).get("title")
            if title:
                return str(title)
        return "Preface"
    notebook = nbformat.read(str(source), as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return source.stem


def _as_notebook(source: Path) -> nbformat.NotebookNode:
    if source.suffix == ".ipynb":
        return nbformat.read(str(source), as_version=4)
    text = source.read_text()
    match = _FRONT_MATTER.match(text)
    title = None
    if match:
        title = (yaml.safe_load(match.group(1)) or {}).get("title")
        text = text[match.end() :]
    text = _INCLUDE.sub(lambda m: _read_include(source.parent / m.group(1)), text)
    if title:
        text = f"# {title}\n\n{text}"
    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_markdown_cell(text))
    return notebook


def _read_include(path: Path) -> str:
    if not path.exists():
        return f"*(include {path.name} not generated yet: run the pipeline)*"
    return path.read_text()


_REMOTE_SCRIPT = re.compile(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>\s*')


def _drop_remote_scripts(body: str) -> str:
    """The preview must work offline: drop CDN scripts (require.js, MathJax) the pages do not need.

    The chapters render plots, tables and text; none uses widgets or LaTeX, so nothing is lost.
    """
    return _REMOTE_SCRIPT.sub("", body)


_NAV_STYLE = """
<link rel="icon" href="data:,">
<style>
.cd-sidebar{position:fixed;top:0;left:0;width:230px;height:100%;overflow-y:auto;background:#f7f7f9;
border-right:1px solid #ddd;padding:16px 12px;font-family:system-ui,sans-serif;font-size:14px;z-index:10}
.cd-sidebar a{display:block;padding:4px 6px;color:#234;text-decoration:none;border-radius:4px}
.cd-sidebar a.cd-current{background:#dde6f3;font-weight:600}
.cd-sidebar .cd-book{font-weight:700;margin-bottom:10px;display:block}
body{margin-left:250px !important}
.cd-pager{display:flex;justify-content:space-between;margin:32px 16px;font-family:system-ui,sans-serif}
</style>
"""


def _add_navigation(body: str, pages: list[Page], position: int, book_title: str) -> str:
    current = ' class="cd-current"'
    links = "".join(
        f'<a href="{p.html_name}"{current if i == position else ""}>{html.escape(p.title)}</a>'
        for i, p in enumerate(pages)
    )
    sidebar = (
        f'<nav class="cd-sidebar" aria-label="Chapters">'
        f'<span class="cd-book">{html.escape(book_title)}</span>{links}</nav>'
    )
    previous = pages[position - 1] if position > 0 else None
    following = pages[position + 1] if position + 1 < len(pages) else None
    pager = '<nav class="cd-pager" aria-label="Pager">'
    pager += (
        f'<a href="{previous.html_name}">&larr; {html.escape(previous.title)}</a>'
        if previous
        else "<span></span>"
    )
    pager += (
        f'<a href="{following.html_name}">{html.escape(following.title)} &rarr;</a>'
        if following
        else "<span></span>"
    )
    pager += "</nav>"
    body = body.replace("</head>", _NAV_STYLE + "</head>", 1)
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + sidebar, body, count=1)
    return body.replace("</body>", pager + "</body>", 1)
