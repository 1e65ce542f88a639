"""Command-line options and output shared by the benchmark scripts that retrain a model.

Both scripts read a profile's chapter outputs, train into a scratch folder (never the book's),
take further ultralytics arguments as ``--arg KEY=VALUE`` and print their figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cascade_defect.manifest import environment, git_state
from cascade_defect.plots.book import manifest_path


def parser_with_common_options(doc: str) -> argparse.ArgumentParser:
    """A parser described by the script's docstring, with the options every benchmark takes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", help="settings profile (default: quick)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    parser.add_argument("--imgsz", type=int, default=None, help="default: the profile's")
    parser.add_argument(
        "--batch", type=int, default=None, help="default: the profile's (or recipe's)"
    )
    parser.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ultralytics train() argument, value parsed as YAML (repeatable)",
    )
    parser.add_argument("--scratch", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser


def config_for_run(run_dir: Path | None, profile: str, overrides: dict | None = None) -> Any:
    """The configuration of a run folder ``<work>/runs/<profile>`` (or of ``profile`` in the
    default work folder when no folder is given), so a benchmark reads that run's outputs."""
    from cascade_defect.settings import PROFILES, load_config

    if run_dir is None:
        return load_config(profile, overrides=overrides)
    run_dir = run_dir.resolve()
    if run_dir.parent.name != "runs" or run_dir.name not in PROFILES:
        raise SystemExit(
            f"{run_dir} is not a run folder <work>/runs/<profile> (profiles: {sorted(PROFILES)})"
        )
    return load_config(run_dir.name, work_dir=run_dir.parent.parent, overrides=overrides)


def scratch_folder(args: argparse.Namespace, prefix: str) -> Path:
    return args.scratch or Path(tempfile.mkdtemp(prefix=prefix))


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the figures, and write them to ``--json`` when given."""
    text = json.dumps(figures, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


def resumable_scratch(parser: argparse.ArgumentParser) -> None:
    """Describe ``--scratch`` as the fixed folder a resumable sweep keeps its runs in."""
    for action in parser._actions:  # a fixed folder, not a temporary one, so the sweep resumes
        if action.dest == "scratch":
            action.help = "datasets and weights (default: <csv stem>_runs/ next to the CSV)"


def schedule_config(args: argparse.Namespace) -> Any:
    """The run folder's configuration with the schedule given on the command line
    (``--imgsz``, ``--batch``, ``--device``, ``--arg``)."""
    from cascade_defect.settings import key_value_arguments, parameter_overrides

    overrides = parameter_overrides(
        training={
            "imgsz": args.imgsz,
            "batch": args.batch,
            "device": args.device,
            "ultralytics_args": key_value_arguments(args.arg) or None,
        }
    )
    return config_for_run(args.run_dir, args.profile, overrides)


def path_beside(path: Path, folder: Path, config: Any) -> str | None:
    """``path`` relative to a manifest's ``folder`` when inside it, else as the record writes it;
    None when it is neither (a committed manifest never holds a machine's path)."""
    from cascade_defect.locations import portable_path

    if path.resolve().is_relative_to(folder.resolve()):
        return path.resolve().relative_to(folder.resolve()).as_posix()
    written = portable_path(path, config)
    return None if Path(written).is_absolute() else written


def benchmark_header(name: str, profile: str, table: Path) -> dict[str, Any]:
    """The fields every benchmark manifest opens with: what ran, when, the code's commit (of the
    checkout the script runs from, never the run folder's) and the packages and CPU it ran on.

    ``table`` and its manifest are left out of the dirty check: a benchmark that writes its
    committed table in place has changed a tracked file by the time it describes itself.
    """
    outputs = (Path(table), manifest_path(Path(table)))
    return {
        "benchmark": name,
        "script": f"scripts/bench_{name}.py",
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": profile,
        "git": git_state(Path(__file__).resolve().parent, run_dirs=outputs),
        "environment": environment(),
    }


def add_profile_changes(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable): profile settings a benchmark changes."""
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=help_text
    )


def profile_changes(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["annotation.synthetic_defects=100"]`` -> ``{"annotation": {"synthetic_defects": 100}}``;
    a key without a section is refused by name."""
    from cascade_defect.settings import key_value_arguments

    changes: dict[str, dict[str, Any]] = {}
    for dotted, value in key_value_arguments(pairs).items():
        section, dot, key = dotted.partition(".")
        if not dot or not key:
            raise SystemExit(f"--set {dotted}: expected SECTION.KEY=VALUE")
        changes.setdefault(section, {})[key] = value
    return changes


def chapter_made_by(manifest: Path) -> dict[str, object]:
    """Which run of a chapter made a benchmark's input files: its commit, time and CPU (a run
    folder of the same name on another machine holds other boxes); empty without a manifest."""
    if not manifest.exists():
        return {}
    made = json.loads(manifest.read_text())
    return {
        "finished_at": made.get("finished_at"),
        "git": made.get("git"),
        "cpu": made.get("environment", {}).get("cpu"),
    }
