"""What the recommendation assets write for people and for the server: the leaderboard and
checks as markdown, and the last-item lookup (top-K next items after each known product)."""

from pathlib import Path

import pandas as pd

from orchestration.markdown import number
from orchestration.recommendation.config import K


def gate_text(name: str) -> str:
    from ml.recommend.behavior import GATES

    gate = GATES[name]
    role = "gates promotion" if gate.gating else "reports"
    return f"{gate.description}; threshold {gate.threshold} ({role})"


def leaderboard_markdown(table: str, best: dict) -> str:
    checks = ["| check | value | threshold | gates promotion | passed |", "|---|---:|---:|---|---|"]
    checks += [
        f"| {c['name']} | {number(c['value'])} | {number(c['threshold'])} "
        f"| {'yes' if c['gating'] else 'no'} | {'yes' if c['passed'] else '**NO**'} |"
        for c in best["checks"]
    ]
    slices = best["slices"]
    parts = ["| slice | bucket | HR@20 | MRR@20 | predictions |", "|---|---|---:|---:|---:|"]
    for kind in ("by_popularity", "by_length"):
        for bucket, m in slices[kind].items():
            parts.append(
                f"| {kind[3:]} | {bucket} | {m['hr_at_20']:.4f} | {m['mrr_at_20']:.4f} "
                f"| {m['predictions']:,} |"
            )
    return "\n\n".join(
        [
            "### Leaderboard: the best candidate is chosen on validation HR@20; HR/MRR/NDCG@20 "
            "over every next item of the test days are what is reported and gated",
            table,
            f"### Behavioral checks of the chosen candidate ({best['algorithm']}), test days",
            "\n".join(checks),
            "\n".join(parts),
        ]
    )


def write_lookup(model, path: Path) -> int:
    """Top-K next items after each known product alone: the last-item lookup."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    products = model.vocab.items[1:]
    lists = []
    for start in range(0, len(products), 2048):
        lists.extend(model.recommend_batch([[p] for p in products[start : start + 2048]], K))
    table = pa.table(
        {
            "product_sku_hash": pa.array(products, pa.string()),
            "next_items": pa.array(lists, pa.list_(pa.string())),
        }
    )
    pq.write_table(table, path)
    return len(products)


def lookup_rows(lookup: pd.DataFrame, version: str, as_of) -> pd.DataFrame:
    """The lookup as table rows: one per product and rank."""
    exploded = lookup.explode("next_items").dropna(subset=["next_items"])
    return pd.DataFrame(
        {
            "product_sku_hash": exploded["product_sku_hash"].to_numpy(),
            "rank": exploded.groupby(level=0).cumcount().to_numpy() + 1,
            "next_sku": exploded["next_items"].to_numpy(),
            "model_version": version,
            "as_of_day": as_of,
        }
    )


def lookup_sample(lookup: pd.DataFrame) -> str:
    sample = ["| product | first next items |", "|---|---|"] + [
        f"| {sku} | {' '.join(items[:5])} |"
        for sku, items in zip(lookup["product_sku_hash"][:5], lookup["next_items"][:5], strict=True)
    ]
    return "\n".join(sample)
