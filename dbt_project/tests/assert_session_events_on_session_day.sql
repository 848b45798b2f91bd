-- It reads two models: in Dagster it is a check on sessions.
{{ config(meta={'dagster': {'ref': {'name': 'sessions'}}}) }}

-- A visit belongs to the UTC day it starts (session_day) and keeps its events after midnight:
-- every event of the visit carries that session_day, falls inside the visit's time span, and
-- on the session day or the day after (a visit spans at most one midnight).
with

sessions as (
    select * from {{ ref('sessions') }}
    where {{ in_session_days('session_day') }}
),

events as (
    select * from {{ ref('int_events_sessionized') }}
    where {{ in_session_days('session_day') }}
),

final as (
    select
        events.session_key,
        events.event_index,
        events.event_at,
        events.event_day,
        sessions.session_day
    from events
    inner join sessions
        on events.session_key = sessions.session_key
    where
        cast(sessions.started_at as date) != sessions.session_day
        or events.session_day != sessions.session_day
        or cast(events.event_at as date) != events.event_day
        or events.event_day < sessions.session_day
        or events.event_day > {{ dbt.dateadd('day', 1, 'sessions.session_day') }}
        or events.event_at < sessions.started_at
        or events.event_at > sessions.ended_at
)

select * from final
