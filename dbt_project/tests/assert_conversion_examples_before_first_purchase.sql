-- It reads two models: in Dagster it is a check on conversion_examples.
{{ config(meta={'dagster': {'ref': {'name': 'conversion_examples'}}}) }}

-- No conversion example is a purchase or happens at or after its visit's first purchase.
-- Like every test here, it checks the days of the run (all days without partition vars).
with

examples as (
    select * from {{ ref('conversion_examples') }}
    where {{ in_session_days('session_day') }}
),

sessions as (
    select * from {{ ref('sessions') }}
    where {{ in_session_days('session_day') }}
),

final as (
    select
        examples.session_key,
        examples.prefix_length,
        examples.product_action,
        examples.event_at,
        sessions.first_purchase_at
    from examples
    inner join sessions
        on examples.session_key = sessions.session_key
    where
        examples.product_action = 'purchase'
        or examples.event_at >= sessions.first_purchase_at
        or examples.will_purchase != sessions.purchased
)

select * from final
