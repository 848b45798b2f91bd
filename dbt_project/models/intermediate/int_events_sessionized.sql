{#- A total order of a session's events: rows are distinct after staging, so ties on time
    are broken by the remaining columns, the same way on every run and every warehouse. -#}
{%- set event_order -%}
    event_ms asc,
    event_type asc,
    product_action asc nulls first,
    product_sku asc nulls first,
    url asc nulls first
{%- endset -%}
{%- set gap_ms = var('session_gap_minutes') * 60 * 1000 -%}

with

events as (
    select * from {{ ref('stg_browsing_events') }}
    where {{ in_partition('event_day') }}
),

products as (
    select * from {{ ref('stg_products') }}
),

-- Windows are per (session_id, event_day): a partition is one day, so a run over a range of
-- days and day-by-day runs give the same visits.
with_previous as (
    select
        *,
        lag(event_ms) over (
            partition by session_id, event_day
            order by {{ event_order }}
        ) as prev_event_ms
    from events
),

visit_starts as (
    select
        *,
        case
            when prev_event_ms is null or event_ms - prev_event_ms > {{ gap_ms }} then 1
            else 0
        end as is_visit_start
    from with_previous
),

visits as (
    select
        *,
        cast(sum(is_visit_start) over (
            partition by session_id, event_day
            order by {{ event_order }}
            rows between unbounded preceding and current row
        ) as integer) as visit_number
    from visit_starts
),

indexed as (
    select
        session_id
        || '-' || {{ date_key('event_day') }}
        || '-' || cast(visit_number as varchar) as session_key,
        session_id,
        visit_number,
        cast(row_number() over (
            partition by session_id, event_day, visit_number
            order by {{ event_order }}
        ) as integer) as event_index,
        event_type,
        product_action,
        product_sku,
        event_ms,
        event_at,
        case
            when is_visit_start = 0 then cast(event_ms - prev_event_ms as double) / 1000
        end as seconds_since_prev,
        url,
        event_day
    from visits
),

final as (
    select
        indexed.session_key,
        indexed.session_id,
        indexed.visit_number,
        indexed.event_index,
        indexed.event_type,
        indexed.product_action,
        indexed.product_sku,
        indexed.event_ms,
        indexed.event_at,
        indexed.seconds_since_prev,
        indexed.url,
        products.category_hash as category,
        products.category_top,
        products.price_bucket,
        indexed.event_day
    from indexed
    left join products
        on indexed.product_sku = products.product_sku
)

select * from final
