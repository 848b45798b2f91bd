with

feedback as (
    select * from {{ ref('stg_serving_feedback') }}
),

-- A click names the item it was on; a click logged twice, or the same item clicked again,
-- counts once, at its first time (what the off-policy estimators read: clicked or not).
final as (
    select
        exposure_id,
        item,
        min(acted_at) as clicked_at
    from feedback
    where action = 'click' and item is not null
    group by exposure_id, item
)

select * from final
