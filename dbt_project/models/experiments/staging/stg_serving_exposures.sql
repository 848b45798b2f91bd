with

source_exposures as (
    select * from {{ source('serving_log', 'serving_exposures') }}
),

-- A record logged twice (a retried write, a file copied twice) counts once: its first line.
ranked as (
    select
        *,
        row_number() over (
            partition by id
            order by log_day, line_number
        ) as copy_number
    from source_exposures
),

-- Names are the log's fields: stage, role, path, mode and action are SQL keywords, but on neither
-- DuckDB's nor Snowflake's list of reserved words (RF04 is silenced on them).
final as (
    select
        cast(id as varchar) as exposure_id,
        cast(logged_at as timestamp) as exposed_at,
        cast(problem as varchar) as problem,
        cast(experiment as varchar) as experiment,
        cast(stage as varchar) as stage,  -- noqa: RF04
        cast(session_id as varchar) as session_id,
        cast(variant as varchar) as variant,
        cast(role as varchar) as role,  -- noqa: RF04
        cast(model_version as varchar) as model_version,
        cast(weights as varchar) as weights,
        cast(latency_ms as double) as latency_ms,
        cast(error as boolean) as error,
        cast(history_events as bigint) as history_events,
        cast(history_adds as bigint) as history_adds,
        cast(probability as double) as probability,
        cast(items as varchar) as items,
        cast(path as varchar) as path,  -- noqa: RF04
        -- the off-policy and interleaving fields: a line of an older server has none of them
        coalesce(cast(mode as varchar), 'ab') as mode,  -- noqa: RF04
        cast(context as varchar) as context,
        cast(propensities as varchar) as propensities,
        cast(teams as varchar) as teams,
        coalesce(cast(explored as boolean), false) as explored,
        cast(logging_policy as varchar) as logging_policy,
        cast(log_day as date) as log_day,
        cast(line_number as bigint) as line_number
    from ranked
    where copy_number = 1
)

select * from final
