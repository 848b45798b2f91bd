{#-
    Daily partitions. Dagster passes an inclusive range of UTC days:

        dbt build --vars '{"start_day": "2026-01-05", "end_day": "2026-01-07"}'

    Incremental models filter their upstream scan with in_partition(...) and, through the
    pre_hook delete_partition(...), delete those days from themselves before appending them
    again: re-running a day replaces it, an emptied day becomes empty, nothing is duplicated.
    Without the vars every day is selected (and, on an existing table, every row is deleted
    first), so a plain `dbt build` rebuilds everything.
-#}

{% macro partition_days() %}
    {#- Returns none (no partition vars) or [start_day, end_day] as validated ISO strings. -#}
    {%- set raw_start = var('start_day', none) -%}
    {%- set raw_end = var('end_day', none) -%}
    {%- set start_day = (raw_start | string | trim) if raw_start is not none else '' -%}
    {%- set end_day = (raw_end | string | trim) if raw_end is not none else '' -%}
    {%- if start_day == '' and end_day == '' -%}
        {{ return(none) }}
    {%- endif -%}
    {%- if start_day == '' or end_day == '' -%}
        {{ exceptions.raise_compiler_error(
            "Partition vars: pass both start_day and end_day (got start_day=" ~ raw_start
            ~ ", end_day=" ~ raw_end ~ ")"
        ) }}
    {%- endif -%}
    {%- for value in [start_day, end_day] -%}
        {#- Rendered into SQL: accept nothing but a real calendar date. -#}
        {%- if not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}', value) -%}
            {{ exceptions.raise_compiler_error(
                "Partition vars: '" ~ value ~ "' is not an ISO date (YYYY-MM-DD)"
            ) }}
        {%- endif -%}
        {%- set _ = modules.datetime.datetime.strptime(value, '%Y-%m-%d') -%}
    {%- endfor -%}
    {%- if start_day > end_day -%}
        {{ exceptions.raise_compiler_error(
            "Partition vars: start_day " ~ start_day ~ " is after end_day " ~ end_day
        ) }}
    {%- endif -%}
    {{ return([start_day, end_day]) }}
{% endmacro %}


{% macro in_partition(column) -%}
    {%- set days = partition_days() -%}
    {%- if days is none -%}
        1 = 1
    {%- else -%}
        {{ column }} between cast('{{ days[0] }}' as date) and cast('{{ days[1] }}' as date)
    {%- endif -%}
{%- endmacro %}


{% macro delete_partition(column) -%}
    {#- pre_hook of every incremental model (incremental_strategy='append'). -#}
    {%- if execute and flags.FULL_REFRESH and partition_days() is not none -%}
        {{ exceptions.raise_compiler_error(
            "--full-refresh with start_day/end_day would rebuild " ~ this
            ~ " with those days only; run a full refresh without partition vars"
        ) }}
    {%- endif -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ in_partition(column) }}
    {%- endif -%}
{%- endmacro %}


{% macro get_where_subquery(relation) -%}
    {#- Overrides dbt's: a test `where` config of exactly `__partition__(column)` becomes
        in_partition(column), so a partitioned run tests the days it wrote, not all history.
        Set per folder in dbt_project.yml. -#}
    {%- set where = config.get('where') -%}
    {%- if where and where.startswith('__partition__(') and where.endswith(')') -%}
        {%- set where = in_partition(where[14:-1]) -%}
    {%- endif -%}
    {%- if where -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) as dbt_subquery
        {%- endset -%}
        {{ return(filtered) }}
    {%- else -%}
        {{ return(relation) }}
    {%- endif -%}
{%- endmacro %}
