"""The server's configuration: environment variables, overridden by `skiff serve` flags.

| variable | default | what |
|---|---|---|
| SKIFF_SERVE_HOST / SKIFF_SERVE_PORT | 127.0.0.1 / 8000 | where to listen |
| SKIFF_SERVE_MAX_BODY_BYTES | 65536 | larger request bodies get a 422 naming `body` |
| SKIFF_SERVE_MAX_EVENTS | 500 | events (or viewed products) per request, else a 422 |
| SKIFF_SERVE_RELOAD_SECONDS | 2 | how often the published pointers are checked |
| SKIFF_SERVE_RELOAD_RETRY_SECONDS | 1 | first wait before a failed load is tried again; it |
|  |  | doubles at each failure (jittered: 50-100% of it), while the pointer stays |
| SKIFF_SERVE_RELOAD_RETRY_MAX_SECONDS | 60 | the longest wait between two tries of a failed load |
| SKIFF_SERVE_INFERENCE_THREADS | 1 | worker threads the model calls run in (off the event loop) |
| SKIFF_SERVE_REQUIRE | conversion,recommender | champions /readyz waits for |
| SKIFF_EXPERIMENTS | (none) | an operator's JSON experiment file; it wins over the rollout |
|  |  | controller's `<published>/experiments.json`, which wins over the published roles |
| SKIFF_CHALLENGER_TRAFFIC | 0 | share of sessions a published challenger gets when no file is |
|  |  | given; 0 runs the challenger in shadow mode |
| SKIFF_SERVE_EXPLORE | 0.05 | share of A/B recommender answers shuffled from the model's top M |
|  |  | (logged propensities for off-policy replay); 0 = off, answers exactly the model's top k |
| SKIFF_SERVE_EXPLORE_POOL | 20 | M = max(pool, k): how deep an explored answer shuffles from |
| SKIFF_SERVE_EXCLUDE_VIEWED | true | never recommend a product the session viewed |
| SKIFF_SERVE_CATALOGUE | (none) | a products file (contract's products.csv, path or URL): |
|  |  | the products that can be shown, and their categories |
| SKIFF_SERVE_EXCLUDE_UNAVAILABLE | true | with a catalogue: never recommend what it does not list |
| SKIFF_SERVE_MAX_PER_CATEGORY | 0 | at most N products of one category per answer (0 = no cap; |
|  |  | needs the catalogue) |
The rules are `serving.rules`; each can be changed per request (`exclude_viewed`,
`exclude_unavailable`, `max_per_category` fields of POST /v1/recommendations).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skiff.settings import ConfigError

if TYPE_CHECKING:
    from ml.offpolicy import Exploration

PROBLEMS = ("conversion", "recommender")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def _flag(name: str, default: bool) -> bool:
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={text!r} is not a boolean (true/false, 1/0, yes/no, on/off)")


def _number(name: str, text: str, kind: type, low: float, high: float | None = None) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a {kind.__name__}") from None
    if value != value or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name}={text!r} must be {bound}")
    return value


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 65536
    max_events: int = 500
    reload_seconds: float = 2.0
    reload_retry_seconds: float = 1.0
    reload_retry_max_seconds: float = 60.0
    inference_threads: int = 1
    require: tuple[str, ...] = PROBLEMS
    experiments_file: Path | None = None
    challenger_traffic: float = 0.0
    explore: float = 0.05
    explore_pool: int = 20
    exclude_viewed: bool = True
    catalogue: str | None = None
    exclude_unavailable: bool = True
    max_per_category: int = 0

    @property
    def exploration(self) -> Exploration:
        from ml.offpolicy import Exploration

        return Exploration(share=self.explore, pool=self.explore_pool)

    @classmethod
    def from_env(cls, **overrides: Any) -> ServeConfig:
        """Environment first, then the non-None `overrides` (command-line flags)."""
        require = tuple(
            p.strip() for p in _env("SKIFF_SERVE_REQUIRE", ",".join(PROBLEMS)).split(",") if p
        )
        unknown = sorted(set(require) - set(PROBLEMS))
        if unknown:
            raise ConfigError(f"SKIFF_SERVE_REQUIRE names unknown problems {unknown}")
        experiments = os.environ.get("SKIFF_EXPERIMENTS", "").strip()
        config = cls(
            host=_env("SKIFF_SERVE_HOST", cls.host),
            port=_number("SKIFF_SERVE_PORT", _env("SKIFF_SERVE_PORT", "8000"), int, 0, 65535),
            max_body_bytes=_number(
                "SKIFF_SERVE_MAX_BODY_BYTES", _env("SKIFF_SERVE_MAX_BODY_BYTES", "65536"), int, 64
            ),
            max_events=_number(
                "SKIFF_SERVE_MAX_EVENTS", _env("SKIFF_SERVE_MAX_EVENTS", "500"), int, 1
            ),
            reload_seconds=_number(
                "SKIFF_SERVE_RELOAD_SECONDS", _env("SKIFF_SERVE_RELOAD_SECONDS", "2"), float, 0.05
            ),
            reload_retry_seconds=_number(
                "SKIFF_SERVE_RELOAD_RETRY_SECONDS",
                _env("SKIFF_SERVE_RELOAD_RETRY_SECONDS", "1"),
                float,
                0.01,
            ),
            reload_retry_max_seconds=_number(
                "SKIFF_SERVE_RELOAD_RETRY_MAX_SECONDS",
                _env("SKIFF_SERVE_RELOAD_RETRY_MAX_SECONDS", "60"),
                float,
                0.01,
            ),
            inference_threads=_number(
                "SKIFF_SERVE_INFERENCE_THREADS",
                _env("SKIFF_SERVE_INFERENCE_THREADS", "1"),
                int,
                1,
                64,
            ),
            require=require,
            experiments_file=Path(experiments) if experiments else None,
            challenger_traffic=_number(
                "SKIFF_CHALLENGER_TRAFFIC", _env("SKIFF_CHALLENGER_TRAFFIC", "0"), float, 0, 1
            ),
            explore=_number(
                "SKIFF_SERVE_EXPLORE", _env("SKIFF_SERVE_EXPLORE", "0.05"), float, 0, 1
            ),
            explore_pool=_number(
                "SKIFF_SERVE_EXPLORE_POOL", _env("SKIFF_SERVE_EXPLORE_POOL", "20"), int, 1
            ),
            exclude_viewed=_flag("SKIFF_SERVE_EXCLUDE_VIEWED", True),
            catalogue=os.environ.get("SKIFF_SERVE_CATALOGUE", "").strip() or None,
            exclude_unavailable=_flag("SKIFF_SERVE_EXCLUDE_UNAVAILABLE", True),
            max_per_category=_number(
                "SKIFF_SERVE_MAX_PER_CATEGORY", _env("SKIFF_SERVE_MAX_PER_CATEGORY", "0"), int, 0
            ),
        )
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
        if config.reload_retry_max_seconds < config.reload_retry_seconds:
            raise ConfigError(
                f"SKIFF_SERVE_RELOAD_RETRY_MAX_SECONDS={config.reload_retry_max_seconds:g} is "
                f"shorter than SKIFF_SERVE_RELOAD_RETRY_SECONDS={config.reload_retry_seconds:g}"
            )
        if config.max_per_category < 0:  # a flag skips the variable's bound above
            raise ConfigError(
                f"--max-per-category / SKIFF_SERVE_MAX_PER_CATEGORY must be 0 (no cap) or more, "
                f"got {config.max_per_category}"
            )
        if config.max_per_category and not config.catalogue:
            raise ConfigError(
                f"SKIFF_SERVE_MAX_PER_CATEGORY={config.max_per_category} needs the products' "
                "categories: set SKIFF_SERVE_CATALOGUE to a products file"
            )
        return config
