-- It reads two models: in Dagster it is a check on session_sequences.
{{ config(meta={'dagster': {'ref': {'name': 'session_sequences'}}}) }}

-- A visit has a sequence exactly when it has product detail views: n_views of them, as many
-- SKUs in product_skus (SKUs hold no space), from the first view to the last.
with

sequences as (
    select * from {{ ref('session_sequences') }}
    where {{ in_session_days('session_day') }}
),

events as (
    select * from {{ ref('int_events_sessionized') }}
    where {{ in_session_days('session_day') }}
),

detail_views as (
    select
        session_key,
        count(*) as n_views,
        min(event_at) as first_view_at,
        max(event_at) as last_view_at
    from events
    where event_type = 'event_product' and product_action = 'detail'
    group by session_key
),

final as (
    select
        coalesce(sequences.session_key, detail_views.session_key) as session_key,
        sequences.n_views as sequence_n_views,
        detail_views.n_views as counted_n_views,
        sequences.product_skus
    from sequences
    full outer join detail_views
        on sequences.session_key = detail_views.session_key
    where
        sequences.session_key is null
        or detail_views.session_key is null
        or sequences.n_views != detail_views.n_views
        or length(sequences.product_skus) - length(replace(sequences.product_skus, ' ', ''))
        != sequences.n_views - 1
        or sequences.first_view_at != detail_views.first_view_at
        or sequences.last_view_at != detail_views.last_view_at
)

select * from final
