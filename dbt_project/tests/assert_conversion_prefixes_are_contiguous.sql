-- The examples of a visit are its rows 1..k: no gap, no missing start.
with

examples as (
    select * from {{ ref('conversion_examples') }}
    where {{ in_session_days('session_day') }}
),

per_session as (
    select
        session_key,
        count(*) as n_examples,
        min(prefix_length) as first_prefix,
        max(prefix_length) as last_prefix
    from examples
    group by session_key
),

final as (
    select *
    from per_session
    where first_prefix != 1 or last_prefix != n_examples
)

select * from final
