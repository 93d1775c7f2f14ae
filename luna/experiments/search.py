"""What a sweep searches: a search file (``configs/search/*.yaml``) read and checked up front.

A search file maps ``luna.fit`` options to ranges::

    metric: val/cpm          # any metric luna logs
    direction: maximize
    pruner: median           # median, hyperband or none
    parameters:
      model.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      data.negatives_per_positive: {type: int, low: 1, high: 4}
      model.augmentation.rotate: {type: categorical, choices: [false, true]}
      model.augmentation.noise_hu: {type: float, low: 0, high: 50, when: {model.augmentation.rotate: true}}

Every mistake a file can hold is found before the first trial trains, with the file and the
parameter named: a metric no run logs (``val/cmp``), a ``when`` value the parameter it names
cannot take (``"true"`` for a boolean choice), ``log: "no"``, bounds that are not numbers.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KINDS = ("float", "int", "categorical")
STAGES = ("train", "val", "test")
# what a luna run logs per stage (luna.metrics.stage); per-class metrics are recall/<class>, loss/<class>
LOGGED = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "auroc",
    "average_precision",
    "calibration_error",
    "loss",
    "loss_negative",
    "loss_positive",
    "f1_best",
    "f1_best_threshold",
    "cpm",
    "samples",
    "nonfinite",
    "dice",
    "voxel_precision",
    "voxel_recall",
    "nodule_recall",
    "candidates_per_scan",
)
PER_CLASS = ("recall/", "loss/")


class SearchError(ValueError):
    """A search file that cannot be used; the message names the file and the parameter."""


@dataclass(frozen=True)
class Parameter:
    """One searched option: a ``luna.fit`` key and its range.

    ``when`` makes it conditional: it is searched only in trials whose earlier parameters have
    these values (``{"model.augmentation.rotate": true}``), and left at the config's value otherwise.
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: dict = field(default_factory=dict)

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def example(self) -> Any:
        """A value the parameter takes (its first choice or its low end, with its own type)."""
        if self.kind == "categorical":
            return self.choices[0]
        return int(self.low) if self.kind == "int" else self.low

    def admits(self, value: Any) -> bool:
        """Whether a trial can give this parameter ``value`` (type included: ``"true"`` is not ``true``)."""
        if self.kind == "categorical":
            return any(type(value) is type(choice) and value == choice for choice in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high


@dataclass(frozen=True)
class SearchSpace:
    """What a sweep searches and optimises (a search file)."""

    parameters: tuple[Parameter, ...]
    metric: str = "val/cpm"
    direction: str = "maximize"
    pruner: str = "median"

    def suggest(self, trial) -> dict[str, Any]:
        """The trial's values, conditional parameters only where their condition holds."""
        values: dict[str, Any] = {}
        for parameter in self.parameters:
            if all(values.get(key) == wanted for key, wanted in parameter.when.items()):
                values[parameter.key] = parameter.suggest(trial)
        return values


def check_metric(metric: str) -> str | None:
    """Why ``metric`` is not one luna logs (with the likely one), or None."""
    stage, _, name = metric.partition("/")
    if stage in STAGES and (name in LOGGED or (name.startswith(PER_CLASS) and name.count("/") == 1)):
        return None
    known = [f"{s}/{n}" for s in STAGES for n in LOGGED]
    close = difflib.get_close_matches(metric, known, n=1, cutoff=0.6)
    hint = (
        f": did you mean {close[0]}?"
        if close
        else f"; luna logs <stage>/<name> with stage {', '.join(STAGES)}"
    )
    return f"metric={metric!r} is not logged by luna{hint}"


def read_search(path: str | Path) -> SearchSpace:
    """A search file (see ``configs/search/recipe.yaml``).

    Raises:
        FileNotFoundError, SearchError: naming the file and the parameter that is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search file {path} does not exist")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SearchError(f"{path}: not YAML ({str(error).splitlines()[0]})") from None
    if (
        not isinstance(content, dict)
        or not isinstance(content.get("parameters"), dict)
        or not content["parameters"]
    ):
        raise SearchError(
            f"{path}: expected a mapping with 'parameters' (option: range) and optionally 'metric', "
            "'direction' and 'pruner'"
        )
    unknown = sorted(set(content) - {"parameters", "metric", "direction", "pruner"})
    if unknown:
        raise SearchError(
            f"{path}: unknown entries {unknown}; expected parameters, metric, direction, pruner"
        )
    parameters: list[Parameter] = []
    for key, spec in content["parameters"].items():
        parameters.append(_parameter(path, str(key), spec, parameters))
    space = SearchSpace(
        tuple(parameters),
        str(content.get("metric", "val/cpm")),
        str(content.get("direction", "maximize")),
        str(content.get("pruner", "median")),
    )
    problem = check_metric(space.metric)
    if problem:
        raise SearchError(f"{path}: {problem}")
    if space.direction not in ("maximize", "minimize"):
        raise SearchError(f"{path}: direction={space.direction!r}: expected maximize or minimize")
    if space.pruner not in ("median", "hyperband", "none"):
        raise SearchError(f"{path}: pruner={space.pruner!r}: expected median, hyperband or none")
    return space


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parameter(path: Path, key: str, spec: object, earlier: list[Parameter]) -> Parameter:
    where = f"{path}, parameter {key}"
    if not isinstance(spec, dict) or spec.get("type") not in KINDS:
        raise SearchError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
    extra = sorted(set(spec) - {"type", "low", "high", "log", "step", "choices", "when"})
    if extra:
        raise SearchError(f"{where}: unknown field(s) {extra}")
    when = _condition(where, spec.get("when") or {}, earlier)
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SearchError(f"{where}: a categorical parameter needs a non-empty list of choices")
        return Parameter(key, "categorical", choices=tuple(choices), when=when)
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    if not (_number(low) and _number(high)) or low >= high:
        raise SearchError(f"{where}: expected finite numbers low < high, got low={low!r}, high={high!r}")
    if not isinstance(log, bool):
        raise SearchError(f"{where}: log={log!r}: expected true or false")
    if log and low <= 0:
        raise SearchError(f"{where}: a log-scaled range needs low > 0, got {low}")
    if step is not None and (not _number(step) or step <= 0):
        raise SearchError(f"{where}: step={step!r}: expected a positive number")
    if spec["type"] == "int" and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise SearchError(f"{where}: an int parameter needs integer bounds and step")
    return Parameter(key, spec["type"], float(low), float(high), log, step, when=when)


def _condition(where: str, when: object, earlier: list[Parameter]) -> dict:
    """A ``when`` mapping, each value one that the earlier parameter it names can take."""
    by_key = {parameter.key: parameter for parameter in earlier}
    if not isinstance(when, dict) or any(name not in by_key for name in when):
        raise SearchError(
            f"{where}: 'when' must name parameters listed before it, with their values; got {when!r}"
        )
    for name, wanted in when.items():
        condition = by_key[name]
        if not condition.admits(wanted):
            takes = (
                list(condition.choices)
                if condition.kind == "categorical"
                else f"{condition.kind} values in [{condition.example()}, {condition.high:g}]"
            )
            raise SearchError(
                f"{where}: when {name}={wanted!r} ({type(wanted).__name__}) never holds: {name} takes {takes}"
            )
    return dict(when)


def seed_space(seeds: list[int]) -> SearchSpace:
    """A 'search' that repeats the configuration once per seed (the run's and the data's seed)."""
    return SearchSpace((Parameter("seed", "categorical", choices=tuple(seeds)),), pruner="none")


def fit_arguments(values: dict[str, Any]) -> list[str]:
    """``luna.fit`` flags for a trial's values (``seed`` sets the run's and the data's seed)."""
    arguments = []
    for key, value in values.items():
        keys = ["seed_everything", "data.seed"] if key == "seed" else [key]
        text = value if isinstance(value, str) else json.dumps(value)
        arguments += [f"--{name}={text}" for name in keys]
    return arguments
