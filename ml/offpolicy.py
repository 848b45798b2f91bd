"""Off-policy estimates of a challenger's click-through from the champion's logged exposures.

The server explores on a share of recommender requests and logs, for each shown item, the
probability that the logging policy shows that item at that position (`explore`). A replay
of those logs against a target recommender's lists (`target_lists`) estimates the target's
click-through before it gets any traffic (`replay`); `logged_ctr` is the on-policy number the
estimates are read against.

Exploration (`Exploration`, `explore`): with probability `share` per request the shown k are
the first k of a uniformly random order of the model's top M = max(pool, k) (Plackett-Luce at
infinite temperature), otherwise the model's top k. The item shown at position r (0-based)
then has the exact marginal propensity

    (1 - share) * [item is the model's rank r] + share / M

(a uniform permutation puts any of the M items at r with chance 1 / M). With fewer than M
items available, M is the number available. `rng.random() < share` decides (one draw on
every request, so the stream does not depend on the share), then `rng.permutation(M)`. A
model list is deduplicated first (first occurrence wins): a repeated item would have two
propensities at once.

The estimand is the target's expected clicks per exposure, which is its click-through
(clicked exposures / exposures) when a shopper clicks at most once per widget, as under the
attraction model below and in ml.simulate. Each estimator states the click model it needs:

- IPS and SNIPS assume the item-position model: a click depends on the item and its position
  only (not on the rest of the list). Per exposure i and position k, w_ik = [target_ik ==
  items_ik] / propensity_ik; IPS is mean_i sum_k clicks_ik w_ik, unbiased under that model.
  A logging propensity <= 0 (or missing) cannot happen under a correct log: it raises.
- SNIPS normalizes slot by slot: sum_k (n_k / n) (sum_i c_ik w_ik) / (sum_i w_ik), the sums
  over the n_k exposures that have a position k (len(items) > k; a target list is cut to its
  exposure's length, so the other exposures have no slot k under the target either). With
  all weights equal it is the on-policy mean exactly. A position no exposure matched
  contributes 0: it is unsupported, and `matched` (exposures with at least one matching
  position) tells how much of the log supports the estimate at all.
- DM and DR use the attraction (multinomial choice) model, the shape of ml.simulate's
  shopper: P(click on j at rank r | list L, context x) = (1 - leave) v(j|x) b_r / Z(L, x),
  with b_r = 1 + alpha / r**eta (rank r = position + 1), Z = 1 + sum_{l in L} v(l|x)
  (b_{r_l} - 1), v(.|x) the `TransitionModel`'s next-view probabilities after the last viewed
  item, and `leave` the chance that the shopper leaves instead of viewing another product
  (every session's last widget is never clicked; without this term the fit would read those
  widgets as weak attraction and bend alpha and eta to explain them).
  DM is mean_i of the model's CTR of the target list. DR adds the logged residuals, moved
  to the target list's competition:
      DR_i = DM_i + sum_k w_ik (c_ik - chat(items_ik, k | items_i, x_i)) Zhat(items_i) / Zhat(T_i)
  Under the attraction model an item shared at the same rank has click chance v b_r / Z(L)
  in the logged list and v b_r / Z(T) in the target's: the ratio of normalizers turns a
  logged click into the target's, which is what item-position IPS gets wrong when the
  target's list competes differently (a target of stronger items at the top takes clicks
  from its own items; IPS credits it with the clicks the weaker logged lists let through).
  DR is unbiased when the model is right (the residuals then have mean 0 whatever the
  weights), or when the propensities and the model's ratio Z(L) / Z(T) are right: a wrong
  v(j|x) b_r of the slot's own item is then corrected by the logged clicks.

Intervals are session-clustered (exposures of a session are not independent), by the delta
method: a mean over exposures is the ratio sum_s S_s / sum_s N_s of per-session sums
(`ml.sequential.linearize`), var = var(linearized, ddof 1) / sessions, a normal interval.
SNIPS linearizes each position's ratio and its slot share the same way and sums them per
session. The attraction model is taken as fixed (its fit's uncertainty is not in DM's or
DR's interval).

The effective sample size is (sum W)^2 / sum W^2 over exposures with W_i = mean_k w_ik (the
exposure's average weight); it counts exposures, so DM's is the number of exposures.

`TransitionModel`: v(j|i) = (count(i, j) + smoothing pop(j)) / (count(i, .) + smoothing),
counts of consecutive pairs in training sessions, pop(j) the item's share of all views; an
unknown last item or an empty context gives pop. An item never viewed gets the floor
0.5 / total views, so v sums to 1 over the items seen plus a little for each unseen one.

`fit_click_model` adds the log's own view transitions to those counts (`log_transitions`:
each exposure's context[-2] -> context[-1], the view that led to its request) before it
fits alpha, eta and leave. Training sessions alone are too few for v on most rows of a large
catalogue, and popularity smoothing then puts mass on items the shopper never views next;
the position fit bends to absorb v's errors (in a simulated world of 1,000 products with 500
training sessions and the true alpha = eta = 1: alpha 24, leave 0.49 against 0.21 who left,
and DM of a popularity list twice its truth; with the log's transitions alpha 1.3, leave
0.22, DM 5% high). A logged transition was made with a widget L on screen (the session's
exposure whose context is this one's minus its last item, when logged), which tilts the next
view j by b_j / Z(L) (b_j = 1 off the list), so it counts Z(L) / b_j(L) under the last fit:
its expected count is then T(j|i) whatever L showed. The fit alternates (`rounds`, default 5)
between these weights and alpha, eta and leave, from weight 1. The log's transitions (its
clicks among them) go into the very v that DM and DR read on the same contexts: in-sample,
each exposure's own next view one count of its row (no cross-fitting).

`AttractionModel.fit`: maximum likelihood of alpha, eta > 0 and leave over the log's exposures
(each one's likelihood is the product of its clicked positions' chances, or P(no click) =
leave + (1 - leave)(1 - sum_L v) / Z), by L-BFGS-B on log-parameters within [1e-3, 1e3] for
alpha and [1e-2, 10] for eta, and on the logit of leave within about [1e-4, 0.98]. Leaving is
taken as independent of the list shown (true in ml.simulate; a list that drives shoppers away
would be read as weak attraction instead).

An empty log gives NaN values (counts 0), a log of one session NaN bounds: a gate reads
`exposures`, `sessions` and `matched` before the value. Target lists are deduplicated (first
occurrence wins) and cut to their exposure's length; an item past the shown length cannot
match and is not in DM's list.

Library considered: Open Bandit Pipeline (obp 0.5.7, the last release, 2023) has slate IPS
estimators (standard, independent, reward-interaction) but requires Python < 3.11 (pip
--dry-run against our 3.11 venv refuses it) and has no session-clustered intervals or
attraction-model DR; the estimators here are ~200 lines, each checked in
tests/test_offpolicy.py against a hand computation or a simulation with a known truth.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml import sequential
from ml.serving_log import json_list

LOG_COLUMNS = (
    "exposure_id",
    "session_id",
    "context",
    "items",
    "propensities",
    "clicks",
    "explored",
)
ESTIMATORS = ("ips", "snips", "dm", "dr")
CLICK_MODEL_ROUNDS = 5  # reweightings of the log's transitions (`fit_click_model`)
RecommendBatch = Callable[[Sequence[Sequence[str]], int], Sequence[Sequence[str]]]


# --- exploration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exploration:
    """Shuffle exploration: with probability `share` per request, the shown k are the first k
    of a uniformly random order of the model's top M = max(pool, k) (Plackett-Luce at infinite
    temperature); otherwise the model's top k. Propensity of the item shown at position r
    (0-based) under this mixture logging policy:
        (1 - share) * [item is the model's rank r] + share / M     (item in the top M, r < k)
    With share 0 the list is the model's top k and every propensity is 1.0."""

    share: float = 0.05
    pool: int = 20

    def __post_init__(self) -> None:
        if not (isinstance(self.share, int | float) and 0 <= self.share <= 1):
            raise ValueError(f"Exploration.share must be in [0, 1], got {self.share!r}")
        if isinstance(self.pool, bool) or not isinstance(self.pool, int) or self.pool < 1:
            raise ValueError(f"Exploration.pool must be an integer >= 1, got {self.pool!r}")

    @property
    def name(self) -> str:
        """The logged `logging_policy`, e.g. "shuffle:top20:0.05"."""
        return f"shuffle:top{self.pool}:{self.share:g}"

    def size(self, k: int) -> int:
        """M = max(pool, k): how many of the model's items the shuffle draws from."""
        _check_k(k)
        return max(self.pool, k)


@dataclass(frozen=True)
class Shown:
    items: list[str]
    propensities: list[float]  # aligned with items
    explored: bool


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def explore(
    ranked: Sequence[str], k: int, exploration: Exploration, rng: np.random.Generator
) -> Shown:
    """`ranked`: the model's list best first, at least min(M, available) long (the server asks
    the model for M items). Fewer than M available: M = len(ranked) for the shuffle and the
    propensities."""
    _check_k(k)
    top = list(dict.fromkeys(ranked))[: exploration.size(k)]
    m = len(top)
    shown = min(k, m)
    share = float(exploration.share)
    explored = bool(rng.random() < share)
    if explored and m:
        order = rng.permutation(m)[:shown]
        items = [top[i] for i in order]
    else:
        items = top[:shown]
    propensities = [(1 - share) * (item == top[r]) + share / m for r, item in enumerate(items)]
    return Shown(items=items, propensities=propensities, explored=explored)


# --- the replay log -----------------------------------------------------------------------------


def replay_log(exposures: pd.DataFrame, clicks: pd.DataFrame) -> pd.DataFrame:
    """The replay log from the marts: `experiment_exposures` rows (items, context and
    propensities as JSON text) of the recommender in mode 'ab' (or null), without an error,
    with propensities and context; `experiment_clicks` rows (exposure_id, item) set
    clicks[k] = 1 where a click names items[k] (a click on an item not shown is ignored).
    Columns: exposure_id, session_id, context, items, propensities, clicks, explored."""
    missing = {"problem", "exposure_id", "session_id", "items", "context", "propensities"} - set(
        exposures.columns
    )
    if missing:
        raise ValueError(f"the exposures lack columns {sorted(missing)}")
    rows = exposures[exposures["problem"] == "recommender"]
    if "mode" in rows.columns:
        rows = rows[rows["mode"].isna() | (rows["mode"] == "ab")]
    if "error" in rows.columns:
        rows = rows[~rows["error"].fillna(False).astype(bool)]
    rows = rows[rows["propensities"].notna() & rows["context"].notna() & rows["items"].notna()]
    clicked: dict[str, set[str]] = defaultdict(set)
    for exposure, item in zip(clicks["exposure_id"], clicks["item"], strict=True):
        clicked[str(exposure)].add(str(item))
    records = []
    for row in rows.itertuples(index=False):
        items = [str(i) for i in json_list(row.items)]
        propensities = [float(p) for p in json_list(row.propensities)]
        if len(propensities) != len(items):
            raise ValueError(
                f"exposure {row.exposure_id}: {len(items)} items but "
                f"{len(propensities)} propensities"
            )
        hits = clicked.get(str(row.exposure_id), set())
        explored = getattr(row, "explored", False)
        records.append(
            (
                str(row.exposure_id),
                str(row.session_id),
                [str(i) for i in json_list(row.context)],
                items,
                propensities,
                [int(i in hits) for i in items],
                False if pd.isna(explored) else bool(explored),
            )
        )
    return pd.DataFrame.from_records(records, columns=list(LOG_COLUMNS))


def target_lists(recommend_batch: RecommendBatch, log: pd.DataFrame) -> list[list[str]]:
    """The target policy's list for each logged context, as long as that exposure's shown
    list: one `recommend_batch(contexts, k)` call with k the longest shown list."""
    if len(log) == 0:
        return []
    lengths = [len(items) for items in log["items"]]
    k = max(max(lengths), 1)
    lists = recommend_batch([list(c) for c in log["context"]], k)
    if len(lists) != len(log):
        raise ValueError(f"recommend_batch returned {len(lists)} lists for {len(log)} contexts")
    return [list(dict.fromkeys(lst))[:n] for lst, n in zip(lists, lengths, strict=True)]


# --- click models -------------------------------------------------------------------------------


class TransitionModel:
    """The offline click model's item part: v(j | last viewed item), fitted on sessions (see
    the module docstring for the smoothing and the floor of unseen items)."""

    def __init__(
        self,
        counts: dict[str, dict[str, int]],
        popularity: dict[str, float],
        total_views: int,
        smoothing: float = 1.0,
    ):
        if smoothing <= 0:
            raise ValueError(f"smoothing must be positive, got {smoothing}")
        if total_views <= 0:
            raise ValueError("a TransitionModel needs at least one view")
        self.counts = counts
        self.row_totals = {i: sum(row.values()) for i, row in counts.items()}
        self.popularity = popularity
        self.total_views = total_views
        self.smoothing = float(smoothing)
        self.floor = 0.5 / total_views

    @classmethod
    def fit(cls, sessions: Iterable[Sequence[str]], smoothing: float = 1.0) -> TransitionModel:
        counts: dict[str, Counter] = defaultdict(Counter)
        views: Counter = Counter()
        for session in sessions:
            items = [str(i) for i in session]
            views.update(items)
            for a, b in itertools.pairwise(items):
                counts[a][b] += 1
        total = sum(views.values())
        if total == 0:
            raise ValueError("a TransitionModel needs at least one view in the sessions")
        popularity = {item: n / total for item, n in views.items()}
        return cls({a: dict(row) for a, row in counts.items()}, popularity, total, smoothing)

    def probabilities(self, last: str | None, items: Sequence[str]) -> np.ndarray:
        """v(j | last) of each of `items` (pop when `last` is None or unknown)."""
        return self.matrix([last], [items])[0]

    def matrix(self, lasts: Sequence[str | None], lists: Sequence[Sequence[str]]) -> np.ndarray:
        """v(j | last) of each list's items after its last viewed item, one row per list,
        padded with 0 to the longest list."""
        pop, floor, s = self.popularity, self.floor, self.smoothing
        flat: list[float] = []
        for last, items in zip(lasts, lists, strict=True):
            row = self.counts.get(last) if last is not None else None
            if row:
                total = self.row_totals[last] + s
                flat.extend((row.get(j, 0) + s * pop.get(j, floor)) / total for j in items)
            else:
                flat.extend(pop.get(j, floor) for j in items)
        return _padded(np.asarray(flat, dtype=float), _lengths(lists))

    def with_log(
        self,
        log: pd.DataFrame,
        model: AttractionModel | None = None,
        links: tuple[list[str], list[str], np.ndarray] | None = None,
    ) -> TransitionModel:
        """A new model with the log's own view transitions (`log_transitions`, or `links` when
        given: what it returned for this log) added to the counts and the views, each weighted
        Z(L) / b_j(L) under `model` for the widget L that was on screen (b_j = 1 off the list),
        1 without a model or a known widget."""
        src, dst, previous = links if links is not None else log_transitions(log)
        weights = np.ones(len(src))
        known = np.flatnonzero(previous >= 0)
        if model is not None and len(known):
            rows = previous[known]
            items = [list(log["items"].iloc[r]) for r in rows]
            lasts = [_last(log["context"].iloc[r]) for r in rows]
            _, z = model.chance_matrix(model.transitions.matrix(lasts, items))
            boosts = model.boosts(max(map(len, items)))
            rank = [
                shown.index(dst[i]) if dst[i] in shown else -1
                for i, shown in zip(known, items, strict=True)
            ]
            b = np.array([1 + boosts[r] if r >= 0 else 1.0 for r in rank])
            weights[known] = z / b
        counts = {a: dict(row) for a, row in self.counts.items()}
        views = {j: p * self.total_views for j, p in self.popularity.items()}
        for a, b_, weight in zip(src, dst, weights, strict=True):
            row = counts.setdefault(a, {})
            row[b_] = row.get(b_, 0.0) + weight
            views[b_] = views.get(b_, 0.0) + weight
        total = self.total_views + float(weights.sum())
        popularity = {j: n / total for j, n in views.items()}
        return TransitionModel(counts, popularity, total, self.smoothing)


def _last(context: Sequence[str]) -> str | None:
    return str(context[-1]) if len(context) else None


LINK_WINDOW = 20  # items of context that identify an exposure's request within its session


def log_transitions(log: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray]:
    """The logged sessions' view transitions: per exposure whose context has two items or
    more, (context[-2], context[-1]), the view that led to its request, and the row of the
    exposure whose widget was on screen during it: the same session's exposure whose context
    ends with this one's minus its last item (its last `LINK_WINDOW` items); -1 when that
    request is not in the log (the session's first, or not logged)."""
    contexts = [[str(i) for i in x] for x in log["context"]]
    sessions = [str(s) for s in log["session_id"]]
    keys = (tuple(x[-LINK_WINDOW:]) for x in contexts)
    at = {(s, key): r for r, (s, key) in enumerate(zip(sessions, keys, strict=True))}
    src, dst, previous = [], [], []
    for s, x in zip(sessions, contexts, strict=True):
        if len(x) >= 2:
            src.append(x[-2])
            dst.append(x[-1])
            previous.append(at.get((s, tuple(x[:-1][-LINK_WINDOW:])), -1))
    return src, dst, np.asarray(previous, dtype=np.int64)


class AttractionModel:
    """The stated click model of DM and DR: P(click on j at rank r | L, x) =
    (1 - leave) v(j|x) b_r / Z, b_r = 1 + alpha / r**eta, Z = 1 + sum_{l in L} v(l|x) (b_{r_l} - 1);
    `leave` is the chance that the shopper leaves without looking at the widget (the last one
    of every session, in a simulated session and mostly in a real one)."""

    def __init__(
        self,
        transitions: TransitionModel,
        alpha: float = 1.0,
        eta: float = 1.0,
        leave: float = 0.0,
    ):
        if not alpha > 0 or not eta > 0 or not 0 <= leave < 1:
            raise ValueError(
                f"alpha and eta must be positive and leave in [0, 1), got alpha={alpha}, "
                f"eta={eta}, leave={leave}"
            )
        self.transitions = transitions
        self.alpha = float(alpha)
        self.eta = float(eta)
        self.leave = float(leave)

    def boosts(self, n: int) -> np.ndarray:
        """b_r - 1 = alpha / r**eta for ranks 1..n."""
        return self.alpha / np.arange(1, n + 1, dtype=float) ** self.eta

    def chances(self, context: Sequence[str], items: Sequence[str]) -> tuple[np.ndarray, float]:
        """(click probability per position, Z) of the list in that context."""
        v = self.transitions.probabilities(_last(context), list(items))
        chances, z = self.chance_matrix(v[None, :])
        return chances[0], float(z[0])

    def chance_matrix(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(click probabilities, Z per row) of lists given as a padded matrix of v (a padded
        position has v = 0, so it neither competes nor gets clicks)."""
        boost = self.boosts(v.shape[1])
        z = 1 + v @ boost
        return (1 - self.leave) * v * (1 + boost) / z[:, None], z

    def normalizer(self, context: Sequence[str], items: Sequence[str]) -> float:
        return self.chances(context, items)[1]

    def click_probabilities(self, context: Sequence[str], items: Sequence[str]) -> np.ndarray:
        return self.chances(context, items)[0]

    def ctr(self, context: Sequence[str], items: Sequence[str]) -> float:
        return float(self.click_probabilities(context, items).sum())

    def fit(self, log: pd.DataFrame) -> AttractionModel:
        """A new model with the maximum-likelihood alpha, eta and leave on the log's exposures:
        a clicked position's chance (1 - leave) v b_r / Z, a widget without a click
        leave + (1 - leave)(1 - sum_L v) / Z (the sum clipped below 1)."""
        from scipy.optimize import minimize
        from scipy.special import expit

        if len(log) == 0 or not any(any(c) for c in log["clicks"]):
            raise ValueError("the replay log has no clicks: alpha, eta and leave cannot be fitted")
        v = self.transitions.matrix([_last(x) for x in log["context"]], list(log["items"]))
        c = _padded_rows(log["clicks"])
        ranks = np.arange(1, v.shape[1] + 1, dtype=float)
        n_clicks = c.sum(axis=1)
        clicked = n_clicks > 0
        rest = np.clip(1 - v.sum(axis=1), 1e-9, None)[~clicked]  # 1 - sum_L v, no-click rows

        def negative_log_likelihood(theta: np.ndarray) -> float:
            alpha, eta = np.exp(theta[:2])
            leave = float(expit(theta[2]))
            boost = alpha / ranks**eta
            z = 1 + v @ boost
            on = (n_clicks[clicked] * (math.log1p(-leave) - np.log(z[clicked]))).sum()
            on += (c[clicked] @ np.log1p(boost)).sum()
            off = np.log(leave + (1 - leave) * rest / z[~clicked]).sum()
            return float(-(on + off))

        bounds = [
            (math.log(1e-3), math.log(1e3)),
            (math.log(1e-2), math.log(10.0)),
            (-9.0, 4.0),  # leave within about [1e-4, 0.98]
        ]
        start = np.array([math.log(self.alpha), math.log(self.eta), math.log(0.1 / 0.9)]).clip(
            [b[0] for b in bounds], [b[1] for b in bounds]
        )
        result = minimize(negative_log_likelihood, start, method="L-BFGS-B", bounds=bounds)
        alpha, eta = np.exp(result.x[:2])
        return AttractionModel(
            self.transitions, alpha=float(alpha), eta=float(eta), leave=float(expit(result.x[2]))
        )


def fit_click_model(
    transitions: TransitionModel, log: pd.DataFrame, rounds: int = CLICK_MODEL_ROUNDS
) -> AttractionModel:
    """The click model of DM and DR for a log: v from `transitions` plus the log's own view
    transitions (`TransitionModel.with_log`), alpha, eta and leave fitted on the log, then
    `rounds` times the log's transitions reweighted by Z / b under the last fit and refitted
    (module docstring)."""
    links = log_transitions(log)  # the same every round: only their weights change
    model = AttractionModel(transitions.with_log(log, links=links)).fit(log)
    for _ in range(rounds):
        refit = AttractionModel(transitions.with_log(log, model, links), model.alpha, model.eta)
        model = refit.fit(log)
    return model


# --- estimators ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    estimator: str  # "ips" | "snips" | "dm" | "dr" | "logged"
    value: float  # estimated click-through per exposure (clicked exposures / exposures)
    low: float  # (1 - alpha) interval, session-clustered (delta method)
    high: float
    ess: float  # effective sample size (exposures)
    exposures: int
    sessions: int
    matched: int  # exposures where >= 1 target position has positive logging propensity


def _lengths(rows: Sequence[Sequence]) -> np.ndarray:
    return np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))


def _padded(flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Ragged rows given flat (concatenated) -> a matrix padded with 0."""
    width = int(lengths.max()) if len(lengths) else 0
    out = np.zeros((len(lengths), width), dtype=float)
    out[np.arange(width)[None, :] < lengths[:, None]] = flat
    return out


def _padded_rows(rows: Sequence[Sequence[float]]) -> np.ndarray:
    return _padded(np.fromiter(itertools.chain.from_iterable(rows), dtype=float), _lengths(rows))


def _sessions(log: pd.DataFrame) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(log["session_id"], sort=False)
    return codes, len(uniques)


def _interval(
    estimator: str, value: float, influence: np.ndarray, alpha: float, **counts
) -> Estimate:
    """The Estimate with a normal interval from per-session linearized values."""
    n = len(influence)
    variance = float(np.var(influence, ddof=1)) / n if n > 1 else math.nan
    low, high, _ = sequential.fixed_interval(value, variance, alpha)
    return Estimate(
        estimator=estimator, value=float(value), low=float(low), high=float(high), **counts
    )


def _mean_estimate(
    estimator: str,
    per_exposure: np.ndarray,
    codes: np.ndarray,
    n_sessions: int,
    alpha: float,
    **counts,
) -> Estimate:
    """A mean over exposures with its session-clustered interval (ratio of session sums)."""
    if len(per_exposure) == 0:
        return Estimate(estimator, math.nan, math.nan, math.nan, **counts)
    sums = np.bincount(codes, weights=per_exposure, minlength=n_sessions)
    sizes = np.bincount(codes, minlength=n_sessions).astype(float)
    linear = sequential.linearize(sums, sizes)
    return _interval(estimator, float(per_exposure.mean()), linear, alpha, **counts)


def _weights(
    log: pd.DataFrame, targets: Sequence[Sequence[str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w, clicks, mask of real positions) as padded exposure x position matrices."""
    if len(targets) != len(log):
        raise ValueError(f"{len(targets)} target lists for {len(log)} logged exposures")
    items, propensities, clicks = list(log["items"]), list(log["propensities"]), list(log["clicks"])
    lengths = _lengths(items)
    for name, rows in (("propensities", propensities), ("clicks", clicks)):
        bad = np.flatnonzero(_lengths(rows) != lengths)
        if len(bad):
            raise ValueError(
                f"exposure {log['exposure_id'].iloc[bad[0]]}: {name} are not aligned with items"
            )
    p = np.fromiter(itertools.chain.from_iterable(propensities), dtype=float)
    if not (p > 0).all():  # NaN fails too
        row = np.searchsorted(np.cumsum(lengths), np.flatnonzero(~(p > 0))[0], side="right")
        raise ValueError(
            f"exposure {log['exposure_id'].iloc[row]} has a logging propensity <= 0 or "
            f"missing: {list(propensities[row])}"
        )
    hit = np.fromiter(
        (
            k < len(target) and target[k] == item
            for shown, target in zip(items, targets, strict=True)
            for k, item in enumerate(shown)
        ),
        dtype=float,
        count=len(p),
    )
    mask = np.arange(int(lengths.max()) if len(lengths) else 0)[None, :] < lengths[:, None]
    return _padded(hit / p, lengths), _padded_rows(clicks), mask


def _ess(w: np.ndarray, lengths: np.ndarray) -> float:
    per = w.sum(axis=1) / np.maximum(lengths, 1)
    total = per.sum()
    return float(total**2 / (per**2).sum()) if total > 0 else 0.0


def _snips(
    w: np.ndarray, clicks: np.ndarray, mask: np.ndarray, codes: np.ndarray, n_sessions: int
) -> tuple[float, np.ndarray]:
    """Slot-wise SNIPS and its per-session linearized values (module docstring)."""
    n = len(w)
    sizes = np.bincount(codes, minlength=n_sessions).astype(float)
    value = 0.0
    influence = np.zeros(n_sessions)
    for k in range(w.shape[1]):
        a = np.bincount(codes, weights=clicks[:, k] * w[:, k], minlength=n_sessions)
        b = np.bincount(codes, weights=w[:, k], minlength=n_sessions)
        m = np.bincount(codes, weights=mask[:, k].astype(float), minlength=n_sessions)
        if b.sum() <= 0:
            continue  # unsupported slot: contributes 0
        ratio, share = a.sum() / b.sum(), m.sum() / n
        value += share * ratio
        influence += share * (a - ratio * b) / b.mean() + ratio * (m - share * sizes) / sizes.mean()
    return value, value + influence


def replay(
    log: pd.DataFrame,
    targets: Sequence[Sequence[str]],
    model: AttractionModel | None,
    alpha: float = 0.05,
) -> dict[str, Estimate]:
    """IPS and SNIPS of the target lists' click-through on the replay log and, with a model,
    DM and DR (see the module docstring for each one's click model and interval)."""
    w, clicks, mask = _weights(log, targets)
    codes, n_sessions = _sessions(log)
    lengths = mask.sum(axis=1)
    counts = {"exposures": len(log), "sessions": n_sessions}
    matched = int((w > 0).any(axis=1).sum()) if w.size else 0
    ess = _ess(w, lengths)
    ips = (clicks * w).sum(axis=1)
    out = {
        "ips": _mean_estimate(
            "ips", ips, codes, n_sessions, alpha, ess=ess, matched=matched, **counts
        )
    }
    if len(log) == 0:
        out["snips"] = Estimate("snips", math.nan, math.nan, math.nan, ess, matched=0, **counts)
    else:
        value, linear = _snips(w, clicks, mask, codes, n_sessions)
        out["snips"] = _interval("snips", value, linear, alpha, ess=ess, matched=matched, **counts)
    if model is None:
        return out
    lasts = [_last(x) for x in log["context"]]
    cut = [list(t)[:n] for t, n in zip(targets, lengths, strict=True)]  # as long as shown
    target_v = model.transitions.matrix(lasts, cut)
    target_v = np.pad(target_v, ((0, 0), (0, w.shape[1] - target_v.shape[1])))
    target_chances, target_z = model.chance_matrix(target_v)
    logged_chances, logged_z = model.chance_matrix(
        model.transitions.matrix(lasts, list(log["items"]))
    )
    dm = target_chances.sum(axis=1)
    residual = w * (clicks - logged_chances) * (logged_z / target_z)[:, None]
    dr = dm + residual.sum(axis=1)
    out["dm"] = _mean_estimate(
        "dm", dm, codes, n_sessions, alpha, ess=float(len(log)), matched=matched, **counts
    )
    out["dr"] = _mean_estimate(
        "dr", dr, codes, n_sessions, alpha, ess=ess, matched=matched, **counts
    )
    return out


def logged_ctr(log: pd.DataFrame, alpha: float = 0.05) -> Estimate:
    """On-policy: the clicks per exposure of the non-explored exposures (the click-through when
    a widget gets at most one click), the quantity the estimators estimate, session-clustered;
    its ess and matched are its exposures."""
    rows = log[~log["explored"].astype(bool)] if len(log) else log
    clicked = np.array([float(sum(c)) for c in rows["clicks"]], dtype=float)
    codes, n_sessions = _sessions(rows) if len(rows) else (np.zeros(0, dtype=np.int64), 0)
    n = len(rows)
    return _mean_estimate(
        "logged",
        clicked,
        codes,
        n_sessions,
        alpha,
        ess=float(n),
        matched=n,
        exposures=n,
        sessions=n_sessions,
    )
