-- It reads two models: in Dagster it is a check on sessions.
{{ config(meta={'dagster': {'ref': {'name': 'sessions'}}}) }}

-- Every event of a visit falls on the visit's session_day (UTC), and inside its time span.
with

sessions as (
    select * from {{ ref('sessions') }}
    where {{ in_partition('session_day') }}
),

events as (
    select * from {{ ref('int_events_sessionized') }}
    where {{ in_partition('event_day') }}
),

final as (
    select
        events.session_key,
        events.event_index,
        events.event_at,
        sessions.session_day
    from events
    inner join sessions
        on events.session_key = sessions.session_key
    where
        cast(events.event_at as date) != sessions.session_day
        or events.event_day != sessions.session_day
        or events.event_at < sessions.started_at
        or events.event_at > sessions.ended_at
)

select * from final
