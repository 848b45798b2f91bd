{#- Row-level invariants of one model, checked in one scan instead of one test (one scan, one
    dbt node, one Dagster check) each: not-null columns, accepted values, expressions. A row
    fails when one of its conditions is not true (null counts as not true, so write
    `column is null or ...` where a column may be null); each failing row is returned with the
    first condition it breaks, as written. -#}
{% test row_conditions(model, conditions) %}

with

checked as (
    select
        *,
        case
            {%- for condition in conditions %}
                when not coalesce(({{ condition }}), false)
                    then '{{ condition | replace("'", "''") }}'
            {%- endfor %}
        end as failed_condition
    from {{ model }}
),

final as (
    select *
    from checked
    where failed_condition is not null
)

select * from final

{% endtest %}
