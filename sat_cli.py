"""The command line of the stages: a reader of the paper may skip all of it; nothing here is an algorithm.

One-line errors (`UserError`, printed by `run_cli` as `error: ...` with exit code 2, never a traceback), number
checks, and settings declared once: a dataclass field (`setting`) carries help, unit, range and accepted names, and
the command line (`add_settings`) and its checks (`check_settings`) are generated from it. The stages import it as
`import sat_cli`; the `sat_` prefix keeps a user's own `cli.py` from shadowing it.
"""
import argparse
import dataclasses
import math
import os
import shlex
import sys
import tempfile


class UserError(Exception):
    """A mistake in the user's input: printed as one line `error: ...` and exit code 2, never a traceback."""


def run_cli(main, argv=None, interrupted="", resume_flag=""):
    """Call main(argv); turn a UserError into one line on stderr and exit code 2, and Ctrl-C into one line
    (`interrupted`: what was kept) with the command that continues, `resume_flag` added to this one, exit code 130."""
    try:
        return main(argv)
    except UserError as e:
        msg = str(e).strip()
        if "Traceback" in msg:   # raised in a DataLoader worker: torch re-raises it with the worker's traceback
            msg = msg.splitlines()[-1].split("UserError: ", 1)[-1]
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass
    import sat_processes   # here: it imports this module
    if sat_processes.world()[0] == 0:   # under torchrun each process gets Ctrl-C: one line, from rank 0
        print(f"interrupted: {interrupted or 'nothing was saved'}; continue with: {again(resume_flag, argv)}",
              file=sys.stderr, flush=True)
    sys.exit(130)


def again(flag="", argv=None) -> str:
    """The command line that ran this stage, with `flag` added if it is not there and --force left out
    (`python 03_adv_train.py --resume`): under torchrun, the same torchrun command; under make, `make` too (make sets
    MAKELEVEL for the commands it runs). `python` is this interpreter's path unless `python` finds it."""
    import shutil

    import sat_processes   # here: it imports this module
    args = list(sys.argv[1:] if argv is None else argv)
    if flag:
        args = [a for a in args if a != "--force"] + ([flag] if flag not in args else [])
    stage = shlex.join([sys.argv[0]] + args)
    if sat_processes.world()[1] > 1:
        return f"the same torchrun command, ending in {stage}"
    python = "python" if shutil.which("python") == sys.executable else shlex.quote(os.path.relpath(sys.executable))
    return f"{python} {stage}" + (" (or the make command again)" if os.environ.get("MAKELEVEL") else "")


def pixels(flag: str, eps: bool = True):
    """The argparse type of a radius (eps=True) or a step in pixel units, the stages' unit (8 means 8/255): '8' and
    '8/255' give 8.0. A radius in (0, 1) without '/255' is refused with the unit hint: every preset's eps is at
    least 1 (4/255 for ImageNet), so 0.031 is 8/255 written in [0, 1] units, the usual mistake; '0.5/255' says a
    small radius is meant. A step below 1 is a real one (ImageNet's PGD-20: 0.5) and passes."""
    def parse(text: str) -> float:
        number, slash, den = text.strip().partition("/")
        try:
            value, den_value = float(number), float(den) if slash else 255.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; {flag} is in pixel units (8 or 8/255 means 8/255)")
        if den_value != 255:
            raise argparse.ArgumentTypeError(f"{text!r}: {flag} is in 1/255 units; write {value:g}/255, or the number alone")
        if eps and not slash and 0 < value < 1:
            near = round(value * 255)
            guess = near if abs(value * 255 - near) < 0.15 else round(value * 255, 1)
            raise argparse.ArgumentTypeError(f"eps is in 1/255 units: did you mean {guess:g}? "
                                             f"({text} would be {text}/255; write {text}/255 if that is meant)")
        return value
    parse.__name__ = "pixels"
    return parse


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad command line (unknown flag, 'abc' for a number) is one `error: ...` line
    and exit code 2 through run_cli, like every other bad input, instead of a usage block."""

    def error(self, message):
        raise UserError(message)


def check_number(flag: str, value, lo=-math.inf, hi=math.inf, lo_open=False, hint=""):
    """One UserError line unless `value` is a finite number in [lo, hi] ((lo, hi] if lo_open).
    NaN and infinity never pass: every comparison with NaN is False, so a plain `value > 0` lets it through."""
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        span = f"{'(' if lo_open else '['}{lo:g}, {hi:.10g}{')' if math.isinf(hi) else ']'}"
        raise UserError(f"{flag} must be a finite number in {span}{hint}, got {value}")
    return value


# ----------------------------------------------------------------------------------------------------
# Settings declared once: a dataclass field carries help, unit, range and accepted names; the command line
# (add_settings) and its checks (check_settings) are generated from it

def setting(default, help: str, unit: str = "", range: tuple = None, lo_open: bool = False, hint: str = "",
            choices=None, noun: str = ""):
    """A dataclass field for one setting: its default and what --help and the checks need.
    range=(lo, hi): accepted numbers (lo excluded if lo_open; a list's elements are checked each), hint: added to
    the range error; choices: the accepted names, noun: how their error names the setting (default: its flag)."""
    meta = dict(help=help, unit=unit, range=range, lo_open=lo_open, hint=hint, noun=noun,
                choices=tuple(choices) if choices is not None else None)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_settings(cls, values: dict) -> dict:
    """One UserError line for the first value (name -> value; a list's elements each) outside the range or
    the choices its field of the dataclass `cls` declares. Returns `values`."""
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    for name, value in values.items():
        m = meta.get(name, {})
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if m.get("choices") is not None and v not in m["choices"]:
                raise UserError(f"unknown {m['noun'] or flag_of(name)} {v!r}; accepted: {', '.join(m['choices'])}")
            if m.get("range") is not None:
                check_number(flag_of(name), v, *m["range"], m["lo_open"], m["hint"])
    return values


def _shown(value) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value) or "''"


def add_settings(parser, cls, presets: dict = None, skip=(), many=(), defaults: dict = None):
    """One flag --a-name per field a_name of the dataclass `cls` that has help (see setting()), except those
    in `skip`: the type from the default (a bool is a switch, a list takes several values, so do the names in
    `many`), the help from the field with its unit, range, accepted names and default: each preset's where
    `presets` (preset name -> settings) differ, the text of `defaults` (name -> text) where given. Every flag
    defaults to None, "not given", so that the preset's value applies; check_settings checks the values."""
    for f in dataclasses.fields(cls):
        m = f.metadata
        if f.name in skip or "help" not in m:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        words = [m["help"]] + ([f"unit: {m['unit']}"] if m["unit"] else [])
        if m["range"] is not None:
            lo, hi = m["range"]
            words.append(f"range {'(' if m['lo_open'] else '['}{lo:g}, {hi:.10g}{')' if math.isinf(hi) else ']'}")
        if m["choices"] is not None:
            words.append(f"one of {', '.join(m['choices'])}")
        per_preset = {p: s.get(f.name, default) for p, s in (presets or {}).items()}
        if (defaults or {}).get(f.name):
            words.append(f"default: {defaults[f.name]}")
        elif len({repr(v) for v in per_preset.values()}) > 1:
            words.append("default: the preset's: " + ", ".join(f"{p} {_shown(v)}" for p, v in per_preset.items()))
        else:
            words.append(f"default: {_shown(default)}")
        kw = dict(default=None, help="; ".join(words).replace("%", "%%"))
        if isinstance(default, bool):
            kw["action"] = "store_true"
        elif isinstance(default, list) or f.name in many:
            element = type(default[0]) if isinstance(default, list) and default else type(default)
            kw.update(type=element, nargs="*" if isinstance(default, list) else "+")
        elif m["unit"].startswith("pixels/255"):   # a radius or a step: 8 and 8/255 mean 8/255, 0.031 is refused
            kw["type"] = pixels(flag_of(f.name), eps=f.name == "eps")
        else:
            kw["type"] = type(default)
        parser.add_argument(flag_of(f.name), **kw)
    return parser


def check_out_dir(path: str, flag: str = "--out") -> str:
    """Create the output folder if needed and check that a file can be written there; one UserError line
    otherwise (the path is a file, lies below a file, or is on a read-only or full disk)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as e:
        raise UserError(f"{flag} {path!r} cannot be used as an output folder ({e.strerror or e}); give a writable folder")
    return path
