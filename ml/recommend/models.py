"""Next-item recommenders behind one interface: POP, session-kNN (V-SKNN) and a torch sequence
model (GRU4Rec-style or SASRec-style self-attention).

Every model: `fit(sessions)` on time-ordered sessions (lists of item ids, oldest session first),
`recommend(session_items, k)` / `recommend_batch(sessions, k)` returning item ids best first,
`save(folder)` and `load(folder)`. Items never seen in training are skipped in the input and
counted on `vocab`; a session left empty gets the most popular items. Rankings break ties by
training popularity, then by first appearance, so the same data and seed give the same lists.
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from ml.optim import Adam
from ml.recommend.vocab import PAD, Vocab

log = logging.getLogger(__name__)
CONFIG = "config.json"
VOCAB = "vocab.json"
POPULARITY = "popularity.npy"


def _popularity(vocab: Vocab, sessions: Sequence[Sequence[str]]) -> np.ndarray:
    counts = np.zeros(len(vocab) + 1, dtype=np.int64)
    for session in sessions:
        for item in session:
            counts[vocab.index[item]] += 1
    return counts


class Recommender(ABC):
    """The interface the evaluator, the assets and the server rely on."""

    algorithm: ClassVar[str]

    def __init__(self) -> None:
        self.vocab = Vocab()
        self.popularity = np.zeros(1, dtype=np.int64)
        self._pop_order = np.zeros(0, dtype=np.int64)
        self._pop_rank = np.zeros(1, dtype=np.int64)

    # --- what subclasses provide ------------------------------------------------------------

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Hyper-parameters, JSON-able: what `__init__` takes back."""

    @abstractmethod
    def _fit(self, encoded: list[np.ndarray]) -> None: ...

    @abstractmethod
    def _scores(self, encoded: list[np.ndarray], k: int) -> list[np.ndarray]:
        """Indices of the top-k items (or fewer) for each non-empty encoded session."""

    def _save_state(self, folder: Path) -> None:  # noqa: B027 - optional hook
        pass

    def _load_state(self, folder: Path) -> None:  # noqa: B027 - optional hook
        pass

    # --- the interface ----------------------------------------------------------------------

    def fit(self, sessions: Sequence[Sequence[str]]) -> Recommender:
        self.vocab = Vocab.build(sessions)
        self._set_popularity(_popularity(self.vocab, sessions))
        self._fit([self.vocab.encode(s) for s in sessions])
        return self

    def recommend(self, session_items: Sequence[str], k: int = 20) -> list[str]:
        return self.recommend_batch([session_items], k)[0]

    def recommend_batch(self, sessions: Sequence[Sequence[str]], k: int = 20) -> list[list[str]]:
        encoded = [self.vocab.encode(s) for s in sessions]
        known = [i for i, e in enumerate(encoded) if len(e)]
        top: list[np.ndarray] = [self._pop_order[:k]] * len(sessions)
        if known:
            for i, ids in zip(known, self._scores([encoded[i] for i in known], k), strict=True):
                top[i] = self._fill(ids, k)
        return [self.vocab.decode(ids) for ids in top]

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"algorithm": self.algorithm, "params": self.params()}
        (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        self.vocab.save(folder / VOCAB)
        np.save(folder / POPULARITY, self.popularity, allow_pickle=False)
        self._save_state(folder)
        return folder

    @classmethod
    def load(cls, folder: Path) -> Recommender:
        """Load any saved model; the class comes from its config."""
        folder = Path(folder)
        config = json.loads((folder / CONFIG).read_text())
        model_cls = ALGORITHMS[config["algorithm"]]
        if cls is not Recommender and not issubclass(model_cls, cls):
            raise TypeError(f"{folder} holds a {config['algorithm']} model, not {cls.__name__}")
        model = model_cls(**config["params"])
        model.vocab = Vocab.load(folder / VOCAB)
        model._set_popularity(np.load(folder / POPULARITY, allow_pickle=False))
        model._load_state(folder)
        return model

    # --- shared helpers ---------------------------------------------------------------------

    def _set_popularity(self, counts: np.ndarray) -> None:
        self.popularity = counts
        # most popular first; equal counts keep first-appearance order (stable sort)
        self._pop_order = np.argsort(-counts[1:], kind="stable") + 1
        self._pop_rank = np.full(len(counts), len(counts), dtype=np.int64)
        self._pop_rank[self._pop_order] = np.arange(len(self._pop_order))

    def _fill(self, ids: np.ndarray, k: int) -> np.ndarray:
        """Pad a short list with the most popular items not in it already."""
        if len(ids) >= k:
            return ids[:k]
        head = self._pop_order[: k + len(ids)]
        extra = head[~np.isin(head, ids)]
        return np.concatenate([ids, extra[: k - len(ids)]])

    def _top_k(self, items: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
        """The k best of `items` by their positive `scores` (one sparse row: items not in it
        score 0 and are never recommended), ties broken by popularity (exactly)."""
        keep = (scores > 0) & (items != PAD)
        items, scores = items[keep], scores[keep]
        if len(items) > k:
            kth = np.partition(scores, len(scores) - k)[len(scores) - k]
            items, scores = items[scores >= kth], scores[scores >= kth]
        order = np.lexsort((self._pop_rank[items], -scores))
        return items[order][:k]


class PopRecommender(Recommender):
    """The most viewed items of the training sessions, the same list for everyone."""

    algorithm = "pop"

    def params(self) -> dict[str, Any]:
        return {}

    def _fit(self, encoded: list[np.ndarray]) -> None:
        pass

    def _scores(self, encoded: list[np.ndarray], k: int) -> list[np.ndarray]:
        return [self._pop_order[:k]] * len(encoded)


class SKNNRecommender(Recommender):
    """Session-kNN in the spirit of V-SKNN (Ludewig & Jannach 2018).

    The current session is a vector over items whose weights decay with distance from its end
    (`1 / (1 + distance)`, the "div" weighting), so the last views count most. Candidate
    neighbours are, for each item of the session, the `sample_size` most recent training
    sessions that contain it (an inverted index truncated to recent sessions). Similarity is
    the dot product of the weighted session with a neighbour's items; the `k_neighbors` most
    similar vote for their items, a vote weighted by the similarity and, with `idf`, by the
    item's inverse document frequency. A batch of sessions is scored with sparse matrix products.
    """

    algorithm = "sknn"

    def __init__(
        self, k_neighbors: int = 100, sample_size: int = 1000, idf: bool = False, batch: int = 256
    ):
        super().__init__()
        self.k_neighbors = k_neighbors
        self.sample_size = sample_size
        self.idf = idf
        self.batch = batch
        self.sessions = sp.csr_matrix((0, 1), dtype=np.float32)
        self._recent = sp.csr_matrix((0, 1), dtype=np.float32)
        self._sessions_t = sp.csr_matrix((1, 0), dtype=np.float32)
        self._idf = np.ones(1, dtype=np.float32)

    def params(self) -> dict[str, Any]:
        return {
            "k_neighbors": self.k_neighbors,
            "sample_size": self.sample_size,
            "idf": self.idf,
            "batch": self.batch,
        }

    def _fit(self, encoded: list[np.ndarray]) -> None:
        n_items = len(self.vocab) + 1
        rows = np.repeat(np.arange(len(encoded)), [len(e) for e in encoded])
        cols = np.concatenate(encoded) if encoded else np.zeros(0, dtype=np.int64)
        matrix = sp.csr_matrix(
            (np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(encoded), n_items)
        )
        matrix.data[:] = 1.0  # duplicates were summed: presence only
        self._set_state(matrix)

    def _set_state(self, matrix: sp.csr_matrix) -> None:
        self.sessions = matrix.tocsr()
        # per item, only the most recent `sample_size` sessions: the candidate neighbours
        csc = self.sessions.tocsc()
        csc.sort_indices()
        col = np.repeat(np.arange(csc.shape[1]), np.diff(csc.indptr))
        from_end = csc.indptr[col + 1] - 1 - np.arange(csc.nnz)
        keep = from_end < self.sample_size
        recent = sp.csc_matrix(
            (
                csc.data[keep],
                csc.indices[keep],
                np.r_[0, np.cumsum(np.bincount(col[keep], minlength=csc.shape[1]))],
            ),
            shape=csc.shape,
        )
        self._recent = recent.T.tocsr()  # items x sessions
        self._sessions_t = self.sessions.T.tocsr()  # items x sessions, for the similarities
        df = np.asarray((self.sessions > 0).sum(axis=0)).ravel()
        n = max(self.sessions.shape[0], 1)
        self._idf = np.log((n + 1) / (df + 1)).astype(np.float32) + 1.0

    def _query(self, encoded: list[np.ndarray]) -> sp.csr_matrix:
        rows, cols, vals = [], [], []
        for r, ids in enumerate(encoded):
            weights: dict[int, float] = {}
            n = len(ids)
            for pos, item in enumerate(ids):  # later positions overwrite: most recent wins
                weights[int(item)] = 1.0 / (n - pos)
            rows.extend([r] * len(weights))
            cols.extend(weights)
            vals.extend(weights.values())
        return sp.csr_matrix(
            (np.asarray(vals, dtype=np.float32), (rows, cols)),
            shape=(len(encoded), self.sessions.shape[1]),
        )

    def _scores(self, encoded: list[np.ndarray], k: int) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, len(encoded), self.batch):
            chunk = encoded[start : start + self.batch]
            query = self._query(chunk)
            presence = query.copy()
            presence.data[:] = 1.0
            candidates = (presence @ self._recent).tocsr()  # B x sessions
            candidates.data[:] = 1.0  # a candidate or not: the mask keeps similarities as they are
            similarity = (query @ self._sessions_t).tocsr().multiply(candidates).tocsr()
            scores = (self._nearest(similarity) @ self.sessions).tocsr()  # B x items, sparse
            if self.idf:
                scores.data *= self._idf[scores.indices]
            indptr = scores.indptr
            out.extend(
                self._top_k(scores.indices[lo:hi], scores.data[lo:hi], k)
                for lo, hi in pairwise(indptr)
            )
        return out

    def _nearest(self, similarity: sp.csr_matrix) -> sp.csr_matrix:
        """Keep the k_neighbors largest similarities of each row (ties: most recent session).
        A row's k-th largest value splits it in one pass: all above it are kept, and of those
        equal to it the most recent sessions (highest indices) fill the rest."""
        indptr, indices, data = similarity.indptr, similarity.indices, similarity.data
        k = self.k_neighbors
        lengths = np.diff(indptr)
        keep = np.ones(len(data), dtype=bool)
        for r in np.flatnonzero(lengths > k):
            lo, hi = indptr[r], indptr[r + 1]
            values = data[lo:hi]
            kth = np.partition(values, len(values) - k)[len(values) - k]
            above = values > kth
            tied = np.flatnonzero(values == kth)
            need = k - int(above.sum())
            if len(tied) > need:  # a row's sessions are distinct: no tie on the index
                tied = tied[np.argsort(-indices[lo:hi][tied])[:need]]
            above[tied] = True
            keep[lo:hi] = above
        rows = np.repeat(np.arange(similarity.shape[0]), lengths)
        return sp.csr_matrix(
            (data[keep], (rows[keep], indices[keep])), shape=similarity.shape, dtype=np.float32
        )

    def _save_state(self, folder: Path) -> None:
        sp.save_npz(folder / "sessions.npz", self.sessions.astype(np.float32))

    def _load_state(self, folder: Path) -> None:
        self._set_state(sp.load_npz(folder / "sessions.npz").tocsr())


class SequenceRecommender(Recommender):
    """A torch next-item model: GRU4Rec-style (`arch="gru"`) or SASRec-style (`"sasrec"`).

    Items are embedded (with `dropout`), encoded left to right (a GRU of `hidden` units, or
    causal self-attention with learned positions), projected back to the embedding size (with
    `hidden_dropout`) and scored against the same item embeddings plus a bias (tied output).
    Every position of every session is a training target. The loss is cross entropy over the
    whole catalogue (`negatives=0`), or, for large catalogues, over the batch's own targets
    plus `negatives` items sampled by popularity^`alpha` (GRU4Rec's in-batch + sampled
    negatives). Sessions longer than `max_len` are cut into windows so every transition is used
    once per epoch; the GRU runs on packed sequences, so padding costs nothing.

    Training follows GRU4Rec's time order: each epoch walks the sessions oldest first in
    mini-batches of `batch_size` consecutive windows, so the last updates come from the most
    recent sessions (on time splits this beats shuffled batches); the batches are padded (and
    packed) once per fit. Early stopping: a `holdout` share of the training sessions is held
    out, spread evenly over time (`holdout_from="spread"`, the default) or the latest ones
    (`"latest"`); after every epoch the model ranks their every next item (targets unseen in
    the rest left out) and MRR@20 is the stopping metric; after `patience` epochs without a
    gain training stops and the best epoch's weights are kept. Then, by `refit`: `"held"` (the
    default) trains one more epoch on the held-out sessions only, from the best weights at the
    next epoch's rate, so no session goes unlearned; `True` retrains from the same seed on all
    training sessions for the best epoch count (about twice the cost; what a "latest" holdout
    needs, since its newest items are never learned otherwise); `False` keeps the stopped
    model. `holdout=0` trains `epochs` epochs without a check.

    torch runs on `threads` threads while training and scoring (1 by default: these small
    matrices gain little from a second thread, and on a shared machine spin-waiting threads
    slow training tenfold; 0 leaves torch's setting). `progress` (e.g. an asset's
    `context.log.info`) receives one line per epoch: train loss, holdout MRR@20, seconds.
    Saved as a state_dict and a JSON config; loaded with `torch.load(weights_only=True)`.
    """

    algorithm = "gru"

    def __init__(
        self,
        arch: str = "gru",
        dim: int = 64,
        hidden: int = 0,
        epochs: int = 20,
        batch_size: int = 64,
        lr: float = 0.02,
        max_len: int = 10,
        dropout: float = 0.2,
        hidden_dropout: float = 0.3,
        negatives: int = 0,
        alpha: float = 0.5,
        patience: int = 2,
        holdout: float = 0.05,
        refit: bool | str = "held",
        seed: int = 0,
        heads: int = 2,
        layers: int = 1,
        threads: int = 1,
        lr_decay: float = 0.7,
        pop_bias: bool = True,
        holdout_from: str = "spread",
    ):
        """`dim`: embedding size; `hidden`: GRU units (0 = `dim`); `epochs`: the most epochs;
        `dropout` / `hidden_dropout`: on the input embeddings / the encoder's output;
        `negatives`: sampled negatives per batch (0 = full softmax); `alpha`: popularity
        exponent of the sampling; `patience`, `holdout`, `holdout_from`, `refit`: early stopping
        (class doc); `lr_decay`: Adam's rate is `lr * lr_decay**(epoch - 1)`; `pop_bias`: the
        output bias starts at log(1 + training popularity), so the first batches start from POP.

        The defaults were tuned on the YooChoose 100k validation half (`train_tr` ->
        `train_valid`, bench/recommend_real.py) without losing on the generated data of
        tests/test_recommend_ml.py (docs/benchmarks.md has the log), and to train on
        YooChoose's 13.6k sessions in under 15 CPU s on one thread (issue #16): dropout mostly
        on the GRU's output (heavier input dropout helped YooChoose but cost the generated
        data); Adam at 0.02 decaying by 0.7 an epoch on batches of 64 windows of up to 10 items
        converges in about half the epochs of a constant 0.01 on batches of 256 (0.6 stopped
        the generated data short, 0.03 or batches of 128 learned less per epoch); windows of 10
        lose nothing against 20, 5 loses; starting from POP helps the first epochs; full
        catalogue cross entropy beat sampled negatives (with or without a logQ correction).
        An epoch costs about 1 CPU s on YooChoose, over half of it the output layer, so the
        budget is about 11 epochs: early stopping on 5% of the sessions spread over time, then
        one epoch on those 5% (`refit="held"`), costs one run instead of the two of a latest
        holdout and a refit from scratch, and matches its quality (a latest holdout without
        the refit lost 0.03-0.04 HR@20: the newest items were never learned). Patience 2, as
        the 5% holdout's MRR@20 is noisy (patience 1 stopped 2-4 epochs short and lost to
        session-kNN on HR@20); YooChoose stops after 11 epochs, the generated data after 16."""
        super().__init__()
        if arch not in ("gru", "sasrec"):
            raise ValueError(f"arch must be 'gru' or 'sasrec', got {arch!r}")
        if not 0 <= holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {holdout}")
        if patience < 1 or epochs < 1:
            raise ValueError(f"epochs and patience must be >= 1, got {epochs} and {patience}")
        self.arch, self.dim, self.hidden, self.epochs = arch, dim, hidden, epochs
        self.batch_size, self.lr, self.max_len = batch_size, lr, max_len
        self.dropout, self.hidden_dropout = dropout, hidden_dropout
        self.negatives, self.alpha, self.patience = negatives, alpha, patience
        self.holdout, self.refit, self.seed = holdout, refit, seed
        self.heads, self.layers, self.threads = heads, layers, threads
        self.lr_decay, self.pop_bias = lr_decay, pop_bias
        if holdout_from not in ("latest", "spread"):
            raise ValueError(f"holdout_from must be 'latest' or 'spread', got {holdout_from!r}")
        self.holdout_from = holdout_from
        if refit not in (True, False, "held"):
            raise ValueError(f"refit must be true, false or 'held', got {refit!r}")
        self.net: Any = None
        self.history: list[dict[str, float]] = []  # one row per epoch, as `progress` reads
        self.best_epoch = 0
        self.progress: Callable[[str], None] | None = None  # e.g. an asset's context.log.info

    def params(self) -> dict[str, Any]:
        names = (
            "arch dim hidden epochs batch_size lr max_len dropout hidden_dropout negatives"
            " alpha patience holdout refit seed heads layers threads lr_decay pop_bias holdout_from"
        )
        return {name: getattr(self, name) for name in names.split()}

    def _build(self, n_items: int) -> Any:
        import torch

        torch.manual_seed(self.seed)
        return _SeqNet(
            n_items,
            self.dim,
            self.hidden or self.dim,
            self.arch,
            self.max_len,
            (self.dropout, self.hidden_dropout),
            self.heads,
            self.layers,
        )

    def _windows(self, encoded: list[np.ndarray]) -> list[np.ndarray]:
        """Windows of up to max_len + 1 items overlapping by one: each transition once."""
        out = []
        for ids in encoded:
            for start in range(0, max(len(ids) - 1, 0), self.max_len):
                out.append(ids[start : start + self.max_len + 1])
        return out

    def _split(self, n: int) -> np.ndarray:
        """Which of `n` time-ordered sessions are held out: the latest `holdout` share
        (`holdout_from="latest"`) or as many spread evenly over time (`"spread"`, the last one
        included)."""
        n_held = round(n * self.holdout)
        held = np.zeros(n, dtype=bool)
        if n_held == 0:
            return held
        if self.holdout_from == "latest":
            held[n - n_held :] = True
        else:
            held[np.unique(np.round(np.linspace(n - 1, 0, n_held)).astype(np.int64))] = True
        return held

    def _fit(self, encoded: list[np.ndarray]) -> None:
        self.history = []
        began = time.perf_counter()
        with _torch_threads(self.threads):
            is_held = self._split(len(encoded))
            rest = [e for e, h in zip(encoded, is_held, strict=True) if not h]
            held_out = [e for e, h in zip(encoded, is_held, strict=True) if h]
            held = self._windows(held_out)
            known = np.zeros(len(self.vocab) + 1, dtype=bool)
            if held and rest:
                known[np.concatenate(rest)] = True
            if not held or not known.any():  # too little data to hold out: a plain fit
                self.net = self._train(encoded, self.epochs, None, known, began, "")[0]
                self.best_epoch = self.epochs
                return
            stopped = self._train(rest, self.epochs, held, known, began, "")
            self.net = stopped[0]
            if self.refit == "held":  # one more epoch, on the held-out sessions only
                self.net = self._train(
                    held_out, 1, None, known, began, "held ", stopped, self.best_epoch + 1
                )[0]
            elif self.refit:
                self.net = self._train(encoded, self.best_epoch, None, known, began, "refit ")[0]

    def _batches(self, encoded: list[np.ndarray]) -> list[tuple[Any, Any]]:
        """Every batch of an epoch, built once per fit: (x, y) padded, or packed for the GRU."""
        import torch

        windows = self._windows(encoded)  # oldest first: batches walk forward in time
        out = []
        for start in range(0, len(windows), self.batch_size):
            batch = windows[start : start + self.batch_size]
            x = torch.from_numpy(_pad([w[:-1] for w in batch]))
            y = torch.from_numpy(_pad([w[1:] for w in batch]))
            out.append(_packed(x, y) if self.arch == "gru" else (x, y))
        return out

    def _train(
        self,
        encoded: list[np.ndarray],
        epochs: int,
        held: list[np.ndarray] | None,
        known: np.ndarray,
        began: float,
        stage: str,
        resume: tuple[Any, Adam] | None = None,
        first: int = 1,
    ) -> tuple[Any, Adam]:
        """Epochs `first`, `first + 1`, ... of a new network, or of `resume` (a network and its
        optimizer, as an earlier call returned them); the network (the best epoch's weights
        when `held` is checked) and its optimizer."""
        import torch

        if resume is None:
            net = self._build(len(self.vocab) + 1)
            if self.pop_bias:  # start from POP: the output bias is the log of training popularity
                with torch.no_grad():
                    net.bias.copy_(torch.log1p(torch.from_numpy(self.popularity).float()))
            optimizer = Adam(list(net.parameters()))
        else:
            net, optimizer = resume
        sampler = torch.Generator().manual_seed(self.seed)
        weights = torch.from_numpy(self.popularity.astype(np.float64) ** self.alpha)
        batches = self._batches(encoded)
        best, best_state, stale = -1.0, None, 0
        for epoch in range(first, first + epochs):
            net.train()
            optimizer.lr = self.lr * self.lr_decay ** (epoch - 1)  # lr, lr * decay, ...
            total, tokens = 0.0, 0
            for x, y in batches:
                hidden, targets = net.transitions(x, y)
                loss = _loss(net, hidden, targets, self.negatives, weights, sampler)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(targets)
                tokens += len(targets)
            row = {"epoch": epoch, "loss": total / max(tokens, 1)}
            if held is not None:
                row["holdout_mrr_at_20"] = _holdout_mrr(net, held, known)
                if row["holdout_mrr_at_20"] > best:
                    best, stale, self.best_epoch = row["holdout_mrr_at_20"], 0, epoch
                    best_state = {k: v.clone() for k, v in net.state_dict().items()}
                else:
                    stale += 1
            row["seconds"] = time.perf_counter() - began
            self.history.append({**row, "refit": float(bool(stage))})
            self._report(stage, epochs, row)
            if held is not None and stale >= self.patience:
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        return net, optimizer

    def _report(self, stage: str, epochs: int, row: dict[str, float]) -> None:
        check = ""
        if "holdout_mrr_at_20" in row:
            mrr = row["holdout_mrr_at_20"]
            check = f", holdout MRR@20 {mrr:.4f} (best epoch {self.best_epoch})"
        message = (
            f"{self.arch} {stage}epoch {row['epoch']}/{epochs}: train loss {row['loss']:.4f}"
            f"{check}, {row['seconds']:.1f}s"
        )
        log.info(message)
        if self.progress is not None:
            self.progress(message)

    def _scores(self, encoded: list[np.ndarray], k: int) -> list[np.ndarray]:
        import torch

        self.net.eval()
        out: list[np.ndarray] = []
        # no per-call change of torch's threads here: the setting is the process's, and a server
        # scores on several threads at once (it is set once, on load)
        with torch.inference_mode():
            for start in range(0, len(encoded), 512):
                chunk = [e[-self.max_len :] for e in encoded[start : start + 512]]
                x = torch.from_numpy(_pad(chunk))
                lengths = torch.tensor([len(c) for c in chunk])
                hidden = self.net.encode(x)[torch.arange(len(chunk)), lengths - 1]
                logits = self.net.logits(hidden)
                logits[:, PAD] = -torch.inf
                top = torch.topk(logits, min(k, logits.shape[1] - 1), dim=1).indices.numpy()
                out.extend(top)
        return out

    def _save_state(self, folder: Path) -> None:
        import torch

        torch.save(self.net.state_dict(), folder / "weights.pt")

    def _load_state(self, folder: Path) -> None:
        import torch

        self.net = self._build(len(self.vocab) + 1)
        self.net.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
        self.net.eval()
        if self.threads > 0:  # once, for the process that scores with it (a server)
            torch.set_num_threads(self.threads)


class SASRecRecommender(SequenceRecommender):
    """The self-attention variant under its own algorithm name. Its defaults stay those it
    was measured with (the GRU's were tuned on YooChoose): `DEFAULTS` under the given params."""

    algorithm = "sasrec"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "batch_size": 128,
        "lr": 0.005,
        "dropout": 0.25,
        "hidden_dropout": 0.0,
        "max_len": 20,
        "patience": 2,
        "lr_decay": 1.0,
        "pop_bias": False,
        "holdout": 0.1,
        "holdout_from": "latest",
        "refit": True,
    }

    def __init__(self, **params: Any):
        super().__init__(**{**self.DEFAULTS, **params, "arch": "sasrec"})


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _loss(net: Any, hidden: Any, targets: Any, negatives: int, weights: Any, sampler: Any) -> Any:
    """Cross entropy over the catalogue, or over the batch's targets + sampled negatives (a
    candidate equal to a row's target, other than its own column, is masked out)."""
    import torch

    if negatives == 0:
        return torch.nn.functional.cross_entropy(net.logits(hidden), targets)
    sampled = torch.multinomial(weights, negatives, replacement=True, generator=sampler)
    candidates = torch.cat([targets, sampled])
    logits = hidden @ net.items.weight[candidates].T + net.bias[candidates]
    own = torch.arange(len(targets))
    clash = candidates.unsqueeze(0) == targets.unsqueeze(1)
    clash[own, own] = False
    return torch.nn.functional.cross_entropy(logits.masked_fill(clash, -1e9), own)


def _holdout_mrr(net: Any, windows: list[np.ndarray], known: np.ndarray, k: int = 20) -> float:
    """MRR@k of every next item of held-out windows in one causal pass (targets the training
    part never saw are left out; ties count against the target)."""
    import torch

    net.eval()
    reciprocal, count = 0.0, 0
    known_t = torch.from_numpy(known)
    with torch.inference_mode():
        for start in range(0, len(windows), 512):
            chunk = windows[start : start + 512]
            x = torch.from_numpy(_pad([w[:-1] for w in chunk]))
            y = torch.from_numpy(_pad([w[1:] for w in chunk]))
            hidden, targets = net.transitions(x, y)
            keep = known_t[targets]
            logits = net.logits(hidden[keep])
            logits[:, PAD] = -torch.inf
            target = logits.gather(1, targets[keep].unsqueeze(1))
            rank = (logits >= target).sum(1).double()
            reciprocal += float(torch.where(rank <= k, 1 / rank, 0.0).sum())
            count += int(keep.sum())
    return reciprocal / max(count, 1)


def _packed(x: Any, y: Any) -> tuple[Any, Any]:
    """Right-padded inputs `x` and next items `y`, packed by each row's real length (its next
    items that are not padding): what the GRU steps over."""
    from torch.nn.utils.rnn import pack_padded_sequence

    lengths = (y != PAD).sum(1).clamp(min=1)
    return tuple(
        pack_padded_sequence(t, lengths, batch_first=True, enforce_sorted=False) for t in (x, y)
    )


def _pad(rows: list[np.ndarray]) -> np.ndarray:
    """Right-padded int64 matrix: causal encoders never look at the padding after a position."""
    width = max((len(r) for r in rows), default=1)
    out = np.zeros((len(rows), max(width, 1)), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _SeqNet(
    n_items: int,
    dim: int,
    hidden: int,
    arch: str,
    max_len: int,
    dropout: tuple[float, float],
    heads: int,
    layers: int,
) -> Any:
    """Built in a function so that importing this module never imports torch."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

    class SeqNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.items = nn.Embedding(n_items, dim, padding_idx=PAD)
            self.drop = nn.Dropout(dropout[0])
            self.drop_hidden = nn.Dropout(dropout[1])
            self.bias = nn.Parameter(torch.zeros(n_items))
            width = dim
            if arch == "gru":
                width = hidden
                self.gru = nn.GRU(dim, hidden, num_layers=layers, batch_first=True)
            else:
                self.positions = nn.Embedding(max_len, dim)
                layer = nn.TransformerEncoderLayer(
                    dim,
                    heads,
                    dim_feedforward=2 * dim,
                    dropout=dropout[0],
                    batch_first=True,
                    norm_first=True,
                )
                self.attn = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
                self.norm = nn.LayerNorm(dim)
            # back to the embedding size when the GRU is wider: the output is tied to items
            self.project = nn.Linear(width, dim) if width != dim else nn.Identity()
            nn.init.normal_(self.items.weight, std=0.05)

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            """The output at every position of right-padded `x` (B x L x dim), for scoring."""
            h = self.drop(self.items(x))
            if arch == "gru":  # packed: the GRU steps over real items only, not the padding
                lengths = (x != PAD).sum(1).clamp(min=1)
                packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
                h = pad_packed_sequence(self.gru(packed)[0], True, total_length=x.shape[1])[0]
            else:
                h = self._attend(h)
            return self.project(self.drop_hidden(h))

        def transitions(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, Any]:
            """The output at every real position of `x` and the next item there (`y`), as two
            flat tensors in one order. The GRU's path never touches the padding: its input is
            packed before the embedding, so the dropouts and the projection cost only what
            the real items cost (a padded batch of windows is mostly padding)."""
            if arch != "gru":  # attention needs the padded positions: encode, then keep
                mask = y != PAD
                return self.encode(x)[mask], y[mask]
            # packed once per fit (`_batches`); padded here when scoring held-out windows
            xs, ys = (x, y) if isinstance(x, PackedSequence) else _packed(x, y)
            h = self.gru(xs._replace(data=self.drop(self.items(xs.data))))[0].data
            return self.project(self.drop_hidden(h)), ys.data

        def _attend(self, h: torch.Tensor) -> torch.Tensor:
            length = h.shape[1]
            h = h + self.positions(torch.arange(length))
            causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
            return self.norm(self.attn(h, mask=causal))

        def logits(self, hidden: torch.Tensor) -> torch.Tensor:
            return torch.addmm(self.bias, hidden, self.items.weight.T)

    return SeqNet()


ALGORITHMS: dict[str, type[Recommender]] = {
    "pop": PopRecommender,
    "sknn": SKNNRecommender,
    "gru": SequenceRecommender,
    "sasrec": SASRecRecommender,
}


def make_model(algorithm: str, **params: Any) -> Recommender:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; known: {sorted(ALGORITHMS)}")
    try:
        return ALGORITHMS[algorithm](**params)
    except TypeError as exc:  # an unknown parameter name, e.g. from `--params` JSON
        raise ValueError(f"{algorithm}: {exc}") from exc
