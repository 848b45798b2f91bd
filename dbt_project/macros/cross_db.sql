{#- Dialect differences live here; models call these and stay portable. -#}

{% macro epoch_ms_to_timestamp(epoch_ms) -%}
    {{ return(adapter.dispatch('epoch_ms_to_timestamp', 'skiff')(epoch_ms)) }}
{%- endmacro %}

{% macro default__epoch_ms_to_timestamp(epoch_ms) -%}
    {#- A naive timestamp in UTC. -#}
    epoch_ms({{ epoch_ms }})
{%- endmacro %}

{% macro duckdb__epoch_ms_to_timestamp(epoch_ms) -%}
    epoch_ms({{ epoch_ms }})
{%- endmacro %}

{% macro snowflake__epoch_ms_to_timestamp(epoch_ms) -%}
    to_timestamp_ntz({{ epoch_ms }}, 3)
{%- endmacro %}


{% macro ordered_string_agg(expression, delimiter, order_by) -%}
    {{ return(adapter.dispatch('ordered_string_agg', 'skiff')(expression, delimiter, order_by)) }}
{%- endmacro %}

{% macro default__ordered_string_agg(expression, delimiter, order_by) -%}
    string_agg({{ expression }}, {{ delimiter }} order by {{ order_by }})
{%- endmacro %}

{% macro duckdb__ordered_string_agg(expression, delimiter, order_by) -%}
    string_agg({{ expression }}, {{ delimiter }} order by {{ order_by }})
{%- endmacro %}

{% macro snowflake__ordered_string_agg(expression, delimiter, order_by) -%}
    listagg({{ expression }}, {{ delimiter }}) within group (order by {{ order_by }})
{%- endmacro %}


{% macro date_key(date_expression) -%}
    {#- A date as 'YYYYMMDD' text, whatever the session's date output format. -#}
    {{ return(adapter.dispatch('date_key', 'skiff')(date_expression)) }}
{%- endmacro %}

{% macro default__date_key(date_expression) -%}
    strftime({{ date_expression }}, '%Y%m%d')
{%- endmacro %}

{% macro duckdb__date_key(date_expression) -%}
    strftime({{ date_expression }}, '%Y%m%d')
{%- endmacro %}

{% macro snowflake__date_key(date_expression) -%}
    to_char({{ date_expression }}, 'YYYYMMDD')
{%- endmacro %}
