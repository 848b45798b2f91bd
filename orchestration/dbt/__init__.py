"""The dbt project (staging, intermediate, marts) as Dagster assets; its tests as checks."""
