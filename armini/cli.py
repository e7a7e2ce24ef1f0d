"""What armini's commands (`python -m armini`, `python -m armini.bench`) share: flags that are
checked the moment they are parsed, and errors a person can read.

    def main(argv=None) -> int:
        parser = build_parser()                      # flags typed with positive_int, device_name, ...
        args = parser.parse_args(argv)               # a mistyped flag: argparse's usage + error, exit 2
        return cli.run(lambda: command(args), parser.prog, args.debug)

Every other failure ends as one line on stderr, `python -m armini: error: <what is wrong and how to
fix it>`, and exit status 1. Ctrl-C prints `... interrupted` and exits 130 (128 + SIGINT, the shell's
convention). The Python traceback is shown only with --debug or ARMINI_DEBUG=1 (for a bug report).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import os
import sys
import traceback
import warnings
from pathlib import Path

import torch

import armini

__all__ = ["run", "add_debug_flag", "positive_int", "non_negative_int", "positive_float", "non_negative_float",
           "device_name", "key_value", "check_new_file", "build_model"]

# Errors that describe bad input or a bad state (a file, a device, a setting): their message is the
# whole story. Anything else (KeyError, AttributeError, ...) is a bug in armini, and we say so.
USER_ERRORS = (ValueError, OSError, RuntimeError, FloatingPointError, MemoryError)


# ----------------------------------------------------------------------------- errors


def debug_wanted(flag: bool = False) -> bool:
    """--debug given, or ARMINI_DEBUG set to a true value (1, true, yes, on)."""
    return flag or armini.env_flag("ARMINI_DEBUG")


def one_line(error: BaseException) -> str:
    """An exception as one line: its message with line breaks folded, or its type if it has none."""
    message = " ".join(str(error).split())
    if not message or not isinstance(error, USER_ERRORS):
        return f"{type(error).__name__}: {message}" if message else type(error).__name__
    return message


def run(command, prog: str, debug: bool = False) -> int:
    """Call command(); return the exit status: 0, 1 after an error, 130 after Ctrl-C, 141 after a closed pipe.

    An error is printed as one line (`prog: error: message`) on stderr; the traceback only in debug mode."""
    debug = debug_wanted(debug)
    try:
        command()
    except BrokenPipeError:  # the reader went away (python -m armini list | head): stop quietly
        with contextlib.suppress(Exception):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        return 141  # 128 + SIGPIPE, what the shell reports for a program stopped this way
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        if not isinstance(e, USER_ERRORS) and not debug:
            print(f"{prog}: this looks like a bug in armini: run again with --debug and report the traceback",
                  file=sys.stderr)
        return 1
    return 0


def add_debug_flag(parser: argparse.ArgumentParser, default=False):
    """--debug: show the Python traceback of an error (also ARMINI_DEBUG=1).

    default=argparse.SUPPRESS on a subcommand keeps the main parser's value unless the flag is given there."""
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the Python traceback of an error (or set ARMINI_DEBUG=1)")


# ----------------------------------------------------------------------------- flag types
# argparse calls these on the text of a flag; ArgumentTypeError becomes "argument --flag: message", exit 2.


def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def device_name(text: str) -> str:
    """A device that exists on this machine: cpu, cuda, cuda:1, mps."""
    try:
        armini.device(text)
    except RuntimeError as e:
        if "available" in str(e):
            raise argparse.ArgumentTypeError(f"{text!r} is not available on this machine; use --device cpu, "
                                             "or leave --device out to take the best one there is")
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda, cuda:N or mps")
    return text


# --amp (python -m armini train, bench speed) -> armini.train.fit's amp=: auto, mixed precision on CUDA only;
# on, also bfloat16 on a CPU that does bfloat16 in hardware; off, float32 everywhere
AMP = {"auto": None, "on": True, "off": False}


def key_value(text: str) -> tuple:
    """'key=value' -> (key, Python value): 'channels=32' gives ("channels", 32), 'name=abc' ("name", "abc")."""
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as channels=32, got {text!r}")
    for parse in (ast.literal_eval, json.loads):  # Python literals (True, 1e-3, (3, 5)), then JSON (true, null)
        try:
            return key, parse(value)
        except (ValueError, SyntaxError):
            pass
    return key, value  # keep it as a string


# ----------------------------------------------------------------------------- checks before the work


def check_new_file(path, overwrite: bool, flag: str) -> Path:
    """Refuse, before any work, an output file that could not be written or would replace one silently."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder: give a file name inside it, e.g. {path / 'bench.json'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{flag} {path}: the folder {path.parent} does not exist; create it first "
                                f"(mkdir -p {path.parent}) or choose another path")
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"{flag} {path}: cannot write in the folder {path.parent}; choose another path")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{flag} {path} already exists: add --overwrite to replace it, or choose another path")
    return path


def _settings(options: dict, shape=None, levels=None) -> str:
    """'channels=0, n_blocks=1 on (1, 8, 8) images with 17 levels', for error messages."""
    text = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "its default settings"
    if shape is not None:
        text += f" on {tuple(shape)} images" + (f" with {levels} levels" if levels is not None else "")
    return text


def model_options(name: str, shape) -> dict:
    """The options a model takes (its config fields other than shape and levels), with their defaults."""
    from armini.models import MODELS
    from armini.train import model_kwargs

    return {k: v for k, v in model_kwargs(MODELS[name](shape=shape)).items() if k not in ("shape", "levels")}


def build_model(name: str, options: dict, shape, levels):
    """MODELS[name](shape, levels, **options), run once on two blank images, or a clear error: an unknown
    option lists the ones the model takes; a setting it cannot run with (channels=0) fails now, not
    after loading the data and training. The trial run leaves the random generators as they were."""
    from armini.models import MODELS

    settings = _settings(options, shape, levels)
    with warnings.catch_warnings(record=True) as caught:  # e.g. torch's "zero-element tensor": the error says more
        try:
            model = MODELS[name](shape=shape, levels=levels, **options)
        except TypeError as e:  # an unexpected keyword argument, or a value of the wrong type
            known = model_options(name, shape)
            unknown = [k for k in options if k not in known]
            if unknown:
                takes = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "no options"
                raise ValueError(f"{name} has no option {', '.join(unknown)}; it takes {takes}") from e
            raise ValueError(f"cannot build {name} with {settings}: {e}") from e
        except ValueError as e:
            raise ValueError(f"cannot build {name} with {settings}: {e}") from e
        _try_once(model, name, settings)
    for w in caught:  # the model works: show what it warned about
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return model


def _try_once(model, name: str, settings: str):
    x = torch.zeros((2,) + tuple(model.shape), dtype=torch.long)  # (B, C, H, W) blank images
    y = torch.zeros(2, dtype=torch.long) if model.num_classes is not None else None
    was_training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()  # no dropout: the same weights and random numbers as without this check
            model.loss(x, y)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{name} cannot run with {settings}: {' '.join(str(e).split())}") from e
    finally:
        model.train(was_training)
