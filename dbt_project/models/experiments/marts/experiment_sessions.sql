with

exposures as (
    select * from {{ ref('experiment_exposures') }}
    where experiment is not null and session_id is not null
),

-- A period is (experiment, stage, weights): a ramp that changes the weights starts a new one.
-- The mode is a key too: an interleaving run's sessions never pool with an A/B run's.
totals as (
    select
        problem,
        experiment,
        mode,
        stage,
        weights,
        variant,
        session_id,
        count(*) as exposures,
        cast(sum(clicked) as bigint) as clicked,
        max(added) as added,
        max(purchased) as purchased,
        cast(sum(case when error then 1 else 0 end) as bigint) as errors
    from exposures
    group by problem, experiment, mode, stage, weights, variant, session_id
),

-- The session's first exposure of the period; two in one millisecond: the smaller id.
ranked as (
    select
        problem,
        experiment,
        mode,
        stage,
        weights,
        variant,
        session_id,
        role,
        model_version,
        exposed_at,
        history_events,
        history_adds,
        row_number() over (
            partition by problem, experiment, mode, stage, weights, variant, session_id
            order by exposed_at, exposure_id
        ) as exposure_rank
    from exposures
),

firsts as (
    select * from ranked
    where exposure_rank = 1
),

final as (
    select
        totals.problem,
        totals.experiment,
        totals.mode,
        totals.stage,
        totals.weights,
        totals.variant,
        firsts.role,
        firsts.model_version,
        totals.session_id,
        firsts.exposed_at as first_at,
        totals.exposures,
        totals.clicked,
        totals.added,
        totals.purchased,
        totals.errors,
        firsts.history_events,
        firsts.history_adds
    from totals
    inner join firsts
        on
            totals.problem = firsts.problem
            and totals.experiment = firsts.experiment
            and totals.mode = firsts.mode
            and totals.stage is not distinct from firsts.stage
            and totals.weights = firsts.weights
            and totals.variant = firsts.variant
            and totals.session_id = firsts.session_id
)

select * from final
