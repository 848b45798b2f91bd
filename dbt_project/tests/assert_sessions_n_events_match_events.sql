-- It reads two models: in Dagster it is a check on sessions.
{{ config(meta={'dagster': {'ref': {'name': 'sessions'}}}) }}

-- sessions.n_events is the number of sessionized events of the visit, and every visit with
-- events has a sessions row.
with

sessions as (
    select * from {{ ref('sessions') }}
    where {{ in_session_days('session_day') }}
),

events as (
    select * from {{ ref('int_events_sessionized') }}
    where {{ in_session_days('session_day') }}
),

event_counts as (
    select
        session_key,
        count(*) as n_events
    from events
    group by session_key
),

final as (
    select
        coalesce(sessions.session_key, event_counts.session_key) as session_key,
        sessions.n_events as session_n_events,
        event_counts.n_events as counted_n_events
    from sessions
    full outer join event_counts
        on sessions.session_key = event_counts.session_key
    where
        sessions.session_key is null
        or event_counts.session_key is null
        or sessions.n_events != event_counts.n_events
)

select * from final
