"""Command line: ``python -m src [--debug] COMMAND ...`` (``python -m src COMMAND --help``).

A failing command says what went wrong in one line (exit status 1); ``--debug`` (anywhere on the line) or
``LANDMARK_DEBUG=1`` shows the traceback instead. Progress bars become plain lines when the output is not a
terminal (:mod:`src.progress`).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .helpers import quiet_torchscript
from .progress import log_friendly_stderr

# command -> (module, function adding its arguments, function running it, one-line help)
COMMANDS = {
    "data": ("src.data_cli", "add_data_arguments", "data_main",
             "find or download the photos, check them, print mean/std"),
    "train": ("src.train_cli", "add_train_arguments", "train_main", "train a model (scratch CNN or transfer)"),
    "export": ("src.export", "add_export_arguments", "export_main",
               "export a checkpoint to TorchScript (and ONNX), with its landmark index and threshold"),
    "enroll": ("src.enroll", "add_enroll_arguments", "enroll_main",
               "add landmarks to a model without training (from photos), list or remove them"),
    "calibrate": ("src.calibrate", "add_calibrate_arguments", "calibrate_main",
                  "build an exported model's landmark index and calibrate its 'no known landmark' threshold"),
    "predict": ("src.predict", "add_predict_arguments", "predict_main", "top-k landmarks and location for photos"),
    "tag": ("src.tagging", "add_tag_arguments", "tag_main", "tag every photo in a folder into a CSV"),
    "evaluate": ("src.evaluation", "add_evaluate_arguments", "evaluate_main",
                 "accuracy of an exported model on the labelled photos of a data set's test/ folder"),
    "report": ("src.report", "add_report_arguments", "report_main",
               "one HTML page of a tagged library: map, gallery by landmark, counts"),
    "cv": ("src.crossval", "add_cv_arguments", "cv_main",
           "cross-validate models and ensembles on the training photos (choose one without the test set)"),
    "serve": ("src.serve", "add_serve_arguments", "serve_main", "HTTP service: recognise landmarks in uploaded photos"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src", description="Landmark Tagger")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one line (also: LANDMARK_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, add_args, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the command being run imports its module: one command never breaks (or slows) another.
        if command is None or name == command:
            getattr(importlib.import_module(module), add_args)(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or bool(os.environ.get("LANDMARK_DEBUG"))
    argv = [a for a in argv if a != "--debug"]  # accepted before or after the command
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    module, _, run, _ = COMMANDS[args.command]
    with quiet_torchscript(), log_friendly_stderr():
        try:
            return int(getattr(importlib.import_module(module), run)(args) or 0)
        except KeyboardInterrupt:
            print("Interrupted.", file=sys.stderr)
            return 130
        except Exception as exc:  # a user sees one line, not a traceback; --debug or LANDMARK_DEBUG=1 shows it
            if debug:
                raise
            print(f"error: {one_line_error(exc)}", file=sys.stderr)
            return 1


def one_line_error(exc: BaseException, limit: int = 500) -> str:
    """What a user sees of an exception: one line, at most ``limit`` characters (the head of a long message)."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror and type(exc).__str__ is OSError.__str__:
        text = f"{exc.filename}: {exc.strerror}"  # not "[Errno 13] Permission denied: '/x/y'"
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
