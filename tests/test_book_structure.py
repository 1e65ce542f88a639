"""The book's structure: chapters exist in the runner's order, one parameters cell each, no errors."""

from __future__ import annotations

import ast
import importlib
import logging
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml
from bs4 import BeautifulSoup
from matplotlib.figure import Figure

from cascade_defect.render import (
    Page,
    book_appendices,
    book_chapters,
    build_preview,
    cell_options,
    figure_registry,
)
from cascade_defect.runner import CHAPTERS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_quarto_project_is_a_book_with_index_first() -> None:
    config = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    assert config["project"]["type"] == "book"
    chapters = book_chapters(ROOT)
    assert chapters[0] == "index.qmd"
    assert (ROOT / "index.qmd").exists()


def test_chapters_exist_and_match_the_runner_order() -> None:
    chapters = book_chapters(ROOT)[1:]
    assert chapters == [f"notebooks/{c.notebook}" for c in CHAPTERS]
    for chapter in chapters:
        assert (ROOT / chapter).is_file(), chapter
    assert [p.name for p in NOTEBOOKS] == [c.notebook for c in CHAPTERS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_exactly_one_parameters_cell_and_a_title(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_holds_no_error_output(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", f"{path.name}: {output.get('ename')}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_stay_thin(path: Path) -> None:
    """Logic lives in the package: no path hacks, no %run, no function definitions, and no data
    built or reshaped in a cell (a cell calls the package function that does it)."""
    notebook = nbformat.read(path, as_version=4)
    problems = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        assert "sys.path" not in cell.source
        assert "%run" not in cell.source
        assert "\ndef " not in f"\n{cell.source}"
        if _is_parameters(cell):
            continue
        problems += [f"cell {index}: {found}" for found in reshaping_in(cell.source)]
    assert not problems, f"{path.name} builds or reshapes data in cells:\n  " + "\n  ".join(
        problems
    )


# ---------------------------------------------------------------------------------------------
# Thin cells: what counts as building or reshaping data in a notebook cell.
# ---------------------------------------------------------------------------------------------

# DataFrame and Series methods that compute or reshape a table.
RESHAPING_METHODS = frozenset(
    {
        "agg", "aggregate", "apply", "applymap", "assign", "astype", "concat", "count", "crosstab",
        "cumsum", "drop", "dropna", "explode", "fillna", "filter", "groupby", "iterrows",
        "itertuples", "join", "map", "max", "mean", "median", "melt", "merge", "min", "nlargest",
        "nsmallest", "nunique", "pivot", "pivot_table", "query", "reindex", "rename",
        "reset_index", "round", "set_index", "sort_index", "sort_values", "stack", "sum",
        "transform", "unique", "unstack", "value_counts",
    }
)  # fmt: skip
INDEXERS = frozenset({"loc", "iloc", "at", "iat", "T"})
DATA_LIBRARIES = frozenset({"pd", "np", "pandas", "numpy"})
BUILDERS = {
    ast.Dict: "a dict literal",
    ast.List: "a list literal",
    ast.Set: "a set literal",
    ast.DictComp: "a dict comprehension",
    ast.ListComp: "a list comprehension",
    ast.SetComp: "a set comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.For: "a for loop",
    ast.While: "a while loop",
    ast.With: "a with block",
    ast.FunctionDef: "a function definition",
    ast.Lambda: "a lambda",
    ast.ClassDef: "a class definition",
    ast.BinOp: "arithmetic",
    ast.Compare: "a comparison",
}


def _is_parameters(cell: nbformat.NotebookNode) -> bool:
    tags = cell.get("metadata", {}).get("tags", [])
    return "parameters" in tags or "injected-parameters" in tags


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def reshaping_in(code: str) -> list[str]:
    """What in one cell's code builds or reshapes data instead of calling the package.

    Settings are not data: the dict literals handed to ``parameter_overrides`` are allowed.
    """
    tree = ast.parse(code)
    allowed = {
        id(keyword.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _called_name(node) == "parameter_overrides"
        for keyword in node.keywords
    }
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if id(node) in allowed:
            return
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            )
            found.extend(
                f"line {line}: imports {m}"
                for m in modules
                if str(m).split(".")[0] in DATA_LIBRARIES
            )
        elif isinstance(node, ast.Name) and node.id in DATA_LIBRARIES:
            found.append(f"line {line}: uses {node.id}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in RESHAPING_METHODS:
                found.append(f"line {line}: .{node.func.attr}(...)")
        elif isinstance(node, ast.Attribute) and node.attr in INDEXERS:
            found.append(f"line {line}: .{node.attr}")
        elif isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Constant):
            if not isinstance(node.slice, ast.Name):
                found.append(f"line {line}: selects with [{ast.unparse(node.slice)}]")
        elif isinstance(node, ast.Tuple) and isinstance(node.ctx, ast.Load):
            found.append(f"line {line}: a tuple literal")
        for kind, what in BUILDERS.items():
            if isinstance(node, kind):
                found.append(f"line {line}: {what}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.mark.parametrize(
    "code",
    [
        'quirks.groupby("kind").size()',
        "a.merge(b)",
        'grid.pivot_table(index="model", values="usd")',
        'metrics.loc["human", "map50"]',
        "frame.iloc[0]",
        'kpi[["map", "threshold", "verdict"]]',
        'boxes[boxes["class_name"] == "all"]',
        "rows[:5]",
        "per_1000.T",
        '{"human": 1.0}',
        "[a, b]",
        "(a, b)",
        "[row for row in rows]",
        'pd.DataFrame(rows, columns=["file"])',
        'pd.Series(x.describe(), name="value").to_frame()',
        "metrics.round(4)",
        'round(summary["wall_minutes"].sum(), 1)',
        "import pandas as pd",
        "from numpy import mean",
        'for note in notes:\n    print("Note:", note)',
        "with context():\n    display(x)",
        "share * 100",
        "value is not None",
        "lambda row: row",
    ],
)
def test_reshaping_detector_flags(code: str) -> None:
    assert reshaping_in(code), code


@pytest.mark.parametrize(
    "code",
    [
        "result = run_split(config)\nresult.table",
        "headline(result.summary).to_frame()",
        'value_table(result.leakage, "count")',
        'f(result.summary["ece"], analysis.sensitivity["price"]);',
        "labels.head(10)",
        "table if len(table) else note",
        "chosen = sources or planned(config)",
        "a, b = pair()",
        'load_config(profile, overrides=parameter_overrides(split={"seed_fraction": fraction}))',
        "from cascade_defect.plots.data import split_bars\nsplit_bars(result.table);",
        "#| label: fig-x\nsplit_bars(table);",
    ],
)
def test_reshaping_detector_passes(code: str) -> None:
    assert reshaping_in(code) == [], code


# ---------------------------------------------------------------------------------------------
# Figures: every figure cell carries Quarto's label, caption and alt text.
# ---------------------------------------------------------------------------------------------

FIGURE_OPTIONS = ("label", "fig-cap", "fig-alt")


def _module_figures(module_name: str) -> set[str]:
    """Names of the functions of a ``cascade_defect.plots`` module that return a Figure."""
    module = importlib.import_module(module_name)
    names = set()
    for name in dir(module):
        value = getattr(module, name)
        if callable(value) and getattr(value, "__module__", "") == module_name:
            try:
                hints = typing.get_type_hints(value)
            except (NameError, TypeError):
                continue
            if hints.get("return") is Figure:
                names.add(name)
    return names


def figure_calls(notebook: nbformat.NotebookNode) -> dict[int, list[str]]:
    """Per code cell index, the plot functions (those returning a Figure) it calls."""
    direct: dict[str, str] = {}
    modules: dict[str, set[str]] = {}
    cells = [(i, c) for i, c in enumerate(notebook.cells) if c.cell_type == "code"]
    for _, cell in cells:
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "cascade_defect.plots"
            ):
                for alias in node.names:
                    bound = alias.asname or alias.name
                    if node.module == "cascade_defect.plots":  # a module: plots_cost.plot_x(...)
                        modules[bound] = _module_figures(f"{node.module}.{alias.name}")
                    elif alias.name in _module_figures(node.module):
                        direct[bound] = alias.name
    calls: dict[int, list[str]] = {}
    for index, cell in cells:
        for node in ast.walk(ast.parse(cell.source)):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in direct:
                calls.setdefault(index, []).append(func.id)
            elif (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.attr in modules.get(func.value.id, set())
            ):
                calls.setdefault(index, []).append(f"{func.value.id}.{func.attr}")
    return calls


def _has_image(cell: nbformat.NotebookNode) -> bool:
    return any(
        key.startswith("image/")
        for output in cell.get("outputs", [])
        for key in output.get("data", {})
    )


def missing_figure_options(notebook: nbformat.NotebookNode) -> list[str]:
    """``cell N: what is missing`` for each figure cell (a plot call or an image output)."""
    calls = figure_calls(notebook)
    problems = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or not (index in calls or _has_image(cell)):
            continue
        options = cell_options(cell.source)
        missing = [name for name in FIGURE_OPTIONS if not str(options.get(name) or "").strip()]
        if options.get("label") and not str(options["label"]).startswith("fig-"):
            missing.append("a label starting with fig-")
        if missing:
            problems.append(
                f"cell {index} ({', '.join(calls.get(index, ['image output']))}): {missing}"
            )
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_cell_has_a_label_caption_and_alt_text(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    assert figure_calls(notebook), f"{path.name}: no plot call found; is the detector blind?"
    problems = missing_figure_options(notebook)
    assert not problems, f"{path.name}: figure cells without Quarto options:\n  " + "\n  ".join(
        problems
    )


def test_figure_option_check_names_each_missing_option() -> None:
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("from cascade_defect.plots import cost as plots_cost"),
            nbformat.v4.new_code_cell(
                "from cascade_defect.plots.data import split_bars\nfrom cascade_defect.plots.book import value_table"
            ),
            nbformat.v4.new_code_cell("#| label: fig-split\nsplit_bars(table);"),
            nbformat.v4.new_code_cell('plots_cost.plot_cost_grid(grid, kind="heatmap");'),
            nbformat.v4.new_code_cell("value_table(x)"),
            nbformat.v4.new_code_cell(
                "show()",
                outputs=[nbformat.v4.new_output("display_data", data={"image/png": "AAAA"})],
            ),
            nbformat.v4.new_code_cell(
                '#| label: fig-ok\n#| fig-cap: "Split."\n#| fig-alt: "Bars."\nsplit_bars(t);'
            ),
        ]
    )
    problems = missing_figure_options(notebook)
    assert [p.split(":")[0] for p in problems] == [
        "cell 2 (split_bars)",
        "cell 3 (plots_cost.plot_cost_grid)",
        "cell 5 (image output)",
    ]
    assert "['fig-cap', 'fig-alt']" in problems[0]


def _book_sources() -> Iterator[tuple[str, str]]:
    """``(file, markdown)`` for every markdown cell of the chapters and every .qmd page."""
    for entry in [*book_chapters(ROOT), *book_appendices(ROOT)]:
        path = ROOT / entry
        if path.suffix == ".ipynb":
            for cell in nbformat.read(path, as_version=4).cells:
                if cell.cell_type == "markdown":
                    yield entry, cell.source
        else:
            text = path.read_text()
            for include in re.findall(r"\{\{< include (\S+) >\}\}", text):
                if (ROOT / include).exists():
                    text += "\n" + (ROOT / include).read_text()
            yield entry, text


def _book_labels() -> dict[str, list[str]]:
    """Every ``fig-`` label of the book, by the file that defines it."""
    labels: dict[str, list[str]] = {}
    for entry in [*book_chapters(ROOT), *book_appendices(ROOT)]:
        path = ROOT / entry
        if path.suffix == ".ipynb":
            for cell in nbformat.read(path, as_version=4).cells:
                if cell.cell_type == "code" and str(
                    cell_options(cell.source).get("label", "")
                ).startswith("fig-"):
                    labels.setdefault(entry, []).append(cell_options(cell.source)["label"])
    for entry, text in _book_sources():
        labels.setdefault(entry, []).extend(re.findall(r"%%\| label: (fig-[\w-]+)", text))
        labels[entry].extend(re.findall(r"\{#(fig-[\w-]+)", text))
    return labels


def test_figure_labels_are_unique_and_every_cross_reference_resolves() -> None:
    labels = _book_labels()
    every = [label for found in labels.values() for label in found]
    assert len(every) == len(set(every)), sorted(label for label in every if every.count(label) > 1)
    dangling = [
        (entry, ref)
        for entry, text in _book_sources()
        for ref in re.findall(r"(?<![\w.@])@(fig-[\w-]*\w)", text)
        if ref not in every
    ]
    assert not dangling, dangling


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_narrative_cites_its_figures(path: Path) -> None:
    """Each chapter's prose points the reader at its figures with ``@fig-`` references."""
    entry = f"notebooks/{path.name}"
    own = set(_book_labels().get(entry, []))
    cited = {
        ref
        for source, text in _book_sources()
        if source == entry
        for ref in re.findall(r"@(fig-[\w-]*\w)", text)
    }
    assert own, f"{path.name} has no labelled figure"
    assert own & cited, f"{path.name} never cites its own figures"
    intro = nbformat.read(path, as_version=4).cells[0].source
    assert re.search(r"@fig-[\w-]+", intro), (
        f"{path.name}: the opening does not point at its headline figure"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_opens_with_question_and_answer_and_ends_with_settings(path: Path) -> None:
    """Question and headline first, one line of key settings, the full settings and files last."""
    notebook = nbformat.read(path, as_version=4)
    opening = notebook.cells[0].source
    assert "**The question.**" in opening and "**The answer in short.**" in opening, path.name
    code = [c for c in notebook.cells if c.cell_type == "code" and not _is_parameters(c)]
    assert "settings_line(" in code[0].source, (
        f"{path.name}: the first cell should show settings_line"
    )
    headings = [
        (i, line)
        for i, c in enumerate(notebook.cells)
        if c.cell_type == "markdown"
        for line in c.source.splitlines()
        if line.startswith("## ")
    ]
    last_index, last_heading = headings[-1]
    assert last_heading == "## Settings and files", f"{path.name} ends with {last_heading!r}"
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and re.search(
            r"\b(settings_table|chapter_files)\(", cell.source
        ):
            assert index > last_index, (
                f"{path.name}: cell {index} shows settings or files before the end"
            )
    closing = "".join(c.source for c in notebook.cells[last_index:])
    assert "settings_table(config)" in closing and "chapter_files(" in closing


# ---------------------------------------------------------------------------------------------
# The preview: alt text on every image, Quarto's syntax turned into HTML.
# ---------------------------------------------------------------------------------------------

NBCONVERT_PLACEHOLDER = "No description has been provided for this image"


def images_without_alt(site: Path) -> list[str]:
    missing = []
    for page in sorted(site.glob("*.html")):
        soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
        for number, image in enumerate(soup.find_all("img"), start=1):
            alt = (image.get("alt") or "").strip()
            if not alt or alt == NBCONVERT_PLACEHOLDER:
                missing.append(f"{page.name}: image {number}")
    return missing


def test_preview_gives_every_image_its_alt_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        site = build_preview(ROOT, out_dir=tmp_path / "site")
    warnings = [r.getMessage() for r in caplog.records if "Alternative text" in r.getMessage()]
    assert not warnings, warnings
    assert not images_without_alt(site)
    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'id="fig-verdict"' in index and "{#fig-" not in index and ":::" not in index
    chapter = (site / "06_test_comparison.html").read_text(encoding="utf-8")
    assert 'href="#fig-map-intervals"' in chapter and "@fig-" not in chapter


def test_preview_turns_quarto_syntax_into_html(tmp_path: Path) -> None:
    markdown = """# Title

See @fig-flow and @fig-shot; mail a@fig-not.

```{mermaid}
%%| label: fig-flow
%%| fig-cap: "The flow."
flowchart LR
  a --> b
```

![A shot.](shot.png){#fig-shot fig-alt="A grey square."}

::: {.callout-note collapse="true"}
## Details
Hidden text.
:::
"""
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell(markdown),
            nbformat.v4.new_code_cell(
                '#| label: fig-bars\n#| fig-cap: "Bars."\n#| fig-alt: "Two bars."\nbars();',
                outputs=[
                    nbformat.v4.new_output(
                        "display_data", data={"image/png": _tiny_png(), "text/plain": "<Figure>"}
                    )
                ],
            ),
        ]
    )
    (tmp_path / "notebooks").mkdir()
    nbformat.write(notebook, tmp_path / "notebooks" / "01_a.ipynb")
    (tmp_path / "shot.png").write_bytes(__import__("base64").b64decode(_tiny_png()))
    (tmp_path / "index.qmd").write_text('---\ntitle: "Preface"\n---\n\nSee @fig-bars.\n')
    (tmp_path / "_quarto.yml").write_text(
        "project:\n  type: book\nbook:\n  title: T\n  chapters:\n    - index.qmd\n"
        "    - notebooks/01_a.ipynb\n"
    )
    site = build_preview(tmp_path, out_dir=tmp_path / "site")
    page = BeautifulSoup((site / "01_a.html").read_text(encoding="utf-8"), "html.parser")
    alts = sorted(image.get("alt") for image in page.find_all("img"))
    assert alts == ["A grey square.", "Two bars."]
    captions = [c.get_text(" ", strip=True) for c in page.select(".cd-figcaption")]
    assert captions[0].startswith("Figure 1. The flow.") and captions[1:] == [
        "Figure 2. A shot.",
        "Figure 3. Bars.",
    ]
    assert [a["href"] for a in page.find_all("a", href=re.compile("fig-"))] == [
        "#fig-flow",
        "#fig-shot",
    ]
    assert "a@fig-not" in page.get_text()
    assert "flowchart LR" in page.find("pre").get_text() and "%%|" not in page.get_text()
    assert "bars();" in page.get_text() and "#|" not in page.get_text()  # options are not echoed
    details = page.find("details")
    assert details.find("summary").get_text() == "Details" and "Hidden text." in details.get_text()
    index = BeautifulSoup((site / "index.html").read_text(encoding="utf-8"), "html.parser")
    assert [a["href"] for a in index.find_all("a", href=re.compile("fig-"))] == [
        "01_a.html#fig-bars"
    ]


def _tiny_png() -> str:
    return (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
        "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    )


def test_figure_registry_numbers_figures_per_page_in_reading_order() -> None:
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("![Cap](x.png){#fig-b}"),
            nbformat.v4.new_code_cell('#| label: fig-a\n#| fig-cap: "A"\nf()'),
            nbformat.v4.new_code_cell("#| label: tbl-x\ng()"),
        ]
    )
    registry = figure_registry([Page(Path("a.ipynb"), "a.html", "A")], [notebook])
    assert [(f.label, f.number, f.caption) for f in registry.values()] == [
        ("fig-b", 1, "Cap"),
        ("fig-a", 2, "A"),
    ]


# ---------------------------------------------------------------------------------------------
# The preface and the diagrams.
# ---------------------------------------------------------------------------------------------

DIAGRAMS = {
    "index.qmd": ("fig-split-design", "fig-annotation-sequence"),
    "notebooks/01_data_strategy.ipynb": ("fig-class-taxonomy",),
    "scaling_out.qmd": ("fig-data-flow",),
}


@pytest.mark.parametrize("entry", sorted(DIAGRAMS))
def test_the_study_is_drawn_in_mermaid_diagrams(entry: str) -> None:
    text = "\n".join(source for name, source in _book_sources() if name == entry)
    blocks = re.findall(r"^```\{mermaid\}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    labels = {cell_options(block).get("label") for block in blocks}
    assert set(DIAGRAMS[entry]) <= labels, (entry, labels)
    for block in blocks:
        assert cell_options(block).get("fig-cap"), f"{entry}: a diagram without fig-cap"


def test_preface_opens_with_the_verdict_figure() -> None:
    text = (ROOT / "index.qmd").read_text()
    body = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.DOTALL).lstrip()
    assert body.startswith("{{< include _verdict.md >}}")
    verdict = (ROOT / "_verdict.md").read_text()
    match = re.search(r"!\[[^\]]+\]\((\S+)\)\{#fig-verdict fig-alt=\"([^\"]{80,})\"\}", verdict)
    assert match, verdict
    assert (ROOT / match.group(1)).is_file()
    assert "97%" in match.group(2) and "pseudo" in match.group(2)


def test_verdict_is_drawn_from_chapter_06_files(tmp_path: Path) -> None:
    from cascade_defect.plots.verdict import VERDICT_FIGURE, write_verdict

    comparison = tmp_path / "runs" / "06_comparison"
    (comparison / "classification").mkdir(parents=True)
    include = write_verdict(tmp_path, comparison)
    assert "once chapter 06 has run" in include.read_text()
    assert not (tmp_path / VERDICT_FIGURE).exists()
    pd.DataFrame(
        {"map50": [0.7, 0.35], "map50_ci_low": [0.67, 0.32], "map50_ci_high": [0.73, 0.38]},
        index=pd.Index(["human", "pseudo"], name="source"),
    ).to_csv(comparison / "test_metrics.csv")
    pd.DataFrame(
        {
            "source": ["human", "pseudo"],
            "accuracy": [0.99, 0.985],
            "ci_low": [0.98, 0.97],
            "ci_high": [1.0, 0.99],
        }
    ).to_csv(comparison / "classification" / "test_accuracy.csv", index=False)
    text = write_verdict(tmp_path, comparison).read_text()
    assert (tmp_path / VERDICT_FIGURE).stat().st_size > 0
    assert "pseudo 0.350 (95% interval 0.320 to 0.380) against human 0.700" in text
    assert "reaches 50.0% of human and misses the 97% target" in text
    assert "reaches 99.5% of human and meets the 97% target" in text


def test_chapter_frame_helpers(tmp_path: Path) -> None:
    """The one-line settings, the full table and the files table every chapter shows."""
    import json

    from cascade_defect.plots.book import chapter_files, settings_line, settings_table, value_table
    from cascade_defect.settings import load_config

    config = load_config("smoke", work_dir=tmp_path / "work")
    line = settings_line(config, "split.random_seed", budget_usd=5.0).data
    assert line.startswith("**Settings.** `profile` smoke; `split.random_seed` ")
    assert "`budget_usd` 5." in line and "Settings and files" in line
    with pytest.raises(KeyError, match="no_such_setting"):
        settings_line(config, "no_such_setting")
    assert settings_table(config).loc["profile", "value"] == "smoke"
    assert value_table({}, empty="none here") == "none here"
    assert value_table({"a": 1}, "count").loc["a", "count"] == 1

    chapter = config.paths.split_dir
    (chapter / "ground_truth").mkdir(parents=True)
    (chapter / "ground_truth" / "truth.csv").write_text("image_id\na\nb\n")
    (chapter / "seed.csv").write_text("image_id\na\n")
    outputs = {"seed": str(chapter / "seed.csv"), "truth": str(chapter / "ground_truth")}
    (chapter / "manifest.json").write_text(json.dumps({"outputs": outputs}))
    files = chapter_files(config, chapter).set_index("output")
    assert list(files.index) == ["seed", "truth", "manifest"]
    assert files.loc["seed", "size"] == "1 rows" and files.loc["truth", "size"] == "1 files"
    assert files.loc["manifest", "kind"] == "file"
    assert files.loc["seed", "file"] == "02_split/seed.csv"


def test_quarto_config_has_no_repo_actions_without_a_repo_url() -> None:
    book = yaml.safe_load((ROOT / "_quarto.yml").read_text())["book"]
    assert "repo-actions" not in book or "repo-url" in book


def test_appendices_exist_and_their_includes_are_generated() -> None:
    for appendix in book_appendices(ROOT):
        if appendix.endswith(".ipynb"):
            # An appendix record's executed chapter: titled for its dataset, with its note.
            notebook = nbformat.read(ROOT / appendix, as_version=4)
            assert notebook.cells[0].source.startswith("# "), appendix
            assert notebook.cells[1].get("id") == "appendix-record-note", appendix
            assert any(cell.get("outputs") for cell in notebook.cells), appendix
            continue
        text = (ROOT / appendix).read_text()
        assert text.startswith("---\ntitle:")
        for include in re.findall(r"\{\{< include (\S+) >\}\}", text):
            assert (ROOT / include).is_file(), include
