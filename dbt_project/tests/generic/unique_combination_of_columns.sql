{% test unique_combination_of_columns(model, combination_of_columns) %}

with

validation as (
    select
        {{ combination_of_columns | join(', ') }},
        count(*) as n_rows
    from {{ model }}
    group by {{ combination_of_columns | join(', ') }}
),

final as (
    select *
    from validation
    where n_rows > 1
)

select * from final

{% endtest %}
