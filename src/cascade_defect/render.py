"""Render the book: ``quarto render`` where Quarto is installed, else an nbconvert HTML preview.

Quarto does not execute ``.ipynb`` chapters by default, so both paths only render the stored
outputs. The preview follows the chapter list of ``_quarto.yml`` and gives every page a sidebar
and previous/next links, so it reads like the book even without Quarto. It also stands in for
the Quarto features the chapters use: figure options (``#| label``, ``fig-cap``, ``fig-alt``)
become numbered captions and image alt text, ``@fig-`` cross-references become links, callouts
become boxes (collapsible ones ``<details>``), and ``{mermaid}`` diagrams show their source text.
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
from jinja2 import DictLoader

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

    exporter = HTMLExporter(
        template_name="lab",
        embed_images=True,
        extra_loaders=[DictLoader({_PREVIEW_TEMPLATE_NAME: _PREVIEW_TEMPLATE})],
        template_file=_PREVIEW_TEMPLATE_NAME,
    )
    notebooks = [_as_notebook(page.source) for page in pages]
    figures = figure_registry(pages, notebooks)
    for position, (page, notebook) in enumerate(zip(pages, notebooks, strict=True)):
        notebook = _with_quarto_features(notebook, page, figures)
        # The page's folder lets nbconvert embed images that markdown names by relative path.
        resources = {"metadata": {"name": page.title, "path": str(page.source.parent)}}
        body, _ = exporter.from_notebook_node(notebook, resources=resources)
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
.cd-callout{border-left:4px solid #4c72b0;background:#f4f7fb;padding:4px 12px;margin:8px 0}
.cd-callout summary{cursor:pointer;font-weight:600}
.cd-figcaption{font-style:italic;color:#333}
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


# ---------------------------------------------------------------------------------------------
# Quarto features in the preview
# ---------------------------------------------------------------------------------------------

_PREVIEW_TEMPLATE_NAME = "cascade_preview.html.j2"
# The lab template writes no alt text on output images (nbconvert then adds a placeholder and
# warns): take it from the cell's ``fig-alt`` option, which _with_quarto_features stores.
_PREVIEW_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block data_png scoped -%}
{%- set alt = cell.metadata.get('cascade_preview', {}).get('fig_alt') -%}
{%- if alt -%}
{{ super() | replace('<img ', '<img alt="' ~ (alt | escape_html) ~ '" ', 1) }}
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock data_png -%}
"""

_CELL_OPTION = re.compile(r"^(#\||%%\|)\s?(.*)$")
_MERMAID = re.compile(r"^```\{mermaid\}[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_ATTRIBUTED_IMAGE = re.compile(
    r"!\[(?P<caption>[^\]]*)\]\((?P<src>[^)\s]+)\)\{(?P<attributes>[^}]*)\}"
)
_CROSS_REFERENCE = re.compile(r"(?<![\w.@])@(?P<label>fig-[\w-]*\w)")
_CALLOUT_OPEN = re.compile(r"^:::+\s*\{\.callout-(?P<kind>\w+)(?P<attributes>[^}]*)\}\s*$")
_CALLOUT_CLOSE = re.compile(r"^:::+\s*$")
_DIV_OPEN = re.compile(r"^:::+\s*\{")


@dataclass(frozen=True)
class BookFigure:
    """A cross-referenceable figure of the book: where it is and what it is called."""

    label: str
    page: str
    number: int
    caption: str


def cell_options(source: str) -> dict[str, object]:
    """Quarto's cell options: the ``#|`` (or ``%%|`` in diagrams) lines that open a cell, as YAML."""
    lines = []
    for line in source.splitlines():
        match = _CELL_OPTION.match(line)
        if not match:
            break
        lines.append(match.group(2))
    return (yaml.safe_load("\n".join(lines)) or {}) if lines else {}


def _strip_options(source: str) -> str:
    lines = source.splitlines()
    while lines and _CELL_OPTION.match(lines[0]):
        lines.pop(0)
    return "\n".join(lines)


def _attribute_values(attributes: str) -> dict[str, str]:
    values = dict(re.findall(r'([\w-]+)="([^"]*)"', attributes))
    identifier = re.search(r"#([\w-]+)", attributes)
    if identifier:
        values["id"] = identifier.group(1)
    return values


def _page_figures(notebook: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """``(label, caption)`` of every labelled figure in reading order: figure cells, diagrams
    and images with a ``#fig-`` identifier."""
    found: list[tuple[str, str]] = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            options = cell_options(cell.source)
            label = str(options.get("label", ""))
            if label.startswith("fig-"):
                found.append((label, str(options.get("fig-cap", ""))))
        elif cell.cell_type == "markdown":
            events: list[tuple[int, str, str]] = []
            for match in _MERMAID.finditer(cell.source):
                options = cell_options(match.group("body"))
                label = str(options.get("label", ""))
                if label.startswith("fig-"):
                    events.append((match.start(), label, str(options.get("fig-cap", ""))))
            for match in _ATTRIBUTED_IMAGE.finditer(cell.source):
                label = _attribute_values(match.group("attributes")).get("id", "")
                if label.startswith("fig-"):
                    events.append((match.start(), label, match.group("caption")))
            found += [(label, caption) for _, label, caption in sorted(events)]
    return found


def figure_registry(
    pages: list[Page], notebooks: list[nbformat.NotebookNode]
) -> dict[str, BookFigure]:
    """Every labelled figure of the book, numbered within its page as the preview shows it."""
    registry: dict[str, BookFigure] = {}
    for page, notebook in zip(pages, notebooks, strict=True):
        for number, (label, caption) in enumerate(_page_figures(notebook), start=1):
            registry[label] = BookFigure(label, page.html_name, number, caption)
    return registry


def _caption_markdown(figure: BookFigure, note: str = "") -> str:
    return (
        f'<p class="cd-figcaption" id="{figure.label}"><b>Figure {figure.number}.</b> '
        f"{html.escape(figure.caption)}{note}</p>"
    )


def _with_quarto_features(
    notebook: nbformat.NotebookNode, page: Page, figures: dict[str, BookFigure]
) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with Quarto's figure options, cross-references, callouts and
    diagrams turned into what nbconvert can show."""
    shown = nbformat.reads(nbformat.writes(notebook), as_version=4)
    cells = []
    for cell in shown.cells:
        cells.append(cell)
        if cell.cell_type == "markdown":
            cell.source = _quarto_markdown(cell.source, page, figures)
        if cell.cell_type != "code":
            continue
        options = cell_options(cell.source)
        if options:  # Quarto does not echo its cell options
            cell.source = _strip_options(cell.source)
        if options.get("fig-alt"):
            cell.metadata["cascade_preview"] = {"fig_alt": str(options["fig-alt"])}
        figure = figures.get(str(options.get("label", "")))
        if figure is not None:
            cells.append(nbformat.v4.new_markdown_cell(_caption_markdown(figure)))
    shown.cells = cells
    return shown


def _quarto_markdown(text: str, page: Page, figures: dict[str, BookFigure]) -> str:
    def diagram(match: re.Match[str]) -> str:
        body = match.group("body")
        figure = figures.get(str(cell_options(body).get("label", "")))
        source = f"```text\n{_strip_options(body).rstrip()}\n```"
        if figure is None:
            return source
        note = " <i>(diagram source; the Quarto book draws it)</i>"
        return f"{source}\n\n{_caption_markdown(figure, note)}"

    def image(match: re.Match[str]) -> str:
        values = _attribute_values(match.group("attributes"))
        alt = values.get("fig-alt") or match.group("caption")
        shown = f"![{alt}]({match.group('src')})"
        figure = figures.get(values.get("id", ""))
        return f"{shown}\n\n{_caption_markdown(figure)}" if figure else shown

    def reference(match: re.Match[str]) -> str:
        figure = figures.get(match.group("label"))
        if figure is None:
            return match.group(0)
        target = "" if figure.page == page.html_name else figure.page
        return f"[Figure {figure.number}]({target}#{figure.label})"

    text = _MERMAID.sub(diagram, text)
    text = _ATTRIBUTED_IMAGE.sub(image, text)
    text = _CROSS_REFERENCE.sub(reference, text)
    return _callouts(text)


def _callouts(text: str) -> str:
    """``::: {.callout-KIND title="..." collapse="true"}`` blocks as boxes; collapsible ones as
    ``<details>``. A heading on the callout's first line is its title, as in Quarto.

    Each callout becomes one HTML block (its body rendered here): nbconvert re-parses every raw
    HTML block on its own, so an opening tag and its closing tag in separate blocks would not
    stay around the body.
    """
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    out: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _CALLOUT_OPEN.match(lines[index])
        if not opening:
            out.append(lines[index])
            index += 1
            continue
        depth, body = 1, []
        index += 1
        while index < len(lines):
            if _DIV_OPEN.match(lines[index]):
                depth += 1
            elif _CALLOUT_CLOSE.match(lines[index]):
                depth -= 1
                if depth == 0:
                    break
            body.append(lines[index])
            index += 1
        index += 1  # past the closing fence
        values = _attribute_values(opening.group("attributes"))
        title = values.get("title", "")
        if not title and body and body[0].startswith("#"):
            title = body.pop(0).lstrip("#").strip()
        title = html.escape(title or opening.group("kind").capitalize())
        inner = markdown2html_mistune(_callouts("\n".join(body)))
        inner = re.sub(r"\n\s*\n", "\n", inner).strip()
        kind = f"cd-callout cd-callout-{opening.group('kind')}"
        if values.get("collapse") == "true":
            block = f'<details class="{kind}"><summary>{title}</summary>\n{inner}\n</details>'
        else:
            block = f'<div class="{kind}"><p><b>{title}</b></p>\n{inner}\n</div>'
        out += ["", block, ""]
    return "\n".join(out)
