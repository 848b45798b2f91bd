{%- set gap_ms = var('session_gap_minutes') * 60 * 1000 -%}

-- A visit is a maximal run of a session's events on one day without a silence longer than
-- session_gap_minutes. Walking a session's day in (visit_number, event_index) order, each
-- step either stays in the visit (next index, time does not go back, at most the gap, and
-- seconds_since_prev is that step) or opens the next visit (index 1, after more than the gap).
with

events as (
    select * from {{ ref('int_events_sessionized') }}
    where {{ in_partition('event_day') }}
),

steps as (
    select
        session_key,
        visit_number,
        event_index,
        event_ms,
        seconds_since_prev,
        lag(visit_number) over (
            partition by session_id, event_day
            order by visit_number asc, event_index asc
        ) as prev_visit_number,
        lag(event_index) over (
            partition by session_id, event_day
            order by visit_number asc, event_index asc
        ) as prev_event_index,
        lag(event_ms) over (
            partition by session_id, event_day
            order by visit_number asc, event_index asc
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
            when visit_number = prev_visit_number
                then
                    event_index = prev_event_index + 1
                    and event_ms - prev_event_ms between 0 and {{ gap_ms }}
                    and seconds_since_prev
                    = cast(event_ms - prev_event_ms as double) / 1000
            else
                visit_number = prev_visit_number + 1
                and event_index = 1
                and event_ms - prev_event_ms > {{ gap_ms }}
                and seconds_since_prev is null
        end,
        false
    )
)

select * from final
