{#-
    Daily partitions. Dagster passes an inclusive range of UTC days in the environment:

        SKIFF_DBT_START_DAY=2026-01-05 SKIFF_DBT_END_DAY=2026-01-07 dbt build

    read only when models execute (not while dbt parses), so a new range keeps dbt's partial
    parse; the same range as vars works too and wins (a change of vars re-parses the project):

        dbt build --vars '{"start_day": "2026-01-05", "end_day": "2026-01-07"}'

    Incremental models filter their upstream scan with in_partition(...) and, through the
    pre_hook delete_partition(...), delete those days from themselves before appending them
    again: re-running a day replaces it, an emptied day becomes empty, nothing is duplicated.
    The session-grain models do the same with in_rewritten_sessions(...) and
    delete_session_days(...): the run's days, and the late visits of the day before.
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
    {#- The session days a run over event days [first, last] writes to: [first - 1, last]. A
        visit belongs to the day it starts and keeps its events after midnight, so landing day
        D completes the visits of day D - 1 (final from then on; only its late visits change,
        see in_rewritten_sessions) and starts those of day D (provisional until D + 1 lands).
        A visit is assumed not to span two midnights. -#}
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
        {{ ms_column }} >= {{ gap_before_midnight_ms(days[0], -1, gap_ms) }}
    {%- endif -%}
{%- endmacro %}


{% macro gap_before_midnight_ms(day, offset, gap_ms) -%}
    {#- Epoch milliseconds gap_ms before the midnight that starts ISO `day` + `offset` days. -#}
    {%- set start = modules.datetime.datetime.strptime(day, '%Y-%m-%d')
        + modules.datetime.timedelta(days=offset) -%}
    {{ return((start - modules.datetime.datetime(1970, 1, 1)).days * 86400000 - gap_ms) }}
{%- endmacro %}


{% macro late_sessions(relation, day_column, day=none) -%}
    {#- A subquery: the sessions with an event of `relation` on ISO `day` (its `day_column`;
        the day before the run's first day unless given) in that day's last session gap before
        midnight. Only their visits of that day can go on into the next: the event before a
        visit's first event after midnight is at most a gap earlier. -#}
    {%- if day is none -%}
        {%- set day = (modules.datetime.datetime.strptime(partition_days()[0], '%Y-%m-%d')
            - modules.datetime.timedelta(days=1)).strftime('%Y-%m-%d') -%}
    {%- endif -%}
    select session_id from {{ relation }}
    where
        {{ day_column }} = cast('{{ day }}' as date)
        and event_ms >= {{ gap_before_midnight_ms(day, 1, var('session_gap_minutes') * 60000) }}
{%- endmacro %}


{% macro in_rewritten_sessions(session_day, session_id) -%}
    {#- The session rows a run over event days [first, last] writes: session days first .. last
        whole and, of day first - 1, the visits of its late sessions only (late_sessions, from
        the model's late_sessions_source). The other sessions' visits of first - 1 were final
        when the run before wrote them; rewriting day first - 1 whole was about half the work
        of a nightly run. The day range comes first, so the scan skips the other days' row
        groups. -#}
    {%- if partition_days() is none -%}
        1 = 1
    {%- else -%}
        {{ in_partition(session_day, days_before=1) }}
        and {{ in_scanned_sessions(session_day, session_id) }}
    {%- endif -%}
{%- endmacro %}


{% macro in_scanned_sessions(day_column, session_id) -%}
    {#- Rows from the run's first day on, and before it those of its late sessions only. As the
        sessionization's scan: the other sessions' visits of the day before are not rewritten,
        and none of their events is within a gap of the first day's, so leaving them out
        changes no visit written. -#}
    {%- set days = partition_days() -%}
    {%- if days is none -%}
        1 = 1
    {%- else -%}
        {%- set relation, late_day_column = late_sessions_source() %}
        ({{ day_column }} >= cast('{{ days[0] }}' as date)
        or {{ session_id }} in ({{ late_sessions(relation, late_day_column) }}))
    {%- endif -%}
{%- endmacro %}


{% macro refuse_partial_full_refresh() -%}
    {%- if execute and flags.FULL_REFRESH and partition_days() is not none -%}
        {{ exceptions.raise_compiler_error(
            "--full-refresh with start_day/end_day would rebuild " ~ this
            ~ " with those days only; run a full refresh without partition vars"
        ) }}
    {%- endif -%}
{%- endmacro %}


{% macro late_sessions_source() -%}
    {#- (relation, day_column) a session-grain model reads its late sessions from: its config's
        meta.late_sessions (dbt_project.yml). -#}
    {%- if not execute -%}  {#- while dbt parses, config holds no meta yet -#}
        {{ return([this, 'session_day']) }}
    {%- endif -%}
    {%- set late = (config.get('meta') or {}).get('late_sessions') -%}
    {%- if not late -%}
        {{ exceptions.raise_compiler_error(this ~ ": no meta.late_sessions in its config") }}
    {%- endif -%}
    {{ return([ref(late['relation']), late['day_column']]) }}
{%- endmacro %}


{% macro delete_session_days() -%}
    {#- pre_hook of the session-grain models: deletes the rows in_rewritten_sessions writes. -#}
    {{- refuse_partial_full_refresh() -}}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ in_rewritten_sessions('session_day', 'session_id') }}
    {%- endif -%}
{%- endmacro %}


{% macro get_incremental_late_sessions_last_sql(arg_dict) -%}
    {#- The session-grain models' incremental strategy: append, the rows of the run's last day's
        late sessions last. The next day's run deletes exactly those (in_rewritten_sessions):
        kept together at the end of the table they fill whole row groups, which DuckDB drops
        at its checkpoint, where rows deleted here and there through a day would make it
        re-compress that day's row groups (0.9 s a night at 360k events a day). Elsewhere, or
        without a day range, a plain append. -#}
    {%- set days = partition_days() -%}
    {%- if target.type != 'duckdb' or days is none -%}
        {{ return(get_insert_into_sql(
            arg_dict['target_relation'], arg_dict['temp_relation'], arg_dict['dest_columns']
        )) }}
    {%- endif -%}
    {%- set relation, day_column = late_sessions_source() -%}
    {%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    {%- for last in [false, true] %}
    insert into {{ arg_dict['target_relation'] }} ({{ columns }})
    select {{ columns }} from {{ arg_dict['temp_relation'] }}
    where coalesce(
        session_day = cast('{{ days[1] }}' as date) and session_id in (
            {{ late_sessions(relation, day_column, days[1]) }}
        ),
        false
    ) = {{ last }};
    {%- endfor %}
{%- endmacro %}


{% macro delete_partition(column) -%}
    {#- pre_hook of the event-grain incremental models (staging; incremental_strategy='append'). -#}
    {{- refuse_partial_full_refresh() -}}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ in_partition(column) }}
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
