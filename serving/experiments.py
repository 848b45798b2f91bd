"""Which model a session sees: experiments per problem, from a file or the published roles.

An experiment names variants, each a published role (`champion`, `challenger`) with a traffic
weight, optionally a shadow role that is scored on every request but never shown, and
optionally the rollout stage it runs (logged with every exposure). A file looks like::

    {
      "recommender": {
        "name": "recommender:v1:vs:v2",
        "stage": "5%",
        "variants": [
          {"name": "challenger", "role": "challenger", "weight": 0.05},
          {"name": "champion", "role": "champion", "weight": 0.95}
        ]
      },
      "conversion": {"name": "hgb-shadow", "stage": "shadow", "variants": [{"name": "control",
                     "role": "champion", "weight": 1}], "shadow": "challenger"}
    }

Per problem, the first source that names it wins: the operator's file (`SKIFF_EXPERIMENTS` or
`skiff serve --experiments`, read once at start), then `<published>/experiments.json` (written
by the rollout controller, re-read on every reload, see `serving.store`), then the default from
the published roles: the champion alone; or, with a challenger, challenger and champion split
by SKIFF_CHALLENGER_TRAFFIC (shadow mode when that is 0). The default's name holds the
versions, so a new champion or challenger starts a new experiment. An experiment whose roles
are not all loaded serves the champion alone, under the name `<name>:inactive` and no stage,
so its results stay apart.

An experiment's `mode` is "ab" (the default: each session sees its variant's model) or
"interleaving" (recommender only; needs a champion variant and a challenger variant): a session
assigned to the challenger-role variant is shown the team draft of the challenger's and the
champion's lists, every other session sees the champion (see `serving.showing`). An inactive
experiment runs "ab": the champion alone has nothing to interleave with.

A ramp changes weights only, never the name: assignment hashes (name, session id) onto [0, 1)
and the weights cut that line in the order listed, so with the challenger listed first, growing
its weight only moves champion sessions to it; a session never flips back and forth.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ml import experiments as stats
from ml.registry import ROLES
from ml.serving_log import MODES
from skiff.settings import ConfigError


@dataclass(frozen=True)
class Variant:
    name: str
    role: str
    weight: float


@dataclass(frozen=True)
class Experiment:
    name: str
    problem: str
    variants: tuple[Variant, ...]
    shadow: str | None = None  # a role scored but never shown
    stage: str | None = None  # the rollout stage, as the configuration names it
    mode: str = "ab"  # one of MODES

    @property
    def weights(self) -> dict[str, float]:
        return {v.name: v.weight for v in self.variants}

    def assign(self, session_id: str) -> Variant:
        """Stable: the same session always gets the same variant of this experiment."""
        if len(self.variants) == 1:
            return self.variants[0]
        name = stats.assign(self.name, session_id, [(v.name, v.weight) for v in self.variants])
        return next(v for v in self.variants if v.name == name)

    @property
    def roles(self) -> set[str]:
        return {v.role for v in self.variants} | ({self.shadow} if self.shadow else set())


def parse(data: Mapping, source: str) -> dict[str, Experiment]:
    """Experiments per problem from the file's JSON; ConfigError names what is wrong."""
    from serving.config import PROBLEMS

    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected an object of problems, got {type(data).__name__}")
    out = {}
    for problem, spec in data.items():
        where = f"{source}: {problem}"
        if problem not in PROBLEMS:
            raise ConfigError(f"{where}: unknown problem (expected one of {list(PROBLEMS)})")
        if (
            not isinstance(spec, Mapping)
            or not spec.get("name")
            or not isinstance(spec.get("variants"), list)
            or not spec["variants"]
        ):
            raise ConfigError(f"{where}: needs a `name` and a list of `variants`")
        variants = []
        for i, v in enumerate(spec["variants"]):
            if not isinstance(v, Mapping) or not {"name", "role", "weight"} <= set(v):
                raise ConfigError(f"{where}.variants[{i}]: needs `name`, `role` and `weight`")
            if v["role"] not in ROLES:
                raise ConfigError(f"{where}.variants[{i}].role: {v['role']!r} not in {ROLES}")
            if not isinstance(v["weight"], int | float) or v["weight"] <= 0:
                raise ConfigError(f"{where}.variants[{i}].weight: must be a positive number")
            variants.append(Variant(str(v["name"]), v["role"], float(v["weight"])))
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}.variants: names repeat ({names})")
        shadow = spec.get("shadow")
        if shadow is not None and shadow not in ROLES:
            raise ConfigError(f"{where}.shadow: {shadow!r} not in {ROLES}")
        stage = spec.get("stage")
        if stage is not None and not isinstance(stage, str):
            raise ConfigError(f"{where}.stage: must be a string, got {stage!r}")
        mode = _mode(spec.get("mode", "ab"), problem, variants, where)
        out[problem] = Experiment(str(spec["name"]), problem, tuple(variants), shadow, stage, mode)
    return out


def _mode(mode: object, problem: str, variants: list[Variant], where: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"{where}.mode: {mode!r} not in {MODES}")
    roles = {v.role for v in variants}
    if mode == "interleaving" and (problem != "recommender" or roles != set(ROLES)):
        raise ConfigError(
            f"{where}.mode: interleaving needs the recommender problem and both a champion and "
            f"a challenger variant (got {problem}, roles {sorted(roles)})"
        )
    return str(mode)


def load_file(path: Path) -> dict[str, Experiment]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"experiment file {path}: {exc}") from exc
    return parse(data, str(path))


def resolve(
    problem: str,
    configured: Experiment | None,
    versions: Mapping[str, str],
    challenger_traffic: float,
) -> Experiment | None:
    """The experiment to run now, given the loaded versions per role (None: no champion)."""
    champion = versions.get("champion")
    if champion is None:
        return None
    alone = (Variant("champion", "champion", 1.0),)
    if configured is not None:
        if configured.roles <= set(versions):
            return configured
        return Experiment(f"{configured.name}:inactive", problem, alone)
    challenger = versions.get("challenger")
    if challenger is None or challenger == champion:
        return Experiment(f"{problem}:{champion}", problem, alone)
    if challenger_traffic <= 0:
        return Experiment(f"{problem}:{champion}:shadow:{challenger}", problem, alone, "challenger")
    variants = (  # the challenger first, as the rollout controller lists it
        Variant("challenger", "challenger", challenger_traffic),
        Variant("champion", "champion", 1.0 - challenger_traffic),
    )
    if challenger_traffic >= 1:
        variants = variants[:1]
    return Experiment(f"{problem}:{champion}:vs:{challenger}", problem, variants)
