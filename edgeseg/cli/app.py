"""The ``edgeseg`` app: registers each command group's commands and maps errors to exit codes; the
commands live in one module per group (info, convert, evaluation, measure, run, training, deploy), each a
thin layer over the Python API.

Heavy packages (PyTorch, onnx) are imported inside the commands that need them, so the device
side (``run``, ``bench`` on ONNX) starts without PyTorch installed.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Annotated

import typer

from edgeseg import __version__
from edgeseg.cli import convert, deploy, evaluation, info, measure, run, training
from edgeseg.errors import EdgesegError
from edgeseg.redact import redact

app = typer.Typer(
    name="edgeseg",
    help="SegNet-DSC pet segmentation from a PyTorch checkpoint to an edge device.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"edgeseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    if debug:
        os.environ["EDGESEG_DEBUG"] = "1"


COMMANDS = {  # in the order `edgeseg --help` lists them
    "info": info.info, "export": convert.export, "check": convert.check, "eval": evaluation.eval_, "run": run.run,
    "quantize": convert.quantize, "bench": measure.bench, "build": convert.build, "doctor": measure.doctor,
    "train": training.train, "soup": training.soup, "composites": training.composites, "deepstream": deploy.deepstream,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)
app.add_typer(deploy.triton, name="triton")


# What the device-side install (pip install .) leaves out, and how to add it.
OPTIONAL_MODULES = {
    "torch": "PyTorch (export, train, checkpoints): pip install torch --index-url https://download.pytorch.org/whl/cpu",
    "onnx": "onnx (export, quantize): pip install 'edgeseg[export]', or pip install onnx on a device",
    "onnxsim": "onnxsim (export): pip install 'edgeseg[export]'",
}


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {redact(str(message))}\n"


def _exit_code_and_message(e: BaseException) -> tuple[int, str]:
    """1 for bad input and missing extras (a one-line fix), 3 only for a bug in edgeseg."""
    if isinstance(e, EdgesegError):
        return 1, str(e)
    if isinstance(e, ModuleNotFoundError) and (fix := OPTIONAL_MODULES.get((e.name or "").split(".")[0])):
        return 1, f"this command needs {fix}"
    return 3, f"internal error {type(e).__name__}: {e} (rerun with --debug for the traceback)"


def command():
    """The click command behind ``app``, with help that names values as people write them (MODELS...,
    PATH, INTEGER, nothing beside a flag) where typer would print Python types (``{models}``,
    ``<list[str]>``, ``<bool>``). Duck-typed: typer vendors its own copy of click."""
    root = typer.main.get_command(app)

    def every(cmd):
        yield cmd
        for sub in getattr(cmd, "commands", {}).values():
            yield from every(sub)

    for sub in every(root):
        sub.get_help_option = _flag_help(sub.get_help_option)
        for param in sub.params:
            if param.metavar is not None:
                continue
            if param.param_type_name == "argument":
                param.metavar = param.name.upper()
                param.display_type_rich = lambda ctx: None  # the name column already says it
            elif getattr(param, "is_flag", False):
                param.metavar = ""
            else:
                param.metavar = _value_name(param)
    return root


def _flag_help(make):
    """--help is made per context; shown like the other flags, with no value name."""
    def get_help_option(ctx):
        option = make(ctx)
        if option is not None:
            option.metavar = ""
        return option
    return get_help_option


def _value_name(param) -> str:
    """INTEGER, NUMBER, PATH or TEXT for an option: from typer's type descriptor (typer 0.29+, Python
    3.11+) or from click's param type (older typer, which Python 3.10 gets)."""
    desc = getattr(param, "type_descriptor", None)
    if desc is not None:
        if desc.is_path:
            return "PATH"
        return {int: "INTEGER", float: "NUMBER"}.get(desc.annotation, "TEXT")
    return {"integer": "INTEGER", "float": "NUMBER", "path": "PATH"}.get(param.type.name, "TEXT")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 1, bugs exit code 3; --debug
    prints the traceback before that line and keeps the exit code."""
    debug = "--debug" in sys.argv[1:] or os.environ.get("EDGESEG_DEBUG") == "1"
    if not debug:  # OpenCV's own [ WARN ] lines (FFmpeg, V4L2) would precede edgeseg's one-line errors
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        warnings.formatwarning = _one_line_warning  # not "file.py:123: UserWarning: ..."
    try:
        command()(prog_name="edgeseg")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        code, message = _exit_code_and_message(e)
        if debug:
            traceback.print_exc()
        print(f"error: {redact(message)}", file=sys.stderr)
        sys.exit(code)
