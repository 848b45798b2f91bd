with

source_events as (
    select * from {{ source('raw', 'raw_browsing_events') }}
    where {{ in_partition('event_day') }}
),

renamed as (
    select
        cast(session_id_hash as varchar) as session_id,
        cast(event_type as varchar) as event_type,
        case
            when event_type = 'event_product'
                then nullif(lower(trim(product_action)), '')
        end as product_action,
        cast(product_sku_hash as varchar) as product_sku,
        cast(server_timestamp_epoch_ms as bigint) as event_ms,
        cast(hashed_url as varchar) as url,
        cast(event_day as date) as event_day
    from source_events
),

deduplicated as (
    select distinct
        session_id,
        event_type,
        product_action,
        product_sku,
        event_ms,
        url,
        event_day
    from renamed
),

-- Every product detail is also logged as a pageview of the same URL at the same instant.
detail_views as (
    select distinct
        session_id,
        event_ms,
        url
    from deduplicated
    where event_type = 'event_product' and product_action = 'detail'
),

without_twins as (
    select deduplicated.*
    from deduplicated
    left join detail_views
        on
            deduplicated.event_type = 'pageview'
            and deduplicated.session_id = detail_views.session_id
            and deduplicated.event_ms = detail_views.event_ms
            and deduplicated.url = detail_views.url
    where detail_views.session_id is null
),

final as (
    select
        session_id,
        event_type,
        product_action,
        product_sku,
        event_ms,
        {{ epoch_ms_to_timestamp('event_ms') }} as event_at,
        url,
        event_day
    from without_twins
)

select * from final
