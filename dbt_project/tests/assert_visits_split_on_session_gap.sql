{%- set gap_ms = var('session_gap_minutes') * 60 * 1000 -%}

-- A visit is a maximal run of a session's events without a silence longer than
-- session_gap_minutes, midnight or not. Walking a session's visits in (session_day,
-- visit_number, event_index) order, each step either stays in the visit (next index, time does
-- not go back, at most the gap, and seconds_since_prev is that step), opens the next visit of
-- the day (index 1, after more than the gap) or opens the first visit of a later day (visit 1,
-- index 1, after more than the gap: a visit is never cut at midnight).
with

events as (
    select * from {{ ref('int_events_sessionized') }}
    where {{ in_session_days('session_day') }}
),

steps as (
    select
        session_key,
        session_day,
        visit_number,
        event_index,
        event_ms,
        seconds_since_prev,
        lag(session_day) over (
            partition by session_id
            order by session_day asc, visit_number asc, event_index asc
        ) as prev_session_day,
        lag(visit_number) over (
            partition by session_id
            order by session_day asc, visit_number asc, event_index asc
        ) as prev_visit_number,
        lag(event_index) over (
            partition by session_id
            order by session_day asc, visit_number asc, event_index asc
        ) as prev_event_index,
        lag(event_ms) over (
            partition by session_id
            order by session_day asc, visit_number asc, event_index asc
        ) as prev_event_ms
    from events
),

final as (
    select *
    from steps
    where not coalesce(
        case
            when prev_visit_number is null
                then visit_number = 1 and event_index = 1 and seconds_since_prev is null
            when session_day = prev_session_day and visit_number = prev_visit_number
                then
                    event_index = prev_event_index + 1
                    and event_ms - prev_event_ms between 0 and {{ gap_ms }}
                    and seconds_since_prev
                    = cast(event_ms - prev_event_ms as double) / 1000
            when session_day = prev_session_day
                then
                    visit_number = prev_visit_number + 1
                    and event_index = 1
                    and event_ms - prev_event_ms > {{ gap_ms }}
                    and seconds_since_prev is null
            else
                visit_number = 1
                and event_index = 1
                and event_ms - prev_event_ms > {{ gap_ms }}
                and seconds_since_prev is null
        end,
        false
    )
)

select * from final
