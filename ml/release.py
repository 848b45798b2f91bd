"""Release by evidence: the roles' flow, the rollout policy, and the transitions over a registry.

Flow: candidate -> (offline gates) -> challenger -> ramp stages -> champion, or -> rolled back.
Offline gates only `admit` a challenger. The champion changes only through the controller's
`decide` + `apply` (a promotion on the experiment's evidence), an operator's `promote`, or the
`bootstrap` of a problem that has no champion yet. A replaced champion is recorded "retired",
never "challenger". Every role change and ramp step is a history line in the registry with who
decided, the stage, the traffic share, the reason and the evidence's numbers.

Decisions, in the order `decide` takes them:
- no challenger, or no evidence of the running experiment yet: hold;
- error rate or p99 latency beyond the guardrail: roll back. They are measured per exposure,
  not by comparing randomized groups, so they are read even when the sample ratio is off, and
  as point values: a model call that raises is a bug, not noise;
- a sample ratio mismatch (p < srm_alpha): hold, since assignment or logging is broken and no
  comparison of the groups can be trusted;
- the primary or the other metric worse beyond the margin (always-valid upper bound of
  treatment - control < -margin x control): roll back;
- the replay gate (recommender, first stage, `replay_gate`): the challenger's off-policy
  estimate on the champion's logged traffic (`ReplayCheck`, from the `recommender_replay` asset)
  has an upper bound below the champion's logged click-through x (1 - replay_margin): roll back,
  before any shopper sees it (the first stage is shadow by default). It passes only once its
  lower bound is at or above that threshold: an interval that straddles it holds the stage
  (a wide interval, e.g. a target far from the champion at 5% exploration, decides nothing);
- the stage has run fewer than min_sessions challenger sessions (shadow: shadow scores) or
  fewer than min_hours, or the log is not yet on this stage (the server has not reloaded), or
  (replay gate) fewer than replay_min_exposures logged exposures were replayed or the replay's
  interval straddles the threshold: hold;
- otherwise advance to the next stage; at the last stage promote when the primary metric is
  superior (always-valid lower bound > 0) or non-inferior (lower bound > -margin x control),
  and hold while it is neither (guardrails still watch it; there is no time limit, so an
  inconclusive challenger stays at the last stage until an operator rolls it back).
Only the last stage may promote: a model better at 1% must still show its guardrails at scale.
The intervals are always valid (they hold at every look), so looking every hour is allowed;
`Policy.alpha` is the level the controller computes them at.

Concurrent writers: every transition (`admit`, `promote`, `rollback`, `bootstrap`, and the
controller's `carry_out`/`apply`) reads, decides and writes the roles, their history and the
rollout state under the problem's registry lock, and `carry_out` re-reads the state under it:
a look whose state moved since it was read (an operator's rollback, a new challenger, another
look's ramp) applies nothing and returns a hold saying why.

The serving configuration (`experiments.json` under the published root) is written by each
transition under that lock, after the published pointers (see `_commit`), and rewritten from
the state read under the lock on every look, so a lost write heals on the next one. The
experiment's name holds both versions and stays through the ramp; the challenger is listed
first, so growing its weight only moves champion sessions to it. The two problems' controllers
each rewrite their own entry (read, replace, write, under each problem's own lock: two writes
of different problems at the same instant may lose one, which the next look heals).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import posixpath
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import fsspec

from ml.experiments import Comparison, Evidence
from ml.registry import Registry

EXPERIMENTS_FILE = "experiments.json"
CONTROLLER = "rollout controller"
ACTIONS = ("advance", "hold", "rollback", "promote")
DECISION_MODES = ("superior", "non_inferior")


class ReleaseError(RuntimeError):
    """A transition that does not apply to the registry's roles as they are."""


@dataclass(frozen=True)
class Stage:
    name: str
    traffic: float  # the challenger's share of sessions; 0 = shadow (scored, never shown)


DEFAULT_STAGES = (
    Stage("shadow", 0.0),
    Stage("1%", 0.01),
    Stage("5%", 0.05),
    Stage("25%", 0.25),
    Stage("50%", 0.5),
)


@dataclass(frozen=True)
class Policy:
    stages: tuple[Stage, ...] = DEFAULT_STAGES
    min_sessions: int = 1000  # challenger sessions in a stage (shadow: shadow scores)
    min_hours: float = 24.0  # per stage
    max_error_rate_increase: float = 0.005  # treatment - control, absolute
    max_p99_latency_ratio: float = 1.5  # treatment p99 / control p99 ...
    latency_floor_ms: float = 50.0  # ... but a p99 under this never breaches
    min_exposures: int = 200  # challenger exposures before error rate or latency can breach
    metric_margin: float = 0.05  # guardrail: a metric may be worse by this share of control
    decision: str = "superior"  # or "non_inferior"
    non_inferiority_margin: float = 0.01  # share of control, for decision = "non_inferior"
    alpha: float = 0.05  # the always-valid intervals' level
    srm_alpha: float = 0.001
    replay_gate: bool = True  # recommender: a replay estimate must pass before the first stage
    replay_margin: float = 0.05  # share of the champion's logged CTR the estimate may fall short
    replay_min_exposures: int = 1000  # logged champion exposures replayed before it can pass

    def __post_init__(self) -> None:
        stages = tuple(s if isinstance(s, Stage) else Stage(*s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        if not stages:
            raise ValueError("policy needs at least one stage")
        names = [s.name for s in stages]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"stage names must be distinct and non-empty, got {names}")
        shares = [s.traffic for s in stages]
        if any(not 0 <= t <= 1 for t in shares) or any(b <= a for a, b in pairwise(shares)):
            raise ValueError(f"stage traffic must rise strictly within [0, 1], got {shares}")
        if shares[-1] == 0:
            raise ValueError("the last stage must show the challenger (traffic > 0)")
        checks = {
            "min_sessions": self.min_sessions >= 1,
            "min_hours": self.min_hours >= 0,
            "max_error_rate_increase": 0 <= self.max_error_rate_increase < 1,
            "max_p99_latency_ratio": self.max_p99_latency_ratio >= 1,
            "latency_floor_ms": self.latency_floor_ms >= 0,
            "min_exposures": self.min_exposures >= 1,
            "metric_margin": 0 <= self.metric_margin < 1,
            "non_inferiority_margin": 0 <= self.non_inferiority_margin < 1,
            "alpha": 0 < self.alpha < 1,
            "srm_alpha": 0 < self.srm_alpha < 1,
            "replay_margin": 0 <= self.replay_margin < 1,
            "replay_min_exposures": self.replay_min_exposures >= 1,
        }
        bad = [f"{name} = {getattr(self, name)!r}" for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"policy values out of range: {', '.join(bad)}")
        if self.decision not in DECISION_MODES:
            raise ValueError(f"decision must be one of {DECISION_MODES}, got {self.decision!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """From Dagster config: the field names, stages as [{"name": ..., "traffic": ...}]."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown policy field(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        if "stages" in values:
            values["stages"] = tuple(
                Stage(str(s["name"]), float(s["traffic"])) for s in values["stages"]
            )
        return cls(**values)


@dataclass(frozen=True)
class RolloutState:
    """Where a problem's release stands; stored in the registry beside the roles."""

    problem: str
    champion: str
    challenger: str | None = None
    stage: int = 0  # index into the policy's stages
    stage_name: str | None = None  # the stage in force (None: champion alone)
    traffic: float = 0.0  # the challenger's share in force
    stage_started_at: str | None = None  # ISO 8601 UTC
    experiment: str = ""
    since: str = ""  # when this champion/challenger pair began (ISO 8601 UTC)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutState:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = sorted({"problem", "champion"} - set(data))
        if missing or set(data) - known:
            raise ValueError(
                f"not a rollout state: missing {missing}, unknown {sorted(set(data) - known)}"
            )
        return cls(**data)


REPLAY_PROBLEMS = ("recommender",)  # the problems whose logs carry propensities


@dataclass(frozen=True)
class ReplayCheck:
    """What the replay gate reads: the challenger's off-policy click-through estimate on the
    champion's logged traffic (`ml.offpolicy`, combined over the days replayed) beside the
    champion's own logged click-through on its non-explored exposures."""

    estimator: str  # "dr", "snips" or "ips"
    challenger: str  # the version estimated
    champion: str  # the logging version
    estimate: float
    low: float
    high: float
    champion_ctr: float
    exposures: int  # logged champion exposures replayed
    days: str  # "first .. last" log day

    def numbers(self) -> dict[str, Any]:
        return {f"replay_{k}": v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Guardrail:
    name: str
    ok: bool
    value: float
    threshold: float


@dataclass(frozen=True)
class Decision:
    action: str  # advance | hold | rollback | promote
    stage: int | None  # the stage index after the decision (None: the experiment ends)
    stage_name: str | None
    traffic: float  # the challenger's share after the decision (promote: 1, it serves all)
    reason: str
    guardrails: tuple[Guardrail, ...] = ()
    evidence: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def experiment_name(problem: str, champion: str, challenger: str | None) -> str:
    return f"{problem}:{champion}" + (f":vs:{challenger}" if challenger else "")


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


def _now(now: dt.datetime | None) -> dt.datetime:
    return now or dt.datetime.now(dt.UTC)


# --- the policy ---------------------------------------------------------------------------------


def numbers(evidence: Evidence) -> dict[str, Any]:
    """The evidence as the flat numbers a history line and the UI keep."""
    out: dict[str, Any] = {
        "experiment": evidence.experiment,
        "stage": evidence.stage,
        "control_sessions": evidence.control.sessions,
        "treatment_sessions": evidence.treatment.sessions,
        "stage_sessions": evidence.stage_sessions,
        "shadow_scores": evidence.shadow_scores,
        "srm_p_value": evidence.srm_p_value,
        "control_error_rate": evidence.control.error_rate,
        "treatment_error_rate": evidence.treatment.error_rate,
        "control_p99_latency_ms": evidence.control.p99_latency_ms,
        "treatment_p99_latency_ms": evidence.treatment.p99_latency_ms,
    }
    for metric, c in evidence.comparisons.items():
        for key in ("control", "treatment", "absolute", "low", "high", "p_value", "relative"):
            out[f"{metric}_{key}"] = getattr(c, key)
    return out


def _nan(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _operational(policy: Policy, evidence: Evidence) -> list[Guardrail]:
    """Error rate and p99 latency of the challenger against the champion's. Neither can
    breach before `min_exposures` challenger exposures: the p99 of a few dozen calls is their
    slowest, and one error in a hundred is already 1%."""
    c, t = evidence.control, evidence.treatment
    errors = t.error_rate - c.error_rate if t.exposures and c.exposures else math.nan
    latency_limit = max(policy.max_p99_latency_ratio * c.p99_latency_ms, policy.latency_floor_ms)
    if _nan(c.p99_latency_ms):
        latency_limit = policy.latency_floor_ms
    enough = t.exposures >= policy.min_exposures
    return [
        Guardrail(
            "error_rate",
            not (enough and errors > policy.max_error_rate_increase),
            errors,
            policy.max_error_rate_increase,
        ),
        Guardrail(
            "p99_latency_ms",
            not (enough and t.p99_latency_ms > latency_limit),
            t.p99_latency_ms,
            latency_limit,
        ),
    ]


def _metric_guardrail(policy: Policy, metric: str, c: Comparison | None) -> Guardrail:
    if c is None:
        return Guardrail(metric, True, math.nan, math.nan)
    threshold = -policy.metric_margin * c.control
    return Guardrail(metric, not c.high < threshold, c.high, threshold)


def _explain(g: Guardrail, evidence: Evidence) -> str:
    if g.name == "error_rate":
        return (
            f"error rate {evidence.treatment.error_rate:.2%} against the champion's "
            f"{evidence.control.error_rate:.2%} (+{g.value:.2%} > +{g.threshold:.2%})"
        )
    if g.name == "p99_latency_ms":
        return (
            f"p99 latency {g.value:.1f} ms > {g.threshold:.1f} ms (champion "
            f"{evidence.control.p99_latency_ms:.1f} ms)"
        )
    c = evidence.comparisons[g.name]
    return (
        f"{g.name} {c.treatment:.4f} against {c.control:.4f}: the always-valid interval of the "
        f"difference ({c.low:+.4f} .. {c.high:+.4f}) lies below {g.threshold:+.4f}, the margin"
    )


def _stage_index(policy: Policy, state: RolloutState) -> int | None:
    names = [s.name for s in policy.stages]
    if 0 <= state.stage < len(names) and names[state.stage] == state.stage_name:
        return state.stage
    return names.index(state.stage_name) if state.stage_name in names else None


def _replay_guardrail(policy: Policy, replay: ReplayCheck) -> Guardrail:
    threshold = (1 - policy.replay_margin) * replay.champion_ctr
    return Guardrail(
        f"replay_{replay.estimator}", not replay.high < threshold, replay.high, threshold
    )


def decide(
    policy: Policy,
    state: RolloutState,
    evidence: Evidence | None,
    now: dt.datetime,
    replay: ReplayCheck | None = None,
) -> Decision:
    """What the controller does at this look (see the module's docstring for the order).
    `now` is timezone-aware; `replay` is the challenger's replay estimate, if any."""
    here = _stage_index(policy, state)
    guardrails: tuple[Guardrail, ...] = ()
    seen: dict[str, Any] = {}

    def out(action: str, reason: str) -> Decision:
        if action == "hold":
            where = (state.stage, state.stage_name, state.traffic)
        elif action == "advance":
            index = 0 if here is None else here + 1
            where = (index, policy.stages[index].name, policy.stages[index].traffic)
        else:
            where = (None, None, 1.0 if action == "promote" else 0.0)
        return Decision(action, *where, reason, guardrails, seen)

    if state.challenger is None:
        return out("hold", f"no challenger: {state.champion} serves alone")
    if here is None:
        names = [s.name for s in policy.stages]
        restart = f"the ramp restarts at {names[0]}"
        return out("advance", f"stage {state.stage_name!r} is not among {names}: {restart}")
    current = policy.stages[here]
    if evidence is None:
        return out("hold", f"no exposures of {state.experiment} logged yet")
    if evidence.experiment != state.experiment:
        return out("hold", f"the evidence is of {evidence.experiment}, not {state.experiment}")
    seen = numbers(evidence)
    operational = _operational(policy, evidence)
    metrics = [evidence.primary, *sorted(set(evidence.comparisons) - {evidence.primary})]
    comparisons = [_metric_guardrail(policy, m, evidence.comparisons.get(m)) for m in metrics]
    gated = policy.replay_gate and state.problem in REPLAY_PROBLEMS and here == 0
    if gated and replay is not None and replay.challenger != state.challenger:
        replay = None  # an estimate of another version says nothing of this one
    replayed = (
        gated
        and replay is not None
        and replay.exposures >= policy.replay_min_exposures
        and not (_nan(replay.high) or _nan(replay.champion_ctr))  # undefined: not yet read
    )
    gate = [_replay_guardrail(policy, replay)] if replayed and replay is not None else []
    if replay is not None and gated:
        seen |= replay.numbers()
    guardrails = (*operational, *comparisons, *gate)

    def rollback(breached: list[Guardrail]) -> Decision:
        names = ", ".join(g.name for g in breached)
        why = "; ".join(_explain(g, evidence) for g in breached)
        return out("rollback", f"rolled back at stage {current.name}: {names} breached — {why}")

    if breached := [g for g in operational if not g.ok]:
        return rollback(breached)
    if not _nan(evidence.srm_p_value) and evidence.srm_p_value < policy.srm_alpha:
        srm = f"p = {evidence.srm_p_value:.2g} < {policy.srm_alpha}"
        broken = "assignment or logging is broken, so no comparison can be trusted; fix it"
        return out("hold", f"sample ratio mismatch ({srm}): {broken}")
    if breached := [g for g in comparisons if not g.ok]:
        return rollback(breached)
    if gate and not gate[0].ok and replay is not None:
        return out(
            "rollback",
            f"rolled back at stage {current.name} by the replay gate: {replay.estimator} "
            f"estimate of the challenger's CTR {replay.estimate:.4f} ({replay.low:.4f} .. "
            f"{replay.high:.4f}) on {replay.exposures:,} logged exposures of {replay.champion} "
            f"({replay.days}) lies below {gate[0].threshold:.4f}, the champion's logged CTR "
            f"{replay.champion_ctr:.4f} less the {policy.replay_margin:.0%} margin",
        )
    if evidence.stage != current.name:
        waiting = "waiting for the server to load the configuration"
        return out(
            "hold", f"the log's latest stage is {evidence.stage!r}, not {current.name!r}: {waiting}"
        )

    hours = (now - dt.datetime.fromisoformat(state.stage_started_at)).total_seconds() / 3600
    shadow = current.traffic == 0
    count = evidence.shadow_scores if shadow else evidence.stage_sessions
    unit = "shadow scores" if shadow else "challenger sessions"
    short = []
    if count < policy.min_sessions:
        short.append(f"{count:,} {unit} of the {policy.min_sessions:,} needed")
    if hours < policy.min_hours:
        short.append(f"{hours:.1f} h of the {policy.min_hours:g} h needed")
    if gated and not replayed:
        if replay is None:
            short.append(
                f"no replay estimate of {state.challenger} on the logs of {state.champion} yet "
                "(recommender_replay)"
            )
        elif replay.exposures < policy.replay_min_exposures:
            short.append(
                f"a replay on {replay.exposures:,} logged champion exposures of the "
                f"{policy.replay_min_exposures:,} the replay gate needs"
            )
        else:
            short.append(
                f"a replay on {replay.exposures:,} exposures whose interval or baseline is "
                "undefined (too few sessions, or no unexplored champion exposure)"
            )
    if gate and replay is not None and not replay.low >= gate[0].threshold:
        short.append(
            f"a replay that cannot tell yet: {replay.estimator} {replay.estimate:.4f} "
            f"({replay.low:.4f} .. {replay.high:.4f}) on {replay.exposures:,} exposures "
            f"straddles {gate[0].threshold:.4f}, the champion's logged CTR less the margin; "
            "more logged traffic narrows it"
        )
    if short:
        return out("hold", f"stage {current.name}: " + " and ".join(short))
    met = f"stage {current.name} met its minimums ({count:,} {unit}, {hours:.1f} h), guardrails ok"
    if gate and replay is not None:
        met += (
            f", replay {replay.estimator} {replay.estimate:.4f} vs logged {replay.champion_ctr:.4f}"
        )
    if here + 1 < len(policy.stages):
        nxt = policy.stages[here + 1]
        return out("advance", f"{met}: advancing to {nxt.name} ({nxt.traffic:.0%} of sessions)")
    primary = evidence.comparisons.get(evidence.primary)
    if primary is None:
        return out("hold", f"{met}, but there is no comparison on {evidence.primary}")
    if policy.decision == "superior":
        bound, label = 0.0, "superior"
    else:
        bound = -policy.non_inferiority_margin * primary.control
        label = f"non-inferior (margin {policy.non_inferiority_margin:.1%} of control)"
    interval = (
        f"{evidence.primary} {primary.treatment:.4f} against {primary.control:.4f}, difference "
        f"{primary.absolute:+.4f} (always-valid interval {primary.low:+.4f} .. {primary.high:+.4f})"
    )
    if primary.low > bound:
        return out("promote", f"{met}; {label}: {interval}, lower bound > {bound:+.4f}")
    return out("hold", f"{met}; not yet {label}: {interval}, lower bound <= {bound:+.4f}")


# --- what the server reads ------------------------------------------------------------------------


def serving_config(state: RolloutState) -> dict[str, Any]:
    """The problem's entry of experiments.json: the champion alone, champion + shadow challenger
    (traffic 0), or challenger (first) and champion split by the stage's traffic."""
    champion = {"name": "champion", "role": "champion"}
    if state.challenger is None or state.stage_name is None:
        variants, shadow = [{**champion, "weight": 1.0}], None
    elif state.traffic == 0:
        variants, shadow = [{**champion, "weight": 1.0}], "challenger"
    else:
        variants = [{"name": "challenger", "role": "challenger", "weight": state.traffic}]
        if state.traffic < 1:
            variants.append({**champion, "weight": round(1.0 - state.traffic, 12)})
        shadow = None
    return {
        "name": state.experiment,
        "stage": state.stage_name,
        "variants": variants,
        "shadow": shadow,
    }


def _experiments_path(published_url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(str(published_url))
    return fs, posixpath.join(root, EXPERIMENTS_FILE)


def read_serving_config(published_url: str) -> dict[str, Any]:
    fs, path = _experiments_path(published_url)
    if not fs.exists(path):
        return {}
    with fs.open(path, "r") as handle:
        text = handle.read()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{published_url}/{EXPERIMENTS_FILE} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{published_url}/{EXPERIMENTS_FILE} must hold an object of problems")
    return data


def write_serving_config(published_url: str, data: Mapping[str, Any]) -> None:
    """Write then rename, so the server reads the old configuration or the new one."""
    fs, path = _experiments_path(published_url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "w") as handle:
        handle.write(json.dumps(dict(data), indent=2, sort_keys=True))
    fs.mv(tmp, path)


def _serve(published_url: str, state: RolloutState) -> None:
    data = read_serving_config(published_url)
    data[state.problem] = serving_config(state)
    write_serving_config(published_url, data)


# --- transitions ------------------------------------------------------------------------------
#
# Every transition reads, decides and writes holding the problem's lock (`Registry.locked`,
# re-entrant in a thread, so the registry's own writes inside take it again for free): the
# roles and their history lines, rollout.json, the published pointers and the problem's entry
# of experiments.json, in that order. A transition that ran on a look taken before the lock
# (the controller's `carry_out`) reads the state again under it and holds if it moved.


def _read_state(registry: Registry, problem: str) -> RolloutState | None:
    roles = registry.roles(problem)
    if "champion" not in roles:
        return None
    stored = registry.rollout(problem)
    if stored is None:
        return _alone(problem, roles["champion"], dt.datetime.now(dt.UTC))
    state = RolloutState.from_dict(stored)
    if (state.champion, state.challenger) != (roles["champion"], roles.get("challenger")):
        raise ReleaseError(
            f"{problem}: the rollout state ({state.champion} vs {state.challenger}) does not "
            f"match the registry's roles {roles}: roles were changed outside ml.release; "
            "use `promote` or `rollback` to put them right"
        )
    return state


def load_state(registry: Registry, problem: str) -> RolloutState | None:
    """The stored state; None when the problem has no champion. A registry from before the
    rollout state (roles only) serves its champion alone: its "challenger" may be a replaced
    champion, which must not get traffic.

    Read without the lock. A transition writes roles.json and then rollout.json under the
    lock, so a reader between the two sees them disagree: a disagreement is read again under
    the lock before it is believed (ReleaseError: roles changed outside ml.release)."""
    try:
        return _read_state(registry, problem)
    except ReleaseError:
        with registry.locked(problem):  # waits for a transition in flight
            return _read_state(registry, problem)


def _alone(problem: str, champion: str, now: dt.datetime) -> RolloutState:
    return RolloutState(
        problem, champion, experiment=experiment_name(problem, champion, None), since=_iso(now)
    )


def _commit(registry: Registry, published_url: str, state: RolloutState) -> RolloutState:
    """The end of a role change, holding the lock its caller read and decided under: the
    rollout state, then the published pointers (`publish`), then the serving entry.

    experiments.json is written here, under the lock, rather than derived later from the state:
    the server does not check that the versions it has loaded are the ones an experiment's name
    holds, so its two inputs must move in order, pointers first, and only the lock orders them
    against another transition's (written after the lock, an admit's entry could name its
    challenger while a rollback's publish had removed it, or another admit's had replaced it).
    The price: `publish` copies a new version's files with the lock held (seconds for these
    models; the lease is 60 s)."""
    registry.set_rollout(state.problem, state.to_dict())
    registry.publish(state.problem, published_url)
    _serve(published_url, state)
    return state


def admit(
    registry: Registry,
    published_url: str,
    problem: str,
    version: str,
    reason: str,
    *,
    decided_by: str = "offline gates",
    evidence: Mapping[str, Any] | None = None,
    policy: Policy = Policy(),
    now: dt.datetime | None = None,
) -> RolloutState:
    """Make `version` the challenger at the policy's first stage against the champion. A
    challenger it replaces is recorded as rolled back. The server first goes back to the
    champion alone, so it never shows the new challenger under the old experiment's name."""
    now = _now(now)
    with registry.locked(problem):  # read, decide and write as one writer
        state = load_state(registry, problem)
        if state is None:
            raise ReleaseError(
                f"{problem} has no champion: bootstrap one before admitting {version}"
            )
        if version in (state.champion, state.challenger):
            raise ReleaseError(f"{version} is already the {problem} champion or challenger")
        _serve(published_url, _alone(problem, state.champion, now))
        if state.challenger is not None:
            registry.record(
                problem,
                "rolled_back",
                state.challenger,
                f"replaced by {version}: {reason}",
                decided_by=decided_by,
                stage=state.stage_name,
                traffic=0.0,
                at=now,
            )
        first = policy.stages[0]
        registry.assign(
            problem,
            "challenger",
            version,
            reason,
            decided_by=decided_by,
            stage=first.name,
            traffic=first.traffic,
            evidence=evidence,
            at=now,
        )
        new = RolloutState(
            problem,
            state.champion,
            version,
            0,
            first.name,
            first.traffic,
            _iso(now),
            experiment_name(problem, state.champion, version),
            _iso(now),
        )
        return _commit(registry, published_url, new)


def promote(
    registry: Registry,
    published_url: str,
    problem: str,
    version: str,
    reason: str,
    *,
    decided_by: str = "operator",
    evidence: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> RolloutState:
    """Make `version` the champion, in one write of the roles; the old champion is recorded as
    retired. A challenger other than `version` was measured against the old champion, so its
    rollout ends (recorded as rolled back)."""
    now = _now(now)
    with registry.locked(problem):  # read, decide and write as one writer
        roles = registry.roles(problem)
        old, challenger = roles.get("champion"), roles.get("challenger")
        if version == old:
            raise ReleaseError(f"{version} is already the {problem} champion")
        stored = registry.rollout(problem) or {}
        stage = stored.get("stage_name") if version == challenger else None
        lines: list[dict[str, Any]] = [
            {
                "role": "champion",
                "version": version,
                "reason": reason,
                "previous": old,
                "decided_by": decided_by,
                "stage": stage,
                "traffic": 1.0,
                "evidence": evidence,
                "at": now,
            }
        ]
        if old is not None:
            lines.append(
                {
                    "role": "retired",
                    "version": old,
                    "reason": f"replaced by {version}",
                    "decided_by": decided_by,
                    "traffic": 0.0,
                    "at": now,
                }
            )
        if challenger not in (None, version):
            lines.append(
                {
                    "role": "rolled_back",
                    "version": challenger,
                    "reason": f"the champion changed to {version}",
                    "decided_by": decided_by,
                    "stage": stored.get("stage_name"),
                    "traffic": 0.0,
                    "at": now,
                }
            )
        # the lines first, then the pointers; publishing leaves no challenger pointer
        registry.set_roles(problem, {"champion": version, "challenger": None}, lines=lines)
        return _commit(registry, published_url, _alone(problem, version, now))


def bootstrap(
    registry: Registry,
    published_url: str,
    problem: str,
    version: str,
    reason: str,
    *,
    evidence: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> RolloutState:
    """The first champion of a problem, at once: a small shop is served from day one."""
    with registry.locked(problem):  # two bootstraps at once: one champion, one refusal
        if registry.roles(problem).get("champion") is not None:
            raise ReleaseError(
                f"{problem} already has a champion: bootstrap applies only without one"
            )
        return promote(
            registry,
            published_url,
            problem,
            version,
            reason,
            decided_by="bootstrap",
            evidence=evidence,
            now=now,
        )


def rollback(
    registry: Registry,
    published_url: str,
    problem: str,
    reason: str,
    *,
    decided_by: str = "operator",
    evidence: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> RolloutState:
    """End the challenger's rollout: the server goes back to the champion alone first. Reads
    the roles, not the rollout state, so it also puts right roles changed by hand."""
    now = _now(now)
    with registry.locked(problem):  # read, decide and write as one writer
        roles = registry.roles(problem)
        if "champion" not in roles or "challenger" not in roles:
            raise ReleaseError(f"{problem} has no challenger to roll back (roles {roles})")
        alone = _alone(problem, roles["champion"], now)
        _serve(published_url, alone)
        line = {
            "role": "rolled_back",
            "version": roles["challenger"],
            "reason": reason,
            "decided_by": decided_by,
            "stage": (registry.rollout(problem) or {}).get("stage_name"),
            "traffic": 0.0,
            "evidence": evidence,
            "at": now,
        }
        registry.set_roles(problem, {"challenger": None}, lines=[line])
        return _commit(registry, published_url, alone)  # publish unloads the challenger


def _moved(looked: RolloutState, now: RolloutState | None, action: str) -> str | None:
    """Why the state read under the lock (`now`) is not the one the look decided on, if it is
    not: the same champion and challenger for a rollback (a breach condemns the pair at any
    stage), and the same stage, begun at the same moment, for a ramp step or a promotion."""
    if action == "hold":  # changes nothing: serves whatever the state is now
        return None
    fields = ["champion", "challenger"]
    if action in ("advance", "promote"):
        fields += ["stage", "stage_name", "stage_started_at"]
    if now is None:
        return "the problem has no champion any more"
    changed = [f for f in fields if getattr(looked, f) != getattr(now, f)]
    if not changed:
        return None
    was = ", ".join(f"{f} {getattr(looked, f)} -> {getattr(now, f)}" for f in changed)
    return f"the release changed during the look ({was})"


def carry_out(
    registry: Registry,
    published_url: str,
    state: RolloutState,
    decision: Decision,
    *,
    now: dt.datetime | None = None,
) -> tuple[RolloutState, Decision]:
    """Carry out the controller's decision on the look's `state`, holding the problem's lock:
    the state is read again under it, and if another writer (an operator, a training run,
    another look) changed what the decision is about since the look read it, nothing is
    applied and the decision returned is a hold saying what changed; the next look decides on
    the new state. Otherwise a ramp step is recorded and served, a rollback or promotion changes
    the roles, and a hold rewrites the serving entry from the state read under the lock
    (healing a lost write). Returns the state after and the decision carried out."""
    now = _now(now)
    if decision.action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {decision.action!r}")
    with registry.locked(state.problem):
        current = load_state(registry, state.problem)
        moved = _moved(state, current, decision.action)
        if moved is not None:
            after = current or state
            held = Decision(
                "hold",
                after.stage,
                after.stage_name,
                after.traffic,
                f"{decision.action} not applied: {moved}; the next look decides on the new state",
                decision.guardrails,
                decision.evidence,
            )
            return after, held
        if current is None:  # a hold, and nothing to serve
            return state, decision
        if decision.action == "hold":
            _serve(published_url, current)
            return current, decision
        evidence = dict(decision.evidence)
        if decision.action == "rollback":
            after = rollback(
                registry,
                published_url,
                state.problem,
                decision.reason,
                decided_by=CONTROLLER,
                evidence=evidence,
                now=now,
            )
            return after, decision
        if decision.action == "promote":
            after = promote(
                registry,
                published_url,
                state.problem,
                current.challenger,
                decision.reason,
                decided_by=CONTROLLER,
                evidence=evidence,
                now=now,
            )
            return after, decision
        new = dataclasses.replace(
            current,
            stage=decision.stage,
            stage_name=decision.stage_name,
            traffic=decision.traffic,
            stage_started_at=_iso(now),
        )
        registry.record(
            state.problem,
            "challenger",
            current.challenger,
            decision.reason,
            previous=current.challenger,
            decided_by=CONTROLLER,
            stage=decision.stage_name,
            traffic=decision.traffic,
            evidence=evidence,
            at=now,
        )
        registry.set_rollout(state.problem, new.to_dict())
        _serve(published_url, new)  # a ramp moves no pointer: nothing to publish
        return new, decision


def apply(
    registry: Registry,
    published_url: str,
    state: RolloutState,
    decision: Decision,
    *,
    now: dt.datetime | None = None,
) -> RolloutState:
    """`carry_out`, returning only the state after (a decision the state moved under is not
    applied)."""
    return carry_out(registry, published_url, state, decision, now=now)[0]
