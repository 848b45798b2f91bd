with

source_products as (
    select * from {{ source('raw', 'raw_products') }}
),

renamed as (
    select
        cast(product_sku_hash as varchar) as product_sku,
        cast(category_hash as varchar) as category_hash,
        cast(price_bucket as integer) as price_bucket,
        cast(description_vector as varchar) as description_vector,
        cast(image_vector as varchar) as image_vector,
        cast(snapshot_day as date) as snapshot_day
    from source_products
),

-- A snapshot that lists a SKU twice keeps one row, the same one on every run.
one_per_snapshot as (
    select
        *,
        row_number() over (
            partition by product_sku, snapshot_day
            order by
                category_hash asc nulls last,
                price_bucket asc nulls last,
                description_vector asc nulls last,
                image_vector asc nulls last
        ) as row_in_snapshot
    from renamed
),

-- A row holds from its snapshot until the next snapshot that lists the SKU, so a day's events
-- see the catalogue as known that day and a later snapshot never rewrites the past.
validity as (
    select
        *,
        lead(snapshot_day) over (
            partition by product_sku
            order by snapshot_day
        ) as valid_to
    from one_per_snapshot
    where row_in_snapshot = 1
),

final as (
    select
        product_sku,
        case
            when category_hash is not null then split_part(category_hash, '/', 1)
        end as category_top,
        category_hash,
        price_bucket,
        description_vector,
        image_vector,
        (
            category_hash is not null
            or price_bucket is not null
            or description_vector is not null
            or image_vector is not null
        ) as has_metadata,
        snapshot_day as valid_from,
        valid_to
    from validity
)

select * from final
