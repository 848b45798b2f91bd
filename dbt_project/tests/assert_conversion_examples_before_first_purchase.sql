-- No conversion example is a purchase or happens at or after its visit's first purchase.
with

examples as (
    select * from {{ ref('conversion_examples') }}
),

sessions as (
    select * from {{ ref('sessions') }}
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
