"""Synthetic shoppers from the generator's world, behaving as its truth says, in front of a
shop's recommender and conversion scorer: in process (`simulate_sessions`, for Monte Carlo) or
through the real server over HTTP (`simulate`, `skiff simulate`). Because the world is known,
every exposure's true click chance and every session's true purchase probability are known,
so each variant's true click-through and conversion are reported beside what was observed.

The world (`world`): the generator's catalogue for a seed and product count, in one regime:
its skus, the true next-view table T_r, popularity, and what `products.csv` tells the shop
(category, price; missing for about 30% of products, as in the data).

A session follows the generator's process (`ml.synthetic.shoppers`), one step at a time:
- Only product sessions are simulated (the two thirds of visits that view no product never
  see a widget or a cart). The number of product views and plain pages is the generator's
  draw (`session_shape`), made before the session starts: recommendations do not change how
  long a session is. Plain pages fall uniformly between the views.
- The entry product follows the regime's popularity. From the view numbered `warmup_steps`
  on (default 2, so the first request carries pre-exposure history), the shop asks for
  recommendations after every product view, the last one included, and shows the top
  `shown` (default 10).
- Click model, position-based: the next view after product i with list L on screen is drawn
  from w_j = T(j|i) (1 + attraction e(rank_j)) for j in L, e(r) = 1 / r**eta, and
  w_j = T(j|i) otherwise, normalized. The next view being in L is a click (a `click` event
  precedes the view, like the generator's clicks, and "click" feedback is posted for that
  exposure); its exact chance, sum of the shown w / sum w, is the exposure's
  `expected_clicks`. A product outside T's support is never viewed next, shown or not; the
  widget of the last view is never clicked (the shopper leaves). Ranking by T(.|i) is the
  best list under this model (it maximizes both the shown mass and the examined mass), so
  `true_top_k` is the ceiling of click-through.
- Adds, removes and dwell are the generator's: a share of sessions add a geometric number of
  distinct viewed positions, each right after its view; some remove one added product later;
  gaps are log-normal around a per-session dwell, clipped below 30 minutes (the generator's
  4-hour cap on a whole session is not applied).
- Conversion, through what the shop does with a score: once the cart is non-empty the shop
  asks for the session's score after every step; the first score >= `nudge_threshold`
  (default 0.5) nudges the session (an offer) and scoring stops. The true, un-nudged purchase
  probability p0 is the generator's own function (`shoppers.conversion`) of the final cart,
  adds, removes and dwell. A nudge adds `nudge_effect` (default 0.7) to its log-odds when
  p0 >= `persuadable_from` (default 0.25) and subtracts it otherwise (pressure on a
  browser), so a scorer that ranks shoppers like the truth converts more than a random one.
  The purchase is drawn from that probability; "add" feedback goes to the session's latest
  exposure of each problem when a product is added, "purchase" feedback at the end.

Replays (`replay`): in process, a shop can explore (`exploring`, through
`ml.offpolicy.explore`), interleave (`interleaved`, `ml.interleaving.team_draft`) or split its
sessions between models (`split`); a recommender callable may return an `Answer` whose
`extra` holds what the server would log beside the items (propensities, explored, teams), or
an `ml.offpolicy.Shown`. `simulate_exposures` gives one row per widget: the replay log of
`ml.offpolicy` with each exposure's context, shown skus, clicks and exact click chance
(`click_chance`), and `true_ctr_on` the click-through a target's lists would have had on
those contexts, the estimand of a replay.

Requests carry the latest `MAX_REQUEST_EVENTS` events or items, within the server's default
body limit. Session ids and every draw come from SeedSequence(seed, spawn_key=(index,)), so
the same seed against the same models gives the same sessions and the same report, whatever
the concurrency. A seed reused against the same server log merges the two runs' sessions.
"""

from ml.simulate.replay import exploring, interleaved, split, true_ctr_on
from ml.simulate.session import (
    EXPOSURE_COLUMNS,
    MAX_REQUEST_EVENTS,
    SESSION_COLUMNS,
    Answer,
    Policy,
    Session,
    Shop,
    as_policy,
    simulate_exposures,
    simulate_sessions,
)
from ml.simulate.traffic import SimulationReport, VariantReport, ready, simulate
from ml.simulate.world import (
    ShopperModel,
    World,
    base_probability,
    browsing_sessions,
    click_chance,
    next_view,
    true_top_k,
    world,
)

__all__ = [
    "EXPOSURE_COLUMNS",
    "MAX_REQUEST_EVENTS",
    "SESSION_COLUMNS",
    "Answer",
    "Policy",
    "Session",
    "Shop",
    "ShopperModel",
    "SimulationReport",
    "VariantReport",
    "World",
    "as_policy",
    "base_probability",
    "browsing_sessions",
    "click_chance",
    "exploring",
    "interleaved",
    "next_view",
    "ready",
    "simulate",
    "simulate_exposures",
    "simulate_sessions",
    "split",
    "true_ctr_on",
    "true_top_k",
    "world",
]
