"""Synthetic Coveo-shaped browsing days whose generating process is known exactly.

Why: the platform needs data that looks like the public Coveo SIGIR eCom 2021 sessions (so what
works on the demo works on real traffic) *and* a ground truth, so benchmarks can say how good the
best possible model would be and drift monitors have something real to find.

Layout written by `generate` (one folder per UTC day, the raw-data contract of `ml.contract`)::

    <out>/2026-01-05/browsing_events.csv   rows shuffled, some duplicated, some malformed
    <out>/2026-01-05/products.csv          the catalogue known that day
    <out>/_truth/2026-01-05/sessions.parquet
    <out>/_truth/transitions_pre.parquet   (and transitions_post.parquet after a drift)

`_truth/` is the answer key. It sits outside the day folders so ingestion never sees it; training,
feature and model code must never read it — only benchmarks and tests that grade models may.

The process, per day (each day has its own RNG from SeedSequence(seed, spawn_key=(1, day_index)),
so days are independent and a day's bytes do not depend on which other days are generated):

Catalogue (fixed per seed). Products sit in a two-level category tree (`<top>/<leaf>`), have a
true price decile and a Zipf popularity. About 30% of products lack category and price in
`products.csv`, like the public data; the process still uses their true values. A drift adds new
products (mostly in a few "boosted" top categories) that exist only from `drift_from` on.

Regimes. Days before `drift_from` are regime "pre", days from it on "post". Post multiplies the
popularity of the boosted top categories, brings the new products in, and lowers the conversion
intercept, so the category mix, the catalogue and the conversion rate all move.

Sessions. About a third of sessions look at products; the rest are pageview-only visits whose
length is a discretised log-normal (long tail). A product session views V products (long-tailed)
as a first-order Markov chain: the entry product is drawn from the regime's popularity; each next
view is drawn from

    T_r(j | i) = s 1[j = i]
                 + (1 - s) [(1 - lam) M_r(i, j) + lam (a H_leaf(i)(j) + (1 - a) H_top(i)(j))]

with s the repeat (reload / back) probability, M a sparse item-to-item table (neighbours mostly
in the same leaf, some in the same top category, a few anywhere, chosen by popularity; edges to
products that do not exist in the regime removed) and H the regime popularity over the heads of
the current product's leaf and top category. `transitions_<regime>.parquet` stores T_r itself,
the exact distribution each next view was drawn from, so the best achievable HR@20 given the
current item is the mean top-20 mass of T_r along the observed transitions.

Each product view is a `detail` product event plus a `pageview` twin with the same URL and
timestamp. Some views are preceded by a `click`. A share of product sessions add 1+ viewed
products to the cart (each right after viewing it); some remove one later. Plain pageviews are
interleaved. Gaps between steps are log-normal around a per-session dwell and clipped below 30
minutes; the session start follows a diurnal curve and is moved so that the whole session stays
inside its UTC day.

Conversion. A session with a non-empty cart purchases with probability

    sigmoid(b0 + b_add log(adds) + b_remove removes + b_dwell log(mean gap / 30 s)
            + category effect of the cart + b_price (mean cart price decile - 5.5) + drift)

(0 without a cart). Purchases are `purchase` rows for each carted sku, after the last step. The
probability and outcome are in `_truth/<day>/sessions.parquet`.

Dirt. `duplicate_share` of the true rows are written twice (exact copies) and `malformed_share`
extra rows are corrupted copies, one kind of `ml.contract.REJECT_REASONS` each (kinds spread
evenly), so `validate_events` rejects exactly those rows and accepts every other row.

Modules: `config` (what to generate, seeding), `catalogue` (the world, fixed per seed),
`shoppers` (one day's behaviour), `rows` (events as CSV rows, dirt), `day` (one day and its
truth), `files` (writing days and truth), `sampling` (vectorised draws).
"""

from ml.synthetic.config import REGIMES, GeneratorConfig, regime_of
from ml.synthetic.files import TRUTH_DIR, GenerateResult, generate, transitions_table
from ml.synthetic.sampling import HASH_HEX

__all__ = [
    "HASH_HEX",
    "REGIMES",
    "TRUTH_DIR",
    "GenerateResult",
    "GeneratorConfig",
    "generate",
    "regime_of",
    "transitions_table",
]
