with

source_feedback as (
    select * from {{ source('serving_log', 'serving_feedback') }}
),

-- Names are the log's fields: stage, role, path and action are SQL keywords, but on neither
-- DuckDB's nor Snowflake's list of reserved words (RF04 is silenced on them).
final as (
    select
        cast(exposure_id as varchar) as exposure_id,
        cast(action as varchar) as action,  -- noqa: RF04
        cast(logged_at as timestamp) as acted_at,
        cast(item as varchar) as item,
        cast(log_day as date) as log_day,
        cast(line_number as bigint) as line_number
    from source_feedback
)

select * from final
