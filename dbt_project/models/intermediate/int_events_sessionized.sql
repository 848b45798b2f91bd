{#- A total order of a session's events: rows are distinct after staging, so ties on time
    are broken by the remaining columns, the same way on every run and every warehouse. -#}
{%- set event_order -%}
    event_ms asc,
    event_type asc,
    product_action asc nulls first,
    product_sku asc nulls first,
    url asc nulls first
{%- endset -%}
{%- set gap_ms = var('session_gap_minutes') * 60 * 1000 -%}

with

-- Before the run's first day, only the sessions whose visits of the day before it are
-- rewritten (in_rewritten_sessions in macros/partitions.sql).
events as (
    select * from {{ ref('stg_browsing_events') }}
    where
        {{ session_scan('event_day') }}
        and {{ session_scan_edge('event_ms', gap_ms) }}
        and {{ in_scanned_sessions('event_day', 'session_id') }}
),

products as (
    select * from {{ ref('stg_products') }}
),

-- Windows are per session_id across days: a visit goes on after midnight. Whether an event
-- starts a visit depends only on the event before it, so every run that sees both days
-- draws the same visits. The events are sorted once (the two windows below share one
-- order); visits are numbered on their first events alone, and each event then finds its
-- visit by position (one sort of the events instead of five: the model's main cost).
with_previous as (
    select
        *,
        lag(event_ms) over (
            partition by session_id
            order by {{ event_order }}
        ) as prev_event_ms,
        row_number() over (
            partition by session_id
            order by {{ event_order }}
        ) as event_seq
    from events
),

-- A visit is its first event and every later event of the session before the next visit's
-- first; it belongs to the day of its first event.
visit_starts as (
    select
        session_id,
        event_seq as first_event_seq,
        event_day as session_day
    from with_previous
    where prev_event_ms is null or event_ms - prev_event_ms > {{ gap_ms }}
),

-- visit_seq numbers the session's visits in this scan only; the key below does not use it.
visits as (
    select
        *,
        row_number() over (
            partition by session_id
            order by first_event_seq
        ) as visit_seq,
        lead(first_event_seq) over (
            partition by session_id
            order by first_event_seq
        ) as next_first_event_seq
    from visit_starts
),

-- Visits of one session and day are consecutive: numbered 1, 2, ... within the day, so the
-- key is the same whichever run computes it.
numbered_visits as (
    select
        session_id,
        session_day,
        first_event_seq,
        next_first_event_seq,
        cast(
            visit_seq
            - min(visit_seq) over (partition by session_id, session_day)
            + 1
            as integer
        ) as visit_number
    from visits
    where {{ in_session_days('session_day') }}
),

-- Each event with its visit (found by position) and, as of the event's day, its SKU's
-- latest catalogue snapshot on or before it.
final as (
    select
        with_previous.session_id
        || '-' || {{ date_key('numbered_visits.session_day') }}
        || '-' || cast(numbered_visits.visit_number as varchar) as session_key,
        with_previous.session_id,
        numbered_visits.visit_number,
        cast(
            with_previous.event_seq - numbered_visits.first_event_seq + 1 as integer
        ) as event_index,
        with_previous.event_type,
        with_previous.product_action,
        with_previous.product_sku,
        with_previous.event_ms,
        with_previous.event_at,
        case
            when with_previous.event_seq > numbered_visits.first_event_seq
                then cast(with_previous.event_ms - with_previous.prev_event_ms as double) / 1000
        end as seconds_since_prev,
        with_previous.url,
        products.category_hash as category,
        products.category_top,
        products.price_bucket,
        with_previous.event_day,
        numbered_visits.session_day
    from with_previous
    inner join numbered_visits
        on
            with_previous.session_id = numbered_visits.session_id
            and with_previous.event_seq >= numbered_visits.first_event_seq
            and (
                numbered_visits.next_first_event_seq is null
                or with_previous.event_seq < numbered_visits.next_first_event_seq
            )
    left join products
        on
            with_previous.product_sku = products.product_sku
            and with_previous.event_day >= products.valid_from
            and (products.valid_to is null or with_previous.event_day < products.valid_to)
)

select * from final
