"""Conversion models behind one small interface: fit, predict_proba, save, load.

Every model scores a `features.Batch` (feature rows plus the ordered events of the prefixes),
so the server hands any model the output of `batch_from_events`. `predict_proba` returns the
purchase probability per prefix as a 1-D array.

Artifacts cannot run code when loaded. The GRU saves its weights as a torch `state_dict` plus
a JSON config, and loads them with `torch.load(weights_only=True)`. scikit-learn models are
saved with skops (`estimator.skops`), never joblib or pickle, and loaded with an explicit
allow-list: skops trusts by default only scikit-learn estimators, numpy and builtin containers;
`ALLOW_LIST` names the few other types these models hold (the HistGradientBoosting tree
predictor, the logistic pipeline's `signed_log1p`). `skops.io.get_untrusted_types` lists what a
file holds beyond the defaults, and anything outside `ALLOW_LIST` is refused, naming the types,
before skops builds a single object; the loaded estimator must then be the class the model
expects. A folder with only an `estimator.joblib` (saved before skops) is refused: retrain.
Load from a folder the registry verified (`Registry.fetched`, `published_copy`) — the manifest
signature and every file's sha256 are checked first; `load_registered` does exactly that.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

import numpy as np
import pandas as pd

from ml.conversion.features import (
    ACTIONS,
    FEATURE_DTYPE,
    FEATURES,
    Batch,
    action_codes,
    column_ms,
    top_category,
)
from ml.optim import Adam
from ml.registry import ArtifactError, Manifest, Registry

CONFIG_FILE = "model.json"
# Every model fits on at most this many prefixes (whole sessions, seeded): scikit-learn copies
# its input to float64 (2 GB at 5M prefixes), the GRU's cost grows with the sessions, and none
# of them gains from more rows of these features (bench/conversion.py: the quality table at
# 1M sessions, 5M prefixes, against the oracle).
MAX_FIT_PREFIXES = 1_000_000
SMALL_BATCH = 1000  # prefixes; fewer are scored on one thread
PROBLEM = "conversion"
# Types an estimator file may hold beyond skops' default trust (sklearn estimators, numpy,
# builtins): only what the models below need. Adding one is a review of its code for load-time
# side effects.
ALLOW_LIST: frozenset[str] = frozenset(
    {
        "ml.conversion.models.signed_log1p",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    }
)


class UnsafeArtifactError(ArtifactError):
    """An estimator file that holds types outside the allow-list, or is not a skops file."""


def load_estimator(path: Path, expected: type) -> Any:
    """The estimator of a skops file, refusing any type outside `ALLOW_LIST` (named) and
    anything that is not a skops file or not an `expected` instance."""
    import zipfile

    import skops.io as sio

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise UnsafeArtifactError(f"{path} is not a skops file: refusing to load it")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # a damaged or hand-made archive
        raise UnsafeArtifactError(f"{path} is not a valid skops file ({exc})") from exc
    refused = sorted(set(untrusted) - ALLOW_LIST)
    if refused:
        raise UnsafeArtifactError(
            f"{path} holds types outside the allow-list: {', '.join(refused)}: refusing to load it"
        )
    estimator = sio.load(path, trusted=list(untrusted))
    if not isinstance(estimator, expected):
        raise UnsafeArtifactError(
            f"{path} holds a {type(estimator).__name__}, not the {expected.__name__} expected"
        )
    return estimator


class ConversionModel(Protocol):
    algorithm: ClassVar[str]

    @property
    def params(self) -> dict[str, Any]: ...

    def fit(self, batch: Batch, y: np.ndarray) -> Self: ...

    def predict_proba(self, batch: Batch) -> np.ndarray: ...

    def save(self, folder: Path) -> None: ...

    @classmethod
    def load(cls, folder: Path) -> Self: ...


def _write_config(folder: Path, algorithm: str, params: dict[str, Any], **extra: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"algorithm": algorithm, "params": params, "features": list(FEATURES), **extra}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def _read_config(folder: Path, algorithm: str) -> dict[str, Any]:
    config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    if config["algorithm"] != algorithm:
        raise ValueError(f"{folder} holds a {config['algorithm']} model, not {algorithm}")
    if config["features"] != list(FEATURES):
        raise ValueError(f"{folder} was trained on other features than this code builds")
    return config


def _matrix(batch: Batch) -> np.ndarray:
    """The feature rows as FEATURE_DTYPE, a view of the batch's array when its columns are
    already in FEATURES order (no copy of a GB-sized training matrix)."""
    frame = batch.features
    if list(frame.columns) != list(FEATURES):
        frame = frame[list(FEATURES)]
    return frame.to_numpy(dtype=FEATURE_DTYPE)


class MajorityModel:
    """The base rate for every prefix: what knowing nothing scores (ROC AUC 0.5)."""

    algorithm: ClassVar[str] = "majority"

    def __init__(self) -> None:
        self.rate = 0.0

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def fit(self, batch: Batch, y: np.ndarray) -> Self:
        self.rate = float(np.mean(y))
        return self

    def predict_proba(self, batch: Batch) -> np.ndarray:
        return np.full(len(batch), self.rate)

    def save(self, folder: Path) -> None:
        _write_config(Path(folder), self.algorithm, self.params, rate=self.rate)

    @classmethod
    def load(cls, folder: Path) -> Self:
        model = cls()
        model.rate = float(_read_config(folder, cls.algorithm)["rate"])
        return model


def fit_sample(starts: np.ndarray, max_prefixes: int | None, seed: int) -> np.ndarray | None:
    """Which prefixes a model fits on: all (None), or those of a seeded random sample of whole
    sessions (a session is its `Batch.starts` value) holding at most `max_prefixes`."""
    if max_prefixes is None or len(starts) <= max_prefixes:
        return None
    if max_prefixes < 1:
        raise ValueError(f"max_fit_prefixes must be at least 1, got {max_prefixes}")
    sessions, which = np.unique(starts, return_inverse=True)
    sizes = np.bincount(which)
    order = np.random.default_rng(seed).permutation(len(sessions))
    chosen = np.zeros(len(sessions), dtype=bool)
    chosen[order[np.cumsum(sizes[order]) <= max_prefixes]] = True
    return chosen[which]


class _SklearnModel:
    """A scikit-learn estimator on the feature rows, saved with skops (see the module
    docstring).

    It fits on at most `max_fit_prefixes` prefixes (`fit_sample`; None: on all of them).
    """

    algorithm: ClassVar[str] = ""
    WEIGHTS: ClassVar[str] = "estimator.skops"
    LEGACY_WEIGHTS: ClassVar[str] = "estimator.joblib"
    FIT_THREADS: ClassVar[int | None] = None  # BLAS / OpenMP threads of fit (None: default)

    def __init__(
        self, seed: int = 0, max_fit_prefixes: int | None = MAX_FIT_PREFIXES, **params: Any
    ) -> None:
        self.seed = seed
        self.max_fit_prefixes = max_fit_prefixes
        self._params = params
        self.estimator: Any = None
        self.log: Callable[[str], None] = lambda message: None

    @property
    def params(self) -> dict[str, Any]:
        return {"seed": self.seed, "max_fit_prefixes": self.max_fit_prefixes, **self._params}

    def _estimator(self) -> Any:
        raise NotImplementedError

    @classmethod
    def _estimator_class(cls) -> type:
        raise NotImplementedError

    def fit(self, batch: Batch, y: np.ndarray) -> Self:
        x, y = _matrix(batch), np.asarray(y)
        rows = fit_sample(batch.starts, self.max_fit_prefixes, self.seed)
        if rows is not None:
            self.log(f"{self.algorithm}: fitting on {rows.sum():,} of {len(x):,} prefixes")
            x, y = x[rows], y[rows]
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.FIT_THREADS):
            self.estimator = self._estimator().fit(x, y)
        return self

    def predict_proba(self, batch: Batch) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        if not len(batch):
            return np.zeros(0)
        # OpenMP threads cost more than they save on a few rows: a single prefix took 200 ms
        # instead of 6 ms on a busy 2-core machine (HistGradientBoosting).
        threads = 1 if len(batch) < SMALL_BATCH else None
        with threadpool_limits(limits=threads, user_api="openmp"):
            return self.estimator.predict_proba(_matrix(batch))[:, 1]

    def save(self, folder: Path) -> None:
        import skops.io as sio

        _write_config(Path(folder), self.algorithm, self.params)
        sio.dump(self.estimator, Path(folder) / self.WEIGHTS)

    @classmethod
    def load(cls, folder: Path) -> Self:
        """Loads the skops file with the allow-list; never unpickles."""
        folder = Path(folder)
        config = _read_config(folder, cls.algorithm)
        if not (folder / cls.WEIGHTS).exists() and (folder / cls.LEGACY_WEIGHTS).exists():
            raise UnsafeArtifactError(
                f"{folder} holds a {cls.algorithm} model saved as a pickle"
                f" ({cls.LEGACY_WEIGHTS}), which loading would run: refusing it; retrain to"
                f" save it as {cls.WEIGHTS}"
            )
        model = cls(**config["params"])
        model.estimator = load_estimator(folder / cls.WEIGHTS, cls._estimator_class())
        return model


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """log1p of the magnitude with the sign kept: log1p itself on x >= 0, finite on any x.

    Features may be negative (`net_cart` after a `remove` of an item carted in an earlier
    visit); plain log1p gave -inf at -1 and NaN below, which failed training and scoring.
    """
    return np.sign(x) * np.log1p(np.abs(x))


class LogisticModel(_SklearnModel):
    """Logistic regression on signed-log1p-scaled features: the linear baseline gates compare
    with. The scaler works in place on the transform's fresh float64 output, so the solver
    gets its input without another copy."""

    algorithm: ClassVar[str] = "logistic"
    # 53 coefficients: a second BLAS thread gains nothing and waits for a busy core (100k
    # prefixes: 7.4 s on one thread, 22-35 s on two, load average about 12 on 2 cores).
    FIT_THREADS: ClassVar[int | None] = 1

    def __init__(
        self,
        seed: int = 0,
        C: float = 1.0,
        max_iter: int = 2000,
        max_fit_prefixes: int | None = MAX_FIT_PREFIXES,
    ) -> None:
        super().__init__(seed=seed, max_fit_prefixes=max_fit_prefixes, C=C, max_iter=max_iter)

    def _estimator(self) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import FunctionTransformer, StandardScaler

        return make_pipeline(
            FunctionTransformer(signed_log1p),
            StandardScaler(copy=False),
            LogisticRegression(
                C=self._params["C"], max_iter=self._params["max_iter"], random_state=self.seed
            ),
        )

    @classmethod
    def _estimator_class(cls) -> type:
        from sklearn.pipeline import Pipeline

        return Pipeline


class HGBModel(_SklearnModel):
    """scikit-learn HistGradientBoosting on the feature rows (no early stopping: its holdout
    would be a random split)."""

    algorithm: ClassVar[str] = "hgb"

    def __init__(
        self,
        seed: int = 0,
        max_iter: int = 200,
        learning_rate: float = 0.1,
        max_leaf_nodes: int = 31,
        l2_regularization: float = 0.0,
        max_fit_prefixes: int | None = MAX_FIT_PREFIXES,
    ) -> None:
        super().__init__(
            seed=seed,
            max_fit_prefixes=max_fit_prefixes,
            max_iter=max_iter,
            learning_rate=learning_rate,
            max_leaf_nodes=max_leaf_nodes,
            l2_regularization=l2_regularization,
        )

    def _estimator(self) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(
            **self._params,
            early_stopping=False,
            random_state=self.seed,
        )

    @classmethod
    def _estimator_class(cls) -> type:
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier


# --- the sequence model ----------------------------------------------------------------------

_PAD, _NO_CATEGORY, _UNKNOWN_CATEGORY = 0, 1, 2
_NUMERIC = 3


def _step_inputs(events: pd.DataFrame, categories: dict[str, int]) -> tuple[np.ndarray, ...]:
    """Per event: action id, top-category id, and (log gap, price / 10, has price)."""
    actions = action_codes(events["event_type"], events["product_action"]) + 1
    tops = events["category"].astype(object).map(top_category, na_action="ignore")
    category = np.where(
        tops.isna(),
        _NO_CATEGORY,
        tops.map(categories).fillna(_UNKNOWN_CATEGORY).to_numpy(dtype=np.float64),
    ).astype(np.int64)
    ms = column_ms(events["event_at"])
    keys = events["session_key"].to_numpy()
    first = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, dtype=bool)
    gap = np.where(first, 0.0, np.r_[0, np.diff(ms)] / 1000)
    price = pd.to_numeric(events["price_bucket"], errors="coerce").to_numpy(dtype=np.float64)
    has_price = ~np.isnan(price)
    numeric = np.column_stack(
        [np.log1p(np.maximum(gap, 0)) / 5, np.where(has_price, price, 0) / 10, has_price]
    ).astype(np.float32)
    return actions, category, numeric


def _net(n_categories: int, embedding: int, hidden: int):
    import torch
    from torch import nn

    class SessionGRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.action = nn.Embedding(len(ACTIONS) + 1, embedding, padding_idx=_PAD)
            self.category = nn.Embedding(n_categories + 3, embedding, padding_idx=_PAD)
            self.gru = nn.GRU(2 * embedding + _NUMERIC, hidden, batch_first=True)
            self.head = nn.Linear(hidden, 1)

        def forward(self, actions, categories, numeric):
            steps = torch.cat([self.action(actions), self.category(categories), numeric], dim=-1)
            out, _ = self.gru(steps)
            return self.head(out).squeeze(-1)  # a logit after every event

    return SessionGRU()


class GRUModel:
    """A GRU over (action, top category, gap, price) per event, CPU-sized.

    The GRU reads left to right, so its output after event k depends on events 1..k only: one
    pass over a session scores all its prefixes, and padding after a session's last event
    never reaches its outputs. The length mask is that only positions of real prefixes are
    read (loss and scores); batches group sessions of similar length so little is padded.
    """

    algorithm: ClassVar[str] = "gru"
    WEIGHTS: ClassVar[str] = "weights.pt"

    def __init__(
        self,
        seed: int = 0,
        hidden: int = 32,
        embedding: int = 8,
        epochs: int = 4,
        batch_sessions: int = 256,
        learning_rate: float = 3e-3,
        max_categories: int = 200,
        max_fit_prefixes: int | None = MAX_FIT_PREFIXES,
    ) -> None:
        self._params = {
            "seed": seed,
            "hidden": hidden,
            "embedding": embedding,
            "epochs": epochs,
            "batch_sessions": batch_sessions,
            "learning_rate": learning_rate,
            "max_categories": max_categories,
            "max_fit_prefixes": max_fit_prefixes,
        }
        self.categories: dict[str, int] = {}
        self.net: Any = None
        self.log: Callable[[str], None] = lambda message: None

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    def _build(self) -> None:
        self.net = _net(len(self.categories), self._params["embedding"], self._params["hidden"])

    @staticmethod
    def _sessions(
        prefix_starts: np.ndarray, prefix_ends: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Unique session starts, their lengths to run, each prefix's session and position."""
        starts, which = np.unique(prefix_starts, return_inverse=True)
        lengths = np.zeros(len(starts), dtype=np.int64)
        np.maximum.at(lengths, which, prefix_ends - prefix_starts + 1)
        return starts, lengths, which, prefix_ends - prefix_starts

    @staticmethod
    def _tensors(steps, starts: np.ndarray, lengths: np.ndarray):
        import torch

        actions, categories, numeric = steps
        width = int(lengths.max())
        offsets = np.arange(width)
        valid = offsets[None, :] < lengths[:, None]
        index = np.where(valid, starts[:, None] + offsets[None, :], 0)
        return (
            torch.from_numpy(np.where(valid, actions[index], _PAD)),
            torch.from_numpy(np.where(valid, categories[index], _PAD)),
            torch.from_numpy(numeric[index] * valid[..., None]),
        )

    def _scan(
        self,
        steps: tuple[np.ndarray, ...],
        prefix_starts: np.ndarray,
        prefix_ends: np.ndarray,
        chunk: int,
        rng: np.random.Generator | None,
    ):
        """Batches of sessions of similar length: (step tensors, prefix rows, their positions)."""
        starts, lengths, which, position = self._sessions(prefix_starts, prefix_ends)
        tie = rng.random(len(starts)) if rng is not None else np.zeros(len(starts))
        by_length = np.lexsort((tie, lengths))
        groups = [by_length[lo : lo + chunk] for lo in range(0, len(by_length), chunk)]
        if rng is not None:
            groups = [groups[i] for i in rng.permutation(len(groups))]
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(len(starts) + 1))
        local = np.empty(len(starts), dtype=np.int64)
        for chosen in groups:
            rows = np.concatenate([order[bounds[s] : bounds[s + 1]] for s in chosen])
            local[chosen] = np.arange(len(chosen))
            tensors = self._tensors(steps, starts[chosen], lengths[chosen])
            yield tensors, rows, local[which[rows]], position[rows]

    def fit(self, batch: Batch, y: np.ndarray) -> Self:
        import torch

        p = self._params
        torch.manual_seed(p["seed"])
        tops = batch.events["category"].astype(object).map(top_category, na_action="ignore")
        frequent = tops.value_counts().head(p["max_categories"]).index
        self.categories = {name: i + 3 for i, name in enumerate(sorted(frequent))}
        self._build()
        starts, ends, y = batch.starts, batch.ends, np.asarray(y, dtype=np.float32)
        rows = fit_sample(starts, p["max_fit_prefixes"], p["seed"])
        if rows is not None:
            self.log(f"gru: fitting on {rows.sum():,} of {len(starts):,} prefixes")
            starts, ends, y = starts[rows], ends[rows], y[rows]
        steps = _step_inputs(batch.events, self.categories)
        y = torch.from_numpy(y)
        optimizer = Adam(list(self.net.parameters()), lr=p["learning_rate"])
        loss_fn = torch.nn.BCEWithLogitsLoss()
        rng = np.random.default_rng(p["seed"])
        self.net.train()
        # The matrices are small (256 sessions x 32 units): a second thread costs more than it
        # saves: an epoch of 10k sessions took 3 s on one thread, 62-70 s on two (2 cores, load
        # average 17-24: the second thread waits for a core).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._epochs(steps, starts, ends, y, optimizer, loss_fn, rng)
        finally:
            torch.set_num_threads(threads)
        return self

    def _epochs(self, steps, starts, ends, y, optimizer, loss_fn, rng) -> None:
        import torch

        p = self._params
        for epoch in range(p["epochs"]):
            total, seen = 0.0, 0
            scan = self._scan(steps, starts, ends, p["batch_sessions"], rng)
            for tensors, rows, session, position in scan:
                logits = self.net(*tensors)[torch.from_numpy(session), torch.from_numpy(position)]
                loss = loss_fn(logits, y[torch.from_numpy(rows)])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(rows)
                seen += len(rows)
            self.log(f"gru epoch {epoch + 1}/{p['epochs']}: loss {total / max(seen, 1):.4f}")

    def predict_proba(self, batch: Batch) -> np.ndarray:
        import torch

        scores = np.zeros(len(batch))
        if not len(batch):
            return scores
        self.net.eval()
        with torch.no_grad():
            steps = _step_inputs(batch.events, self.categories)
            for tensors, rows, session, position in self._scan(
                steps, batch.starts, batch.ends, 1024, None
            ):
                probability = torch.sigmoid(self.net(*tensors)).numpy()
                scores[rows] = probability[session, position]
        return scores

    def save(self, folder: Path) -> None:
        import torch

        folder = Path(folder)
        _write_config(folder, self.algorithm, self.params, categories=self.categories)
        torch.save(self.net.state_dict(), folder / self.WEIGHTS)

    @classmethod
    def load(cls, folder: Path) -> Self:
        import torch

        config = _read_config(folder, cls.algorithm)
        model = cls(**config["params"])
        model.categories = {k: int(v) for k, v in config["categories"].items()}
        model._build()
        state = torch.load(Path(folder) / cls.WEIGHTS, weights_only=True)
        model.net.load_state_dict(state)
        model.net.eval()
        return model


ALGORITHMS: dict[str, type] = {
    m.algorithm: m for m in (MajorityModel, LogisticModel, HGBModel, GRUModel)
}
BASELINES: tuple[str, ...] = ("majority", "logistic")
CANDIDATES: tuple[str, ...] = ("hgb", "gru")


def make_model(algorithm: str, **params: Any) -> ConversionModel:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[algorithm](**params)


def load_model(folder: Path) -> ConversionModel:
    """Whatever model a folder holds (read from its config). Verify the folder first."""
    algorithm = json.loads((Path(folder) / CONFIG_FILE).read_text())["algorithm"]
    return ALGORITHMS[algorithm].load(Path(folder))


def register_model(
    registry: Registry,
    model: ConversionModel,
    *,
    metrics: dict[str, float],
    training_window: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Save the model and store it as a new version of the `conversion` problem."""
    with tempfile.TemporaryDirectory(prefix="skiff-model-") as tmp:
        model.save(Path(tmp))
        return registry.register(
            PROBLEM,
            Path(tmp),
            algorithm=model.algorithm,
            params=model.params,
            metrics=metrics,
            training_window=training_window,
            extra=extra,
        )


def load_registered(registry: Registry, version: str) -> ConversionModel:
    """A registered version, its manifest signature and files checked before loading; a
    remote version's temporary copy is removed once the model is in memory."""
    with registry.fetched(PROBLEM, version) as folder:
        return load_model(folder)
