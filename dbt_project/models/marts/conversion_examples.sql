with

events as (
    select * from {{ ref('int_events_sessionized') }}
    where {{ in_rewritten_sessions('session_day', 'session_id') }}
),

first_purchases as (
    select
        session_key,
        min(event_ms) as first_purchase_ms
    from events
    where product_action = 'purchase'
    group by session_key
),

-- Strictly earlier in time than the first purchase, so an event logged in the same
-- millisecond as the purchase is cut too. Events are indexed by time first, so what is
-- left of a session is always its rows 1..k.
before_purchase as (
    select
        events.*,
        first_purchases.first_purchase_ms is not null as will_purchase
    from events
    left join first_purchases
        on events.session_key = first_purchases.session_key
    where
        first_purchases.first_purchase_ms is null
        or events.event_ms < first_purchases.first_purchase_ms
),

final as (
    select
        session_key,
        session_id,
        session_day,
        event_index as prefix_length,
        event_type,
        product_action,
        product_sku,
        event_at,
        seconds_since_prev,
        category,
        category_top,
        price_bucket,
        will_purchase
    from before_purchase
)

select * from final
