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
    where {{ session_scan('event_day') }}
),

products as (
    select * from {{ ref('stg_products') }}
),

-- Windows are per session_id across days: a visit goes on after midnight. Whether an event
-- starts a visit depends only on the event before it, so every run that sees both days
-- draws the same visits.
with_previous as (
    select
        *,
        lag(event_ms) over (
            partition by session_id
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

-- visit_seq numbers the session's visits in this scan only; the key below does not use it.
visits as (
    select
        *,
        sum(is_visit_start) over (
            partition by session_id
            order by {{ event_order }}
            rows between unbounded preceding and current row
        ) as visit_seq
    from visit_starts
),

-- A visit belongs to the day of its first event.
visit_days as (
    select
        *,
        min(event_day) over (partition by session_id, visit_seq) as session_day
    from visits
),

-- Visits of one session and day are consecutive: numbered 1, 2, ... within the day, so the
-- key is the same whichever run computes it.
numbered as (
    select
        *,
        cast(
            visit_seq
            - min(visit_seq) over (partition by session_id, session_day)
            + 1
            as integer
        ) as visit_number
    from visit_days
    where {{ in_session_days('session_day') }}
),

indexed as (
    select
        session_id
        || '-' || {{ date_key('session_day') }}
        || '-' || cast(visit_number as varchar) as session_key,
        session_id,
        visit_number,
        cast(row_number() over (
            partition by session_id, session_day, visit_number
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
        event_day,
        session_day
    from numbered
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
        indexed.event_day,
        indexed.session_day
    from indexed
    -- as of the event's day: the SKU's latest snapshot on or before it
    left join products
        on
            indexed.product_sku = products.product_sku
            and indexed.event_day >= products.valid_from
            and (products.valid_to is null or indexed.event_day < products.valid_to)
)

select * from final
