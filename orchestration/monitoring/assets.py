"""Monitoring (group `monitoring`): each day against what the champions were trained on.

Four daily-partitioned assets, one run per day (the Plots tab draws one point per day): three
on the conversion champion (`conversion.py`), one on the recommender (`recommender.py`). How a
day is graded and recorded is `grading.py`; what is read, and the cached references, `inputs.py`.
"""

from dagster import AssetsDefinition, PartitionsDefinition

from orchestration.monitoring.conversion import (
    build_feature_drift_asset,
    build_prediction_drift_asset,
    build_quality_asset,
)
from orchestration.monitoring.recommender import build_recommender_monitoring_asset
from skiff.settings import Settings


def build_monitoring_assets(
    settings: Settings, partitions: PartitionsDefinition
) -> list[AssetsDefinition]:
    return [
        build_feature_drift_asset(settings, partitions),
        build_prediction_drift_asset(settings, partitions),
        build_quality_asset(settings, partitions),
        build_recommender_monitoring_asset(settings, partitions),
    ]
