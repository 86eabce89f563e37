"""Reading a study file and the search space it names: where they are looked for, the YAML,
the checks across the two files, and every mistake as one line naming the file, the key and
what is allowed (`SpecError`; the CLI prints it and exits with 2). optdse/spec.py holds the
schema this validates against; nothing else in optdse reads YAML.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from optdse.models import Model, ModelError, builtin, user_model
from optdse.spec import (
    NETWORK_PARAMETERS,
    PARAMETERS,
    PROJECT_ROOT,
    SERVER_PARAMETERS,
    Chaos,
    Choice,
    Constraints,
    ModelBlock,
    Range,
    Sampler,
    Scenario,
    SearchSpace,
    SpecError,
    Stability,
    Study,
    StudySpec,
    Workload,
    server_problem,
)

#: Union tags pydantic puts in an error's location; not keys of the file.
_TAGS = ("range", "fixed", "choice", "built-in", "block")


def _one_line(path: Path, error: ValidationError, model: type[BaseModel]) -> str:
    # An unknown key (a typo) explains a missing one next to it: say that first.
    first = next((e for e in error.errors() if e["type"] == "extra_forbidden"), error.errors()[0])
    # Drop pydantic's internal path parts (union tags, validator names) from the key.
    key = ".".join(str(part) for part in first["loc"] if str(part) not in _TAGS and "[" not in str(part))
    message = first["msg"].removeprefix("Value error, ")
    if not key and ": " in message and message.split(": ", 1)[0].replace(".", "").isidentifier():
        key, message = message.split(": ", 1)  # a cross-field check names its own key
    if first["type"] == "extra_forbidden":
        message = "unknown key" + _allowed_keys(model, first["loc"])
    elif first["type"] not in ("missing",) and "input" in first and not isinstance(first["input"], dict):
        message += f" (got {first['input']!r})"
    more = len(error.errors()) - 1
    return f"{path}: {key or '(top level)'}: {message}" + (f" [+{more} more]" if more > 0 else "")


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    loc = tuple(part for part in loc if part not in _TAGS)
    if len(loc) == 1:
        return f"; allowed: {', '.join(model.model_fields)}"
    nested = {"chaos": Chaos, "sampler": Sampler, "model": ModelBlock, "constraints": Constraints,
              "stability": Stability, "workload": Workload}
    if model is StudySpec and len(loc) == 2 and loc[0] in nested:
        return f"; allowed: {', '.join(nested[loc[0]].model_fields)}"
    if model is StudySpec and len(loc) == 4 and loc[:2] == ("workload", "scenarios"):
        return f"; allowed: {', '.join(Scenario.model_fields)}"
    if model is SearchSpace and len(loc) == 2 and loc[0] == "network":
        return f"; allowed: {', '.join(NETWORK_PARAMETERS)}"
    if model is SearchSpace and len(loc) == 2 and loc[0] == "server":
        return f"; allowed: {', '.join(SERVER_PARAMETERS)}"
    if model is SearchSpace and len(loc) >= 3:
        return "; allowed: low, high, log, step (a range), value (fixed)" + (" or choices" if loc[0] == "server" else "")
    return ""


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise SpecError(f"{path}: {where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: (top level): must be a mapping of keys to values")
    return data


def _validate(model: type[BaseModel], path: Path) -> Any:
    try:
        return model.model_validate(_read_yaml(path))
    except ValidationError as error:
        raise SpecError(_one_line(path, error, model)) from None


def find_study_file(name_or_path: str) -> Path:
    """A path as given, else studies/NAME.yaml in the working directory, else in the project."""
    given = Path(name_or_path)
    if given.suffix in (".yaml", ".yml"):
        return given
    for root in (Path.cwd(), PROJECT_ROOT):
        candidate = root / "studies" / f"{name_or_path}.yaml"
        if candidate.exists():
            return candidate
    known = sorted(p.stem for p in (PROJECT_ROOT / "studies").glob("*.yaml"))
    raise SpecError(f"studies/{name_or_path}.yaml: file not found; known studies: {', '.join(known)}")


def find_search_space(study_path: Path, name: str) -> Path:
    """search_spaces/NAME beside the study's studies/ folder (the project's layout, also in a
    user's own folder), else beside the study file, in the working directory, in the project."""
    roots = [study_path.parent.parent, study_path.parent, Path.cwd(), PROJECT_ROOT]
    candidates = list(dict.fromkeys((root / "search_spaces" / name).resolve() for root in roots))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SpecError(f"{study_path}: search_space: no file {name} in {', '.join(str(c.parent) for c in candidates)}")


def load_study(name_or_path: str, server: str | None = None) -> Study:
    """Read and validate a study file and the search space it names; `server` (--server)
    replaces the file's."""
    path = find_study_file(name_or_path)
    spec: StudySpec = _validate(StudySpec, path)
    if server is not None and server != spec.server:
        spec = spec.model_copy(update={"server": server})
        problem = server_problem(spec.server, spec.backend, spec.image)
        if problem:
            raise SpecError(f"--server {server}: {path}: {problem}")
    space_path = find_search_space(path, spec.search_space)
    space: SearchSpace = _validate(SearchSpace, space_path)
    problem = space.knobs_problem(spec.server)
    if problem:
        raise SpecError(f"{space_path}: {problem}")
    _workload_and_space_complete(path, space_path, spec.workload, space)
    for i, point in enumerate(spec.enqueue):
        for name, value in point.items():
            if name not in space.dimensions:
                raise SpecError(f"{path}: enqueue.{i}.{name}: the search space does not define {name}")
            dist = space.dimensions[name]
            if isinstance(dist, Choice):
                if value not in dist.choices:
                    raise SpecError(f"{path}: enqueue.{i}.{name}: must be one of the space's choices "
                                    f"{', '.join(f'{c:g}' for c in dist.choices)} (got {value:g})")
                continue
            low, high = (dist.low, dist.high) if isinstance(dist, Range) else (dist.value, dist.value)
            if not (low <= value <= high) or math.isnan(value):
                raise SpecError(f"{path}: enqueue.{i}.{name}: must lie in the space's range "
                                f"{low:g}..{high:g} (got {value:g})")
    return Study(name=path.stem, path=path, spec=spec, space=space, model=_model(path, spec.model))


def _workload_and_space_complete(path: Path, space_path: Path, workload: Workload | None, space: SearchSpace) -> None:
    """Between them the workload and the space give every parameter once: what the workload
    fixes is not searched, and each scenario has a loop (threads or rate_rps) and a file size."""
    scenarios = workload.resolved() if workload else [("", {})]
    given = set().union(*(set(values) for _, values in scenarios))
    loop = {"threads", "rate_rps"}  # two ways of giving one thing, the load
    clash = next(((g, d) for g in sorted(given) for d in space.dimensions if g == d or {g, d} <= loop), None)
    if clash:
        name, dimension = clash
        block = "network" if dimension in NETWORK_PARAMETERS else "parameters"
        raise SpecError(f"{path}: workload.{name}: the search space {space_path.name} gives "
                        f"{'the load' if name in loop else 'it'} too ({block}.{dimension}); a space beside a "
                        "workload holds only what the operator chooses")
    for i, (name, values) in enumerate(scenarios):
        have = set(space.parameters) | set(values)
        missing = sorted(set(PARAMETERS) - have - ({"threads"} if "rate_rps" in have else set()))
        if not missing:
            continue
        if workload is None:
            raise SpecError(f"{space_path}: parameters: missing {', '.join(missing)}; a space defines all of "
                            f"{', '.join(PARAMETERS)} (or rate_rps instead of threads)")
        where = f"workload.scenarios.{i}" if workload.scenarios else "workload"
        raise SpecError(f"{path}: {where}: {missing[0]} is neither in it nor in the search space "
                        f"{space_path.name}; one of them gives {', '.join(missing)}")


def _model(path: Path, given: str | ModelBlock) -> Model:
    """The study's model from the registry; a user's is checked now (SavedModel, signature,
    request file, size_axis), so a mistake stops the study before anything is deployed."""
    if isinstance(given, str):
        return builtin(given)
    folder = path.parent
    try:
        return user_model(folder / given.path, given.name, given.signature,
                          folder / given.request_file if given.request_file else None, given.size_axis)
    except ModelError as error:
        raise SpecError(f"{path}: model.{error.key}: {error}") from None


__all__ = ["find_search_space", "find_study_file", "load_study"]
