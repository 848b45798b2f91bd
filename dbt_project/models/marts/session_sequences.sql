with

events as (
    select * from {{ ref('int_events_sessionized') }}
    where {{ in_rewritten_sessions('session_day', 'session_id') }}
),

product_views as (
    select *
    from events
    where event_type = 'event_product' and product_action = 'detail'
),

final as (
    select
        session_key,
        session_id,
        session_day,
        count(*) as n_views,
        {{ ordered_string_agg('product_sku', "' '", 'event_index') }} as product_skus,
        min(event_at) as first_view_at,
        max(event_at) as last_view_at
    from product_views
    group by session_key, session_id, session_day
)

select * from final
