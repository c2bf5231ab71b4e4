"""Run config files for `minigpt train --config run.toml|run.yaml`.

A config file holds the same fields as the command line's flags, under the flags' argparse names
(`batch_size`, `max_iters`, ...; `batch-size` is accepted too). `ConfigFileParser` reads the file
while parsing, turns its values into the parser's defaults through each flag's own type check, and
then parses the command line as usual, so a flag given there overrides the file. Unknown keys are
an error that names the key and the closest flag names.

After planning, `resolved_config` collects every effective value of the run (the preset's model
size, the planned step count, the clamped warmup) and `write_config` saves it as TOML, so
`minigpt train --config out/demo/run.toml` trains the same run again.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from .. import atomic

__all__ = ["CONFIG_NAME", "ConfigFileParser", "load_config", "resolved_config", "to_toml", "write_config"]

CONFIG_NAME = "run.toml"  # the resolved config in the output folder
# dests that are not run settings: never read from a file, never written
_NOT_SETTINGS = {"help", "config", "func", "command", "_parser"}
# read from a file, but not written to run.toml: re-running a config starts the run again
_NOT_WRITTEN = {"resume", "epochs"}  # epochs became max_iters
# flags whose TrainConfig field has another name
_TRAIN_FIELD = {"patience": "early_stopping_patience", "max_time": "max_time_s"}


def load_config(path: str | Path) -> dict[str, Any]:
    """The top-level table of a .toml, .yaml or .yml file, keys with `-` spelled `_`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ValueError(f"config file {path}: use a .toml, .yaml or .yml file")
    except (tomllib.TOMLDecodeError, ImportError) as e:
        raise ValueError(f"config file {path}: {e}") from None
    except Exception as e:  # yaml.YAMLError without importing yaml at module level
        if type(e).__module__.startswith("yaml"):
            raise ValueError(f"config file {path}: {e}") from None
        raise
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected key = value pairs at the top level")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _settings(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in _NOT_SETTINGS and a.option_strings}


def _convert(action: argparse.Action, key: str, value: Any) -> Any:
    """A file value checked like the same flag on the command line."""
    if action.nargs == 0:  # store_true flags
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{key} must be a number or a string, got {value!r}")
    if action.type is not None:
        try:
            value = action.type(str(value))  # type: ignore[operator]
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{key}: {e}") from None
    elif not isinstance(value, str):
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def file_defaults(parser: argparse.ArgumentParser, path: str | Path) -> dict[str, Any]:
    """The file's values as parser defaults; raises ValueError for unknown keys or bad values."""
    actions = _settings(parser)
    values = load_config(path)
    out = {}
    for key, value in values.items():
        if key not in actions:
            close = difflib.get_close_matches(key, list(actions), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; known keys: {', '.join(sorted(actions))}"
            raise ValueError(f"config file {path}: unknown key {key!r}{hint}")
        try:
            out[key] = _convert(actions[key], key, value)
        except ValueError as e:
            raise ValueError(f"config file {path}: {e}") from None
    return out


def _config_path(args: list[str]) -> str | None:
    path = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.partition("=")[2]
    return path


class ConfigFileParser(argparse.ArgumentParser):
    """An ArgumentParser whose `--config FILE` supplies defaults: command-line flags still win.

    Without a `config` flag it is a plain ArgumentParser (used as the class of every subcommand).
    """

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        import sys

        argv = list(sys.argv[1:] if args is None else args)
        path = _config_path(argv) if any(a.dest == "config" for a in self._actions) else None
        if path is None:
            return super().parse_known_args(argv, namespace)
        try:
            defaults = file_defaults(self, path)
        except (ValueError, FileNotFoundError) as e:
            self.error(str(e))
        saved = {a.dest: a.default for a in self._actions if a.dest in defaults}
        self.set_defaults(**defaults)
        try:
            return super().parse_known_args(argv, namespace)
        finally:
            self.set_defaults(**saved)


def resolved_config(args: argparse.Namespace, train_config: Any, model: Any, block_size: int) -> dict[str, Any]:
    """Every effective setting of a `minigpt train` run under the flags' names (None values left out).

    Model sizes come from the built model, step counts from the planned TrainConfig (so a run
    planned from `--epochs` or a time budget re-runs with the same `max_iters`).
    """
    skip = _NOT_SETTINGS | _NOT_WRITTEN
    out = {k: v for k, v in vars(args).items() if k not in skip and not k.startswith("_")}
    train = train_config.to_dict()
    for key in list(out):
        field = _TRAIN_FIELD.get(key, key)
        if field in train:
            out[key] = train[field]
    out["min_lr"] = train_config.min_lr_value
    out["quiet"] = bool(getattr(args, "quiet", False))
    out["block_size"] = block_size
    config = getattr(model, "config", None)
    model_fields = {"transformer": ("n_layer", "n_head", "n_embd", "d_ff", "dropout", "position"),
                    "mlp": ("context", "n_embd", "d_ff"), "bigram": ()}[args.model_type]
    for key in ("n_layer", "n_head", "n_embd", "d_ff", "dropout", "position", "context"):
        if key not in model_fields:
            out.pop(key, None)
            continue
        field = "hidden" if args.model_type == "mlp" and key == "d_ff" else key
        out[key] = getattr(config, field, None)  # d_ff None (= 4 * n_embd) stays out, as typed
    return {k: v for k, v in out.items() if v is not None}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                          "inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are valid TOML basic-string escapes
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to TOML")


def to_toml(values: dict[str, Any], header: str = "") -> str:
    """Flat key = value TOML (what tomllib reads back to the same values)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def write_config(out_dir: str | Path, values: dict[str, Any]) -> Path:
    """Write `out_dir/run.toml`, a config that `minigpt train --config` re-runs."""
    path = Path(out_dir) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"written by minigpt train: every setting of the run in {out_dir}\n"
              f"re-run: minigpt train --config {path} (add --resume to continue it)")
    atomic.atomic_write_bytes(path, to_toml(values, header).encode("utf-8"))
    return path
