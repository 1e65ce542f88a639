"""Command-line entry point: ``cascade-defect run|train|render|annotate|review|download``.

Also runnable as ``python -m cascade_defect.cli``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError

from cascade_defect.settings import PROFILES, DataLocationError, find_project_root, load_config

if TYPE_CHECKING:
    from cascade_defect.annotate.options import AnnotatorOptions


def _project_root() -> Path:
    root = find_project_root()
    if root is None:
        raise SystemExit(
            "error: run this inside the cascade-defect project (no _quarto.yml found above here)"
        )
    return root


def _parse_parameter(pair: list[str]) -> tuple[str, object]:
    key, raw = pair
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def cmd_run(args: argparse.Namespace) -> int:
    from cascade_defect.appendix import is_appendix_record, rebase_verdict_include
    from cascade_defect.render import is_record_folder, render_book
    from cascade_defect.runner import ChapterFailed, default_output_dir, run_chapters

    root = _project_root()
    config = load_config(
        args.profile,
        data_dir=args.data_dir,
        work_dir=args.work_dir,
        storage=args.storage,
        no_defect_class=args.no_defect_class,
    )
    try:
        config.require_data_dir()
    except DataLocationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    extra = dict(_parse_parameter(p) for p in args.parameter or [])
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(root, config)
    if output_dir.resolve() == root.resolve():
        print(
            "error: --output-dir is the project itself; give the run its own folder",
            file=sys.stderr,
        )
        return 2
    print(
        f"Running the book with profile {config.profile.name!r}; executed notebooks -> {output_dir}"
    )
    start = time.perf_counter()
    try:
        timings = run_chapters(
            root, config, parameters=extra, only=args.only, output_dir=output_dir
        )
    except ChapterFailed as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 1
    for timing in timings:
        print(f"  {timing.notebook:<32} {timing.seconds:8.1f} s")
    print(f"  {'all chapters':<32} {time.perf_counter() - start:8.1f} s")
    from cascade_defect.findings import write_findings

    if is_record_folder(root, output_dir) and not is_appendix_record(root, output_dir):
        write_findings(root, config.paths, config.profile.name)
        from cascade_defect.azureml import scaling_out_markdown

        (root / "_scaling_out.md").write_text(scaling_out_markdown(root / "azureml"))
    else:
        # Another run's findings live with its notebooks (an appendix record's page includes
        # them); the record's files stay as they are.
        write_findings(output_dir, config.paths, config.profile.name, record=False)
        if is_appendix_record(root, output_dir):
            rebase_verdict_include(root, output_dir)
    if not args.no_render:
        site = render_book(root, notebooks_dir=output_dir)
        print(f"Rendered the book into {site}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from cascade_defect.render import render_book

    root = _project_root()
    use_quarto = False if args.preview else None
    site = render_book(
        root,
        notebooks_dir=Path(args.notebooks_dir) if args.notebooks_dir else None,
        use_quarto=use_quarto,
    )
    print(f"Rendered the book into {site}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from cascade_defect.data.download import DownloadError, download_neu_det

    try:
        folder = download_neu_det(Path(args.dest))
    except DownloadError as error:
        print(str(error), file=sys.stderr)
        return 2
    print(f"NEU-DET is in {folder}\nSet: export CASCADE_DATA_DIR={folder}")
    return 0


ANNOTATE_OPTION_FLAGS = {
    "annotator": "--annotator",
    "model": "--model",
    "pricing_model": "--pricing-model",
    "detail": "--detail",
    "budget_usd": "--budget",
    "concurrency": "--concurrency",
    "images_per_request": "--images-per-request",
    "max_attempts": "--max-attempts",
    "box_strategies": "--box-strategy",
    "progress": "--no-progress",
}
"""Which ``cascade-defect annotate`` flag sets each :class:`AnnotatorOptions` field.

Each flag's default, choices and help come from the field (defaults from
:data:`~cascade_defect.annotate.folder.FOLDER_DEFAULTS`), so the command line cannot drift from
the options it builds. ``--box-strategy`` takes one strategy (a folder gets one set of labels);
a boolean field defaulting to true becomes a ``--no-...`` switch.
"""


def _optional_inner(annotation: Any) -> Any:
    """``X`` for ``X | None``; the annotation itself otherwise."""
    if get_origin(annotation) in (Union, UnionType):
        inner = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return annotation


def add_annotator_option_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :data:`ANNOTATE_OPTION_FLAGS` entry, described by the options model."""
    from cascade_defect.annotate.folder import FOLDER_DEFAULTS
    from cascade_defect.annotate.options import AnnotatorOptions

    for name, flag in ANNOTATE_OPTION_FLAGS.items():
        field = AnnotatorOptions.model_fields[name]
        default = getattr(FOLDER_DEFAULTS, name)
        annotation = _optional_inner(field.annotation)
        description = field.description or ""
        if annotation is bool:
            if not (default and flag.startswith("--no-")):
                raise TypeError(f"{flag}: only true-by-default switches are supported")
            parser.add_argument(
                flag,
                dest=name,
                action="store_false",
                help=f"do not {description[:1].lower()}{description[1:]}",
            )
            continue
        if get_origin(annotation) is tuple:  # one value on the command line, a tuple in options
            annotation = get_args(annotation)[0]
            (default,) = default
        kwargs: dict[str, Any] = {"dest": name, "default": default}
        if get_origin(annotation) is Literal:
            kwargs["choices"] = list(get_args(annotation))
        else:
            kwargs["type"] = annotation
            kwargs["metavar"] = flag.removeprefix("--").replace("-", "_").upper()
        suffix = "" if default is None else " (default: %(default)s)"
        parser.add_argument(flag, help=description.replace("%", "%%") + suffix, **kwargs)


def annotator_options_from_args(args: argparse.Namespace) -> AnnotatorOptions:
    """The annotate command's flags as validated options (raises pydantic's ValidationError)."""
    from cascade_defect.annotate.options import AnnotatorOptions

    fields = {name: getattr(args, name) for name in ANNOTATE_OPTION_FLAGS}
    fields["box_strategies"] = (fields["box_strategies"],)
    return AnnotatorOptions(**fields)


def describe_option_errors(error: ValidationError) -> str:
    """One line per invalid option, named by its command-line flag."""
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        flag = ANNOTATE_OPTION_FLAGS.get(field, field)
        lines.append(f"argument {flag}: {item['msg']}")
    return "\n".join(lines)


def cmd_annotate(args: argparse.Namespace) -> int:
    from cascade_defect.annotate.folder import InputError, annotate_folder
    from cascade_defect.annotate.mllm.providers import ProviderNotConfigured
    from cascade_defect.settings import EnvironmentSettings

    try:
        options = annotator_options_from_args(args)
    except ValidationError as error:
        for line in describe_option_errors(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    from cascade_defect.box_settings import DefectGateSettings

    weights = args.weights or EnvironmentSettings().yolo_weights
    for needs_gate, given in (
        ("--defect-recall", args.defect_recall is not None),
        ("--no-class-aware-detector", not args.class_aware_detector),
        ("--class-aware-members", args.class_aware_members != 1),
        ("--class-aware-flips", bool(args.class_aware_flips)),
    ):
        if given and not args.defect_gate:
            print(
                f"error: {needs_gate} needs the defect gate; drop --no-defect-gate", file=sys.stderr
            )
            return 2
    for needs_detector, given in (
        ("--class-aware-members", args.class_aware_members != 1),
        ("--class-aware-flips", bool(args.class_aware_flips)),
    ):
        if given and not args.class_aware_detector:
            print(
                f"error: {needs_detector} needs the class-aware detector; drop "
                "--no-class-aware-detector",
                file=sys.stderr,
            )
            return 2
    try:
        gate = DefectGateSettings(
            mode="auto" if args.defect_gate else "off",
            target_recall=args.defect_recall,
            class_aware_detector=args.class_aware_detector,
            class_aware_members=args.class_aware_members,
            class_aware_flips=tuple(dict.fromkeys(args.class_aware_flips)),
        )
    except ValidationError as error:
        problem = error.errors()[0]
        flag = "--defect-recall" if "target_recall" in problem["loc"] else "--class-aware-members"
        print(f"error: argument {flag}: {problem['msg']}", file=sys.stderr)
        return 2
    try:
        result = annotate_folder(
            Path(args.images),
            Path(args.seeds),
            Path(args.out),
            options,
            weights=weights,
            defect_gate=gate,
        )
    except (InputError, ProviderNotConfigured) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{result.annotator} ({result.model}): labelled {result.n_labelled} of {result.n_images} images, "
        f"{result.n_failed} without a label, ${result.cost_usd:.4f}, {result.seconds:.1f} s"
    )
    for name, path in result.files.items():
        print(f"  {name:<12} {path}")
    return 0 if result.n_labelled else 1


def cmd_review_import(args: argparse.Namespace) -> int:
    """Bring a corrected review export back into a run as the ``reviewed`` label source."""
    from cascade_defect.annotate.review_import import ReviewImportError
    from cascade_defect.annotate.reviewed import import_review

    try:
        summary = import_review(Path(args.file), Path(args.run_dir), args.format)
    except (ReviewImportError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{summary.file} ({summary.format}): {summary.n_reviews} reviewed image(s), "
        f"{summary.n_class_changes} class change(s), {summary.n_box_changes} box change(s), "
        f"{summary.n_not_reviewed} left unreviewed; {summary.n_reviewed_images} reviewed image(s) "
        f"in the run; {'written' if summary.changed else 'unchanged (already imported)'}"
    )
    for name, path in summary.files.items():
        print(f"  {name:<12} {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Chapters 05 and 06 on a copied run folder: what an Azure ML training job executes."""
    import shutil

    from cascade_defect.runner import ChapterFailed, run_chapters

    root = _project_root()
    config = load_config(args.profile, work_dir=args.work_dir)
    source = Path(args.data)
    needed = [source / "02_split", source / "03_annotation"]
    missing = [str(p) for p in needed if not p.is_dir()]
    if missing:
        print(
            f"error: --data must hold a run's 02_split/ and 03_annotation/ folders; missing {missing}",
            file=sys.stderr,
        )
        return 2
    for folder in needed:
        target = config.paths.run_dir / folder.name
        if target.resolve() != folder.resolve():
            shutil.copytree(folder, target, dirs_exist_ok=True)
    try:
        timings = run_chapters(
            root, config, only=["05", "06"], output_dir=config.paths.run_dir / "notebooks"
        )
    except ChapterFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for timing in timings:
        print(f"  {timing.notebook:<32} {timing.seconds:8.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade-defect",
        description="Few-shot MLLM pseudo-labelling of surface defects and YOLOv8 on the labels.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the book's notebooks in order, then render the book")
    run.add_argument(
        "--profile", choices=sorted(PROFILES), default="quick", help="run size (default: quick)"
    )
    run.add_argument("--data-dir", help="NEU-DET folder (default: $CASCADE_DATA_DIR)")
    run.add_argument(
        "--no-defect-class",
        metavar="NAME",
        help="the dataset's defect-free class, labelled no_defect: a class name (e.g. Free for "
        "MT_Free), 'auto' (a class whose images carry no boxes or mask pixels) or 'none' "
        "(default: $CASCADE_NO_DEFECT_CLASS, else auto)",
    )
    run.add_argument(
        "--work-dir", help="artefact folder (default: $CASCADE_WORK_DIR or <project>/data)"
    )
    run.add_argument("--storage", default="local", help="'local' or an abfss:// URL")
    run.add_argument(
        "--only", nargs="+", metavar="CHAPTER", help="chapter numbers to run, e.g. 01 02"
    )
    run.add_argument(
        "--output-dir",
        help="where executed notebooks go (default: notebooks/ for the quick profile, "
        "<work_dir>/runs/<profile>/notebooks otherwise); a folder other than notebooks/ gets "
        "the run's own book (its _findings.md, _quarto.yml, and _book/ or _preview/)",
    )
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="extra papermill parameter for every chapter (JSON values allowed)",
    )
    run.add_argument("--no-render", action="store_true", help="skip rendering")
    run.set_defaults(func=cmd_run)

    train = sub.add_parser(
        "train",
        help="train and compare YOLOv8n (chapters 05 and 06) on a run folder, e.g. inside an Azure ML job",
    )
    train.add_argument(
        "--profile", choices=sorted(PROFILES), default="full", help="run size (default: full)"
    )
    train.add_argument(
        "--data", required=True, help="a run folder holding 02_split/ and 03_annotation/"
    )
    train.add_argument(
        "--work-dir", help="artefact folder (default: $CASCADE_WORK_DIR or <project>/data)"
    )
    train.set_defaults(func=cmd_train)

    render = sub.add_parser(
        "render", help="render the book (Quarto if installed, else an HTML preview)"
    )
    render.add_argument(
        "--preview", action="store_true", help="build the nbconvert preview even if Quarto exists"
    )
    render.add_argument(
        "--notebooks-dir",
        help="render the book of a run's executed notebooks in this folder (written into "
        "<folder>/_book or <folder>/_preview) instead of the record's",
    )
    render.set_defaults(func=cmd_render)

    annotate = sub.add_parser(
        "annotate",
        help="label your own images from a few labelled seeds (YOLO labels, COCO JSON, review CSV)",
        description=(
            "Label every image in --images from the labelled examples in --seeds. Resumable: answers are "
            "kept in OUT/predictions.jsonl and a re-run sends no request already answered. API credentials "
            "come only from the environment (AZURE_OPENAI_ENDPOINT/AZURE_OPENAI_API_KEY/OPENAI_API_VERSION, "
            "or OPENAI_API_KEY and optionally OPENAI_BASE_URL)."
        ),
    )
    annotate.add_argument(
        "--images",
        required=True,
        help="folder of unlabelled images (searched recursively; png, jpg, bmp)",
    )
    annotate.add_argument(
        "--seeds",
        required=True,
        help="labelled examples: one subfolder per class, or Pascal VOC XMLs, or YOLO images/+labels/+classes.txt",
    )
    annotate.add_argument("--out", required=True, help="output folder (created; reused to resume)")
    add_annotator_option_flags(annotate)
    annotate.add_argument(
        "--weights",
        help="YOLOv8n weights for the offline annotator (default: $CASCADE_YOLO_WEIGHTS or yolov8n.pt)",
    )
    annotate.add_argument(
        "--no-defect-gate",
        dest="defect_gate",
        action="store_false",
        help=(
            "let the offline annotator decide defect or not alone (by default, where the seeds "
            "include defect-free images, the seed detector's crops join its answer)"
        ),
    )
    annotate.add_argument(
        "--no-class-aware-detector",
        dest="class_aware_detector",
        action="store_false",
        help=(
            "with the defect gate, judge the seed detector's crops alone (by default a second, "
            "class-aware seed detector trains on the same seeds and joins them)"
        ),
    )
    annotate.add_argument(
        "--class-aware-members",
        type=int,
        default=1,
        metavar="N",
        help=(
            "with the defect gate, train N class-aware seed detectors (the next random seeds) "
            "and fuse their boxes before they join the crops (default 1)"
        ),
    )
    annotate.add_argument(
        "--class-aware-flips",
        nargs="+",
        choices=("horizontal", "vertical"),
        default=[],
        metavar="FLIP",
        help=(
            "with the defect gate, the class-aware detectors also propose on the pool flipped "
            "(horizontal, vertical; both: 'horizontal vertical'), each view fused with the plain "
            "one (default: the plain view only)"
        ),
    )
    annotate.add_argument(
        "--defect-recall",
        type=float,
        metavar="SHARE",
        help=(
            "with the defect gate, flag images until its own probabilities expect this share of "
            "the defects found (e.g. 0.85; default: P(defect) 0.5); the summary says how many "
            "images that flags"
        ),
    )
    annotate.set_defaults(func=cmd_annotate)

    from cascade_defect.annotate.review_import import REVIEW_FORMATS

    review = sub.add_parser(
        "review", help="bring a person's corrections of the audit's review export into a run"
    )
    review_sub = review.add_subparsers(dest="review_command", required=True)
    review_import = review_sub.add_parser(
        "import",
        help="import a corrected review file as the run's 'reviewed' label source",
        description=(
            "Read a corrected review export (the audit's disagreements.csv, a Label Studio JSON "
            "export, or a COCO file), check every row against the run, and write the 'reviewed' "
            "label source under RUN/04_audit/reviewed/. Nothing is written if any row is wrong; "
            "importing the same file again changes nothing."
        ),
    )
    review_import.add_argument("file", help="the corrected review file")
    review_import.add_argument(
        "--format",
        choices=list(REVIEW_FORMATS),
        default=None,
        help="default: csv by extension, else label-studio or coco by the JSON's shape",
    )
    review_import.add_argument(
        "--run-dir", required=True, help="the run folder <work>/runs/<profile> that was audited"
    )
    review_import.set_defaults(func=cmd_review_import)

    download = sub.add_parser(
        "download", help="download NEU-DET from Kaggle (needs Kaggle credentials)"
    )
    download.add_argument(
        "--dest", default="data/raw", help="folder to unpack into (default: data/raw)"
    )
    download.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
