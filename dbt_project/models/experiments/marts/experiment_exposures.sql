with

exposures as (
    select * from {{ ref('stg_serving_exposures') }}
),

feedback as (
    select * from {{ ref('stg_serving_feedback') }}
),

shadows as (
    select * from {{ ref('stg_serving_shadows') }}
),

-- A shadow role scored this exposure after the response without an error (what the shadow
-- stage counts: a challenger that fails in shadow earns nothing).
shadowed as (
    select distinct exposure_id
    from shadows
    where not error
),

-- Feedback may name an exposure logged by another replica, not loaded (yet): it waits here.
actions as (
    select
        exposure_id,
        max(case when action = 'click' then 1 else 0 end) as clicked,
        max(case when action = 'add' then 1 else 0 end) as added,
        max(case when action = 'purchase' then 1 else 0 end) as purchased
    from feedback
    group by exposure_id
),

final as (
    select
        exposures.exposure_id,
        exposures.problem,
        exposures.experiment,
        exposures.mode,
        exposures.stage,
        exposures.session_id,
        exposures.variant,
        exposures.role,
        exposures.model_version,
        exposures.weights,
        exposures.latency_ms,
        exposures.error,
        exposures.history_events,
        exposures.history_adds,
        exposures.items,
        exposures.context,
        exposures.propensities,
        exposures.teams,
        exposures.explored,
        exposures.logging_policy,
        coalesce(actions.clicked, 0) as clicked,
        coalesce(actions.added, 0) as added,
        coalesce(actions.purchased, 0) as purchased,
        shadowed.exposure_id is not null as shadow_scored,
        exposures.exposed_at,
        exposures.log_day
    from exposures
    left join actions on exposures.exposure_id = actions.exposure_id
    left join shadowed on exposures.exposure_id = shadowed.exposure_id
)

select * from final
