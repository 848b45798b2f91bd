with

source_shadows as (
    select * from {{ source('serving_log', 'serving_shadows') }}
),

-- Names are the log's fields: stage, role, path and action are SQL keywords, but on neither
-- DuckDB's nor Snowflake's list of reserved words (RF04 is silenced on them).
final as (
    select
        cast(exposure_id as varchar) as exposure_id,
        cast(logged_at as timestamp) as scored_at,
        cast(problem as varchar) as problem,
        cast(role as varchar) as role,  -- noqa: RF04
        cast(model_version as varchar) as model_version,
        cast(latency_ms as double) as latency_ms,
        cast(error as boolean) as error,
        cast(probability as double) as probability,
        cast(items as varchar) as items,
        cast(path as varchar) as path,  -- noqa: RF04
        cast(log_day as date) as log_day,
        cast(line_number as bigint) as line_number
    from source_shadows
)

select * from final
