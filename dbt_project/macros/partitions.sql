{#-
    Daily partitions. Dagster passes an inclusive range of UTC days in the environment:

        SKIFF_DBT_START_DAY=2026-01-05 SKIFF_DBT_END_DAY=2026-01-07 dbt build

    read only when models execute (not while dbt parses), so a new range keeps dbt's partial
    parse; the same range as vars works too and wins (a change of vars re-parses the project):

        dbt build --vars '{"start_day": "2026-01-05", "end_day": "2026-01-07"}'

    Incremental models filter their upstream scan with in_partition(...) and, through the
    pre_hook delete_partition(...), delete those days from themselves before appending them
    again: re-running a day replaces it, an emptied day becomes empty, nothing is duplicated.
    Without a range every day is selected (and, on an existing table, every row is deleted
    first), so a plain `dbt build` rebuilds everything.
-#}

{% macro partition_days() %}
    {#- Returns none (no partition vars) or [start_day, end_day] as validated ISO strings. -#}
    {%- set raw_start = var('start_day', none) -%}
    {%- set raw_end = var('end_day', none) -%}
    {%- if raw_start is none and raw_end is none and execute -%}
        {#- env_var outside parsing: dbt would record it and re-parse when it changes -#}
        {%- set raw_start = env_var('SKIFF_DBT_START_DAY', '') or none -%}
        {%- set raw_end = env_var('SKIFF_DBT_END_DAY', '') or none -%}
    {%- endif -%}
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


{% macro in_partition(column, days_before=0, days_after=0) -%}
    {#- The run's days, widened by days_before / days_after (see in_session_days). -#}
    {%- set days = partition_days() -%}
    {%- if days is none -%}
        1 = 1
    {%- else -%}
        {%- set parse = modules.datetime.datetime.strptime -%}
        {%- set one_day = modules.datetime.timedelta(days=1) -%}
        {%- set first = (parse(days[0], '%Y-%m-%d') - one_day * days_before).strftime('%Y-%m-%d') -%}
        {%- set last = (parse(days[1], '%Y-%m-%d') + one_day * days_after).strftime('%Y-%m-%d') -%}
        {{ column }} between cast('{{ first }}' as date) and cast('{{ last }}' as date)
    {%- endif -%}
{%- endmacro %}


{% macro in_session_days(column) -%}
    {#- The session days a run over event days [first, last] writes: [first - 1, last]. A visit
        belongs to the day it starts and keeps its events after midnight, so landing day D
        completes the visits of day D - 1 (final from then on) and starts those of day D
        (provisional until D + 1 lands). A visit is assumed not to span two midnights. -#}
    {{- in_partition(column, days_before=1) -}}
{%- endmacro %}


{% macro session_scan(column) -%}
    {#- The events the session days of a run need: from the day before the first session day
        (a visit may start before midnight) to the day after the last (its events after
        midnight, when that day has landed). -#}
    {{- in_partition(column, days_before=2, days_after=1) -}}
{%- endmacro %}


{% macro session_scan_edge(ms_column, gap_ms) -%}
    {#- Of session_scan's first day, only the last gap_ms before midnight matters: whether the
        first session day's early events continue a visit begun the evening before (such a
        visit belongs to that earlier day and is not written). The earlier events of that day
        are a prefix of each session's events, so leaving them out changes no visit written:
        about a third fewer events to sort on a nightly run. -#}
    {%- set days = partition_days() -%}
    {%- if days is none -%}
        1 = 1
    {%- else -%}
        {%- set parse = modules.datetime.datetime.strptime -%}
        {%- set first_session_day = parse(days[0], '%Y-%m-%d') - modules.datetime.timedelta(days=1) -%}
        {%- set epoch = modules.datetime.datetime(1970, 1, 1) -%}
        {{ ms_column }} >= {{ (first_session_day - epoch).days * 86400000 - gap_ms }}
    {%- endif -%}
{%- endmacro %}


{% macro delete_partition(column, days_before=0) -%}
    {#- pre_hook of every incremental model (incremental_strategy='append'). -#}
    {%- if execute and flags.FULL_REFRESH and partition_days() is not none -%}
        {{ exceptions.raise_compiler_error(
            "--full-refresh with start_day/end_day would rebuild " ~ this
            ~ " with those days only; run a full refresh without partition vars"
        ) }}
    {%- endif -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ in_partition(column, days_before=days_before) }}
    {%- endif -%}
{%- endmacro %}


{% macro get_where_subquery(relation) -%}
    {#- Overrides dbt's: a test `where` config of exactly `__partition__(column)` becomes
        in_partition(column), so a partitioned run tests the days it wrote, not all history.
        `__session_days__(column)` becomes in_session_days(column). Set per folder in
        dbt_project.yml. -#}
    {%- set where = config.get('where') -%}
    {%- if where and where.startswith('__partition__(') and where.endswith(')') -%}
        {%- set where = in_partition(where[14:-1]) -%}
    {%- elif where and where.startswith('__session_days__(') and where.endswith(')') -%}
        {%- set where = in_session_days(where[17:-1]) -%}
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
