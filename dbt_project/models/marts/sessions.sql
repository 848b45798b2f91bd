with

events as (
    select * from {{ ref('int_events_sessionized') }}
    where {{ in_rewritten_sessions('session_day', 'session_id') }}
),

aggregated as (
    select
        session_key,
        session_id,
        session_day,
        min(event_at) as started_at,
        max(event_at) as ended_at,
        cast(max(event_ms) - min(event_ms) as double) / 1000 as duration_seconds,
        count(*) as n_events,
        count(case when event_type = 'pageview' then 1 end) as n_pageviews,
        count(case when product_action = 'detail' then 1 end) as n_detail,
        count(case when product_action = 'add' then 1 end) as n_add,
        count(case when product_action = 'remove' then 1 end) as n_remove,
        count(case when product_action = 'click' then 1 end) as n_click,
        count(case when product_action = 'purchase' then 1 end) as n_purchase,
        count(distinct product_sku) as n_distinct_products,
        min(case when product_action = 'purchase' then event_at end) as first_purchase_at
    from events
    group by session_key, session_id, session_day
),

final as (
    select
        session_key,
        session_id,
        session_day,
        started_at,
        ended_at,
        duration_seconds,
        n_events,
        n_pageviews,
        n_detail,
        n_add,
        n_remove,
        n_click,
        n_purchase,
        n_distinct_products,
        n_purchase > 0 as purchased,
        first_purchase_at
    from aggregated
)

select * from final
