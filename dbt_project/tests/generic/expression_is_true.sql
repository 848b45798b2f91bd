{% test expression_is_true(model, expression) %}

with

final as (
    select *
    from {{ model }}
    where not ({{ expression }})
)

select * from final

{% endtest %}
