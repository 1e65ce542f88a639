"""House rules: small modules, chapters on top, one notebook per chapter, a portable record, real docstrings.

Each rule is a function that lists the offenders in a tree. The same function runs on the real tree
(it must find none) and on a small tree with planted offenders (it must name each of them), so no
rule can pass by looking at nothing.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import nbformat
import pytest

from cascade_defect.render import book_chapters
from cascade_defect.runner import CHAPTERS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "src" / "cascade_defect"
MAX_MODULE_LINES = 600
CHAPTERS_PACKAGE = "cascade_defect.chapters"
GENERIC_SUBPACKAGES = ("data", "annotate", "metrics", "train", "costs", "storage", "plots")
# Modules that drive the chapters from above; generic code must not reach up into them either.
ORCHESTRATION = (
    CHAPTERS_PACKAGE,
    "cascade_defect.runner",
    "cascade_defect.cli",
    "cascade_defect.findings",
    "cascade_defect.render",
    "cascade_defect.azureml",
)
RECORD_PATHS = ("notebooks", "data/runs", "_findings.md")
RECORD_SUFFIXES = {".ipynb", ".json", ".csv", ".md"}


# ---------------------------------------------------------------------------------------------
# Rule helpers: each returns the offenders it finds in a tree.
# ---------------------------------------------------------------------------------------------


def python_modules(package_dir: Path) -> list[Path]:
    return sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_within(name: str, package: str) -> bool:
    return name == package or name.startswith(f"{package}.")


def imported_names(
    tree: ast.AST, module: str, *, is_package: bool = False
) -> Iterator[tuple[int, str]]:
    """Every module a parsed file imports, at any depth, with its line; relative imports resolved.

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule), and
    ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name count as imports.
    """
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package_parts[: len(package_parts) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
            if called in ("import_module", "__import__") and literal:
                yield node.lineno, first.value


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def forbidden_imports(
    package_dir: Path, files: Sequence[Path], forbidden: Sequence[str]
) -> list[str]:
    """``file:line imports name`` for each import in ``files`` of a module within ``forbidden``."""
    found: dict[tuple[str, int], str] = {}
    for path in files:
        module = module_name(path, package_dir)
        where = str(path.relative_to(package_dir.parent))
        tree = _parse(path)
        for line, name in imported_names(tree, module, is_package=path.name == "__init__.py"):
            if any(_is_within(name, banned) for banned in forbidden):
                # ``from a.b import c`` names ``a.b`` and ``a.b.c``: report the module, once.
                known = found.get((where, line))
                found[(where, line)] = name if known is None or len(name) < len(known) else known
    return [f"{where}:{line} imports {name}" for (where, line), name in sorted(found.items())]


def generic_code_importing_chapters(package_dir: Path) -> list[str]:
    chapters_dir = package_dir / "chapters"
    generic = [p for p in python_modules(package_dir) if chapters_dir not in p.parents]
    return forbidden_imports(package_dir, generic, [CHAPTERS_PACKAGE])


def oversized_modules(package_dir: Path, limit: int = MAX_MODULE_LINES) -> dict[str, int]:
    counts = {
        str(p.relative_to(package_dir.parent)): len(p.read_text(encoding="utf-8").splitlines())
        for p in python_modules(package_dir)
    }
    return {name: n for name, n in counts.items() if n > limit}


_PLACEHOLDER = re.compile(r"\bTODO\b")


def placeholder_docstrings(src_dir: Path) -> list[str]:
    """``file:line`` of each module, class or function docstring that is still a ``TODO``."""
    found = []
    for path in sorted(src_dir.rglob("*.py")):
        tree = _parse(path)
        for node in ast.walk(tree):
            if not isinstance(
                node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            ):
                continue
            doc = ast.get_docstring(node, clean=False)
            if doc and _PLACEHOLDER.search(doc):
                line = getattr(node, "lineno", 1)
                found.append(f"{path.relative_to(src_dir)}:{line}: {doc.strip().splitlines()[0]}")
    return sorted(set(found))


_NOTEBOOK_NAME = re.compile(r"^(\d\d)_\w+\.ipynb$")
_MODULE_NAME = re.compile(r"^c(\d\d)_\w+\.py$")


def _numbered(
    names: Sequence[str], pattern: re.Pattern[str], where: str
) -> tuple[dict[str, str], list[str]]:
    by_number: dict[str, str] = {}
    problems: list[str] = []
    for name in names:
        match = pattern.match(name)
        if match is None:
            problems.append(f"{where}: {name} is not named NN_<name>")
        elif match.group(1) in by_number:
            problems.append(
                f"{where}: {by_number[match.group(1)]} and {name} share number {match.group(1)}"
            )
        else:
            by_number[match.group(1)] = name
    return by_number, problems


def _notebook_imports(path: Path) -> set[str]:
    notebook = nbformat.read(path, as_version=4)
    names: set[str] = set()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        # IPython magics and shell escapes are not Python.
        code = "\n".join(
            "" if line.lstrip().startswith(("%", "!")) else line
            for line in cell.source.splitlines()
        )
        names |= {name for _, name in imported_names(ast.parse(code), "__main__")}
    return names


def chapter_mismatches(root: Path, runner_notebooks: Sequence[str]) -> list[str]:
    """Where the runner's chapters, the notebooks, ``_quarto.yml`` and ``chapters/cNN_*.py`` disagree."""
    chapters_dir = root / "src" / "cascade_defect" / "chapters"
    quarto = [Path(c).name for c in book_chapters(root) if c.endswith(".ipynb")]
    on_disk = [p.name for p in sorted((root / "notebooks").glob("*.ipynb"))]
    modules = [p.name for p in sorted(chapters_dir.glob("c*.py"))]
    problems: list[str] = []
    listings: dict[str, dict[str, str]] = {}
    for where, names, pattern in (
        ("runner.CHAPTERS", list(runner_notebooks), _NOTEBOOK_NAME),
        ("notebooks/", on_disk, _NOTEBOOK_NAME),
        ("_quarto.yml", quarto, _NOTEBOOK_NAME),
        ("chapters/", modules, _MODULE_NAME),
    ):
        listings[where], bad = _numbered(names, pattern, where)
        problems += bad
    expected = [f"{i:02d}" for i in range(1, len(runner_notebooks) + 1)]
    for where, by_number in listings.items():
        if sorted(by_number) != expected:
            problems.append(
                f"{where} holds chapters {sorted(by_number)}, runner expects {expected}"
            )
    if quarto != list(runner_notebooks):
        problems.append(f"_quarto.yml lists {quarto}, runner.CHAPTERS {list(runner_notebooks)}")
    if on_disk != sorted(runner_notebooks):
        problems.append(f"notebooks/ holds {on_disk}, runner.CHAPTERS {list(runner_notebooks)}")
    for number, module_file in listings["chapters/"].items():
        tree = _parse(chapters_dir / module_file)
        runs = [
            n.name
            for n in tree.body
            if isinstance(n, ast.FunctionDef) and n.name.startswith("run_")
        ]
        if not runs:
            problems.append(f"chapters/{module_file} defines no run_* function")
        notebook = listings["notebooks/"].get(number)
        if notebook is None:
            continue
        own = f"{CHAPTERS_PACKAGE}.{module_file.removesuffix('.py')}"
        if own not in _notebook_imports(root / "notebooks" / notebook):
            problems.append(f"notebooks/{notebook} does not import its chapter module {own}")
    return problems


# A path that starts at the filesystem's root (or a drive) of a machine: it will not exist on
# another one. A root name preceded by a word character, a dot, ``/``, ``~`` or ``}`` is part of a
# URL, a relative path or ``${VAR}/...``, and is not matched; ``file://`` URLs are local paths.
_POSIX_ROOTS = "home|work|tmp|root|Users|mnt|Volumes"
ABSOLUTE_PATH = re.compile(
    rf"(?:(?<![\w.~}}/])|(?<=file://))/(?:{_POSIX_ROOTS})(?![\w-])(?!\.\w)"
    r"|(?<![\w/\\])[A-Za-z]:(?:\\+|/)(?=[\w.$~ -])"
)


def absolute_paths_in_text(text: str) -> list[str]:
    """The absolute paths in one string, each cut at the next quote, space or comma."""
    return [
        re.split(r"[\s\"',<>]", text[m.start() :], maxsplit=1)[0]
        for m in ABSOLUTE_PATH.finditer(text)
    ]


def _json_strings(node: object) -> Iterator[str]:
    """Every key and string value, decoded, except base64 images (noise, never a path)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            if str(key).startswith("image/") and not str(key).endswith("+xml"):
                continue
            yield from _json_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _json_strings(item)
    elif isinstance(node, str):
        yield node


def absolute_paths_in_file(path: Path) -> list[str]:
    """JSON (and notebooks) are decoded first, so escapes such as ``\\n/home/...`` hide nothing."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".json", ".ipynb"):
        try:
            strings: Iterator[str] = _json_strings(json.loads(text))
        except json.JSONDecodeError:
            strings = iter([text])
    else:
        strings = iter([text])
    return [found for string in strings for found in absolute_paths_in_text(string)]


def record_files(root: Path) -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", *RECORD_PATHS],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        root / name for name in listed.split("\0") if name and Path(name).suffix in RECORD_SUFFIXES
    ]


def absolute_paths_in_record(files: Sequence[Path], root: Path) -> dict[str, list[str]]:
    found = {}
    for path in files:
        paths = absolute_paths_in_file(path)
        if paths:
            found[str(path.relative_to(root))] = paths
    return found


def undocumented_parts(package_dir: Path, architecture: str) -> list[str]:
    """Top-level modules (``name.py``) and subpackages (``name/``, nested ones too) that
    ARCHITECTURE.md does not name in backticks."""
    parts = [p.name for p in package_dir.glob("*.py") if p.name != "__init__.py"]
    parts += [
        f"{init.parent.name}/"
        for init in package_dir.rglob("__init__.py")
        if init.parent != package_dir and "__pycache__" not in init.parts
    ]
    return sorted(part for part in parts if f"`{part}`" not in architecture)


def _describe(found: dict[str, list[str]]) -> str:
    return "\n".join(
        f"  {name}: {len(paths)}, e.g. {sorted(set(paths))[:3]}"
        for name, paths in sorted(found.items())
    )


# ---------------------------------------------------------------------------------------------
# The rules on the real tree.
# ---------------------------------------------------------------------------------------------


def test_no_module_is_over_the_size_limit() -> None:
    oversized = oversized_modules(PACKAGE_DIR)
    assert not oversized, f"modules over {MAX_MODULE_LINES} lines (split them): " + ", ".join(
        f"{name} ({n})" for name, n in sorted(oversized.items())
    )


def test_generic_code_never_imports_a_chapter() -> None:
    """Only ``chapters/`` may import ``cascade_defect.chapters``.

    No module is exempt. The orchestrators ``runner.py``, ``cli.py`` and ``findings.py`` drive the
    chapters through their notebooks (papermill) and read what they wrote through the manifests
    and ``StudyPaths``, so they need no chapter module either; keeping them under the rule keeps a
    chapter's code reachable from its notebook only.
    """
    offenders = generic_code_importing_chapters(PACKAGE_DIR)
    assert not offenders, "generic code imports a chapter:\n  " + "\n  ".join(offenders)


@pytest.mark.parametrize("subpackage", GENERIC_SUBPACKAGES)
def test_generic_subpackage_imports_neither_chapters_nor_orchestration(subpackage: str) -> None:
    folder = PACKAGE_DIR / subpackage
    assert (folder / "__init__.py").is_file(), f"{subpackage} is no longer a subpackage"
    offenders = forbidden_imports(PACKAGE_DIR, python_modules(folder), ORCHESTRATION)
    assert not offenders, f"{subpackage} reaches up into the chapters:\n  " + "\n  ".join(offenders)


def test_chapters_runner_notebooks_and_book_agree() -> None:
    problems = chapter_mismatches(ROOT, [c.notebook for c in CHAPTERS])
    assert not problems, "\n".join(problems)


def test_record_holds_no_absolute_path() -> None:
    """The committed record must read the same on any machine: paths in it are relative."""
    files = record_files(ROOT)
    assert any(f.suffix == ".ipynb" for f in files) and any(
        f.name == "manifest.json" for f in files
    )
    found = absolute_paths_in_record(files, ROOT)
    assert not found, f"{len(found)} record files hold absolute paths:\n{_describe(found)}"


def test_architecture_names_every_part_and_readme_links_it() -> None:
    missing = undocumented_parts(PACKAGE_DIR, (ROOT / "ARCHITECTURE.md").read_text())
    assert not missing, f"ARCHITECTURE.md does not describe {missing}"
    readme = (ROOT / "README.md").read_text()
    assert "`ARCHITECTURE.md`" in readme, "README's 'Where things live' should name ARCHITECTURE.md"


def test_no_placeholder_docstring() -> None:
    placeholders = placeholder_docstrings(ROOT / "src")
    assert not placeholders, "placeholder docstrings:\n  " + "\n  ".join(placeholders)


# ---------------------------------------------------------------------------------------------
# Each rule fails on planted offenders.
# ---------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _fake_package(tmp_path: Path) -> Path:
    package = tmp_path / "src" / "cascade_defect"
    for init in ("", "chapters/", "data/", "plots/"):
        _write(package / f"{init}__init__.py", '"""Package."""\n')
    return package


def test_size_rule_names_each_module_over_the_limit(tmp_path: Path) -> None:
    package = _fake_package(tmp_path)
    _write(package / "data" / "big.py", "x = 1\n" * 601)
    _write(package / "data" / "fits.py", "x = 1\n" * 600)
    assert oversized_modules(package) == {"cascade_defect/data/big.py": 601}


def test_import_rule_finds_every_way_of_importing_a_chapter(tmp_path: Path) -> None:
    package = _fake_package(tmp_path)
    _write(package / "chapters" / "c01_data.py", "from cascade_defect.chapters import c02_x\n")
    _write(package / "data" / "top.py", "import cascade_defect.chapters.c01_data\n")
    _write(
        package / "data" / "inner.py",
        "def f():\n    from cascade_defect.chapters.c01_data import run\n",
    )
    _write(package / "data" / "parent.py", "from cascade_defect import chapters\n")
    _write(package / "data" / "relative.py", "from ..chapters.c01_data import run\n")
    _write(package / "data" / "__init__.py", "from ..chapters import c01_data\n")
    _write(
        package / "plots" / "lazy.py",
        "import importlib\nimportlib.import_module('cascade_defect.chapters.c01_data')\n",
    )
    _write(package / "plots" / "fine.py", "from cascade_defect.data import top\nimport chaptersx\n")
    _write(package / "runner.py", "from cascade_defect.findings import x\n")
    found = generic_code_importing_chapters(package)
    assert sorted({line.split(":")[0] for line in found}) == [
        "cascade_defect/data/__init__.py",
        "cascade_defect/data/inner.py",
        "cascade_defect/data/parent.py",
        "cascade_defect/data/relative.py",
        "cascade_defect/data/top.py",
        "cascade_defect/plots/lazy.py",
    ]
    assert "cascade_defect/data/inner.py:2 imports cascade_defect.chapters.c01_data" in found
    reaching_up = forbidden_imports(package, [package / "runner.py"], ORCHESTRATION)
    assert reaching_up == ["cascade_defect/runner.py:1 imports cascade_defect.findings"]


def _fake_book(
    tmp_path: Path, notebooks: dict[str, str], quarto: list[str], modules: dict[str, str]
) -> Path:
    _write(
        tmp_path / "_quarto.yml",
        "project:\n  type: book\nbook:\n  chapters:\n    - index.qmd\n"
        + "".join(f"    - notebooks/{name}\n" for name in quarto),
    )
    for name, code in notebooks.items():
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
        (tmp_path / "notebooks").mkdir(exist_ok=True)
        nbformat.write(notebook, tmp_path / "notebooks" / name)
    for name, code in modules.items():
        _write(tmp_path / "src" / "cascade_defect" / "chapters" / name, code)
    return tmp_path


def test_chapter_rule_accepts_a_consistent_book(tmp_path: Path) -> None:
    root = _fake_book(
        tmp_path,
        notebooks={
            "01_a.ipynb": "%matplotlib inline\nfrom cascade_defect.chapters.c01_a import run_a",
            "02_b.ipynb": "from cascade_defect.chapters import c02_b",
        },
        quarto=["01_a.ipynb", "02_b.ipynb"],
        modules={"c01_a.py": "def run_a():\n    pass\n", "c02_b.py": "def run_b():\n    pass\n"},
    )
    assert chapter_mismatches(root, ["01_a.ipynb", "02_b.ipynb"]) == []


def test_chapter_rule_names_each_disagreement(tmp_path: Path) -> None:
    root = _fake_book(
        tmp_path,
        notebooks={
            "01_a.ipynb": "from cascade_defect.chapters.c01_a import run_a",
            "02_b.ipynb": "from cascade_defect.chapters.c01_a import run_a",
        },
        quarto=["02_b.ipynb", "01_a.ipynb"],
        modules={"c01_a.py": "def run_a():\n    pass\n", "c02_b.py": "def helper():\n    pass\n"},
    )
    problems = chapter_mismatches(root, ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb"])
    text = "\n".join(problems)
    for expected in (
        "notebooks/ holds chapters ['01', '02'], runner expects ['01', '02', '03']",
        "chapters/ holds chapters ['01', '02']",
        "_quarto.yml lists ['02_b.ipynb', '01_a.ipynb']",
        "chapters/c02_b.py defines no run_* function",
        "notebooks/02_b.ipynb does not import its chapter module cascade_defect.chapters.c02_b",
    ):
        assert expected in text, text
    assert "01_a.ipynb does not import" not in text


@pytest.mark.parametrize(
    "text",
    [
        "/home/alice/NEU-DET",
        '"data_dir": "/work/shared/datasets/NEU-DET"',
        "cross_class_box,/work/shared/datasets/NEU-DET/IMAGES/patches_187.jpg,'x'",
        "<td>/work/main/data</td>",
        "stdout line\n/tmp/02_split.ipynb",
        "work_dir = /root",
        "see /Users/bob/data.",
        "file:///home/alice/x.csv",
        "--work-dir=/mnt/data",
        r"C:\Users\bob\NEU-DET",
        r"D:\\data\\runs",
        "C:/Users/bob",
    ],
)
def test_absolute_path_detector_flags(text: str) -> None:
    assert absolute_paths_in_text(text), text


@pytest.mark.parametrize(
    "text",
    [
        "https://example.com/home/work/tmp",
        "abfss://fs@acct.dfs.core.windows.net/work/runs",
        "http://localhost:8000/tmp/v1",
        "$CASCADE_DATA_DIR/IMAGES/patches_1.jpg",
        "${CASCADE_WORK_DIR}/tmp/x",
        "data/runs/quick/05_training/runs/human/weights/best.pt",
        "../work/notes.md",
        "~/tmp/x",
        "2024/01/02",
        "1/2 of the pool, mAP50/mAP50-95, 12 images/s",
        "/homework and /temporary",
        "ratio 3:1 at 12:30",
        "https://github.com/x/y",
    ],
)
def test_absolute_path_detector_passes(text: str) -> None:
    assert absolute_paths_in_text(text) == [], text


def test_record_rule_reads_inside_json_and_notebooks(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "print(1)",
                outputs=[
                    nbformat.v4.new_output("stream", name="stdout", text="done\n/work/x/out.csv\n"),
                    nbformat.v4.new_output("display_data", data={"image/png": "AAAA+/tmp/BBBB"}),
                ],
            )
        ]
    )
    nbformat.write(notebook, tmp_path / "01_a.ipynb")
    manifest = _write(tmp_path / "manifest.json", json.dumps({"inputs": {"x": "C:\\data\\x.csv"}}))
    clean = _write(tmp_path / "summary.json", json.dumps({"url": "https://h/home/x"}))
    table = _write(tmp_path / "quirks.csv", "kind,path\nbox,/home/u/a.jpg\n")
    files = [tmp_path / "01_a.ipynb", manifest, clean, table]
    found = absolute_paths_in_record(files, tmp_path)
    assert found == {
        "01_a.ipynb": ["/work/x/out.csv"],
        "manifest.json": ["C:\\data\\x.csv"],
        "quirks.csv": ["/home/u/a.jpg"],
    }
    assert "01_a.ipynb: 1" in _describe(found)


def test_placeholder_rule_finds_module_class_and_function_docstrings(tmp_path: Path) -> None:
    _write(tmp_path / "pkg" / "__init__.py", '"""TODO package docstring."""\n')
    _write(tmp_path / "pkg" / "a.py", '"""TODO docstring for pkg.a\n"""\n')
    _write(
        tmp_path / "pkg" / "b.py",
        '"""Fine."""\n\n\nclass C:\n    """TODO docstring."""\n\n\ndef f():\n    """Why f exists."""\n',
    )
    assert placeholder_docstrings(tmp_path) == [
        "pkg/__init__.py:1: TODO package docstring.",
        "pkg/a.py:1: TODO docstring for pkg.a",
        "pkg/b.py:4: TODO docstring.",
    ]


def test_architecture_rule_names_an_undescribed_part(tmp_path: Path) -> None:
    package = _fake_package(tmp_path)
    _write(package / "runner.py", "")
    _write(package / "data" / "sub" / "__init__.py", "")
    described = "`runner.py` ... `data/` ... `plots/`"
    assert undocumented_parts(package, described) == ["chapters/", "sub/"]
