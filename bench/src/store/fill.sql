-- store-bench's CDR store (bench/README.md, "store-bench"): `rows` CDRs
-- over `months` monthly partitions ending with this month, in a database
-- migrated by the project's migrator, so the tables, partitions, indexes
-- and triggers are the real ones. Run by store-bench through psql:
--   psql -X -v ON_ERROR_STOP=1 -v rows=N -v months=M -v customers=C -f fill.sql
-- It is SQL, not generated rows sent by the client, because at 100M rows
-- the transfer and parsing of the rows would take longer than the load.
--
-- Bulk-load practice, on the real (logged) tables: the partitions are made
-- first, the indexes are dropped and built once after the load (as
-- migration 0019 does, one sorted build per partition instead of index
-- maintenance per row), and autovacuum waits until the load's own VACUUM.
\set ON_ERROR_STOP on
SET synchronous_commit = off;
SET maintenance_work_mem = '1GB';

-- What was asked and how far the fill got: store-bench reuses the
-- database only when finished_at is set and the sizes match.
CREATE TABLE store_bench_fill (
    rows           BIGINT NOT NULL,
    months         INTEGER NOT NULL,
    first_month    DATE NOT NULL,
    customers      INTEGER NOT NULL,
    subscriptions  INTEGER NOT NULL,
    first_customer BIGINT,
    started_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    loaded_at      TIMESTAMPTZ,
    indexed_at     TIMESTAMPTZ,
    finished_at    TIMESTAMPTZ
);
INSERT INTO store_bench_fill (rows, months, first_month, customers, subscriptions)
VALUES (:rows, :months,
        (date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => :months - 1))::date,
        :customers, :customers * 50);

-- Customers with 50 numbers each, start days spread over the month (their
-- cycles cut the months in different places), a tenth in another zone.
INSERT INTO customer (name, billing_cycle_start_day, time_zone)
SELECT format('Store background %s BV', c), 1 + (c * 7) % 28,
       CASE WHEN c % 10 = 0 THEN 'Europe/Brussels' ELSE 'Europe/Amsterdam' END
FROM generate_series(0, :customers - 1) AS c
ORDER BY c;
UPDATE store_bench_fill SET first_customer =
    (SELECT min(id) FROM customer WHERE name LIKE 'Store background % BV');
-- The CDRs find a customer by arithmetic on the id: one INSERT gave the
-- customers consecutive ids.
SELECT (max(id) - min(id) + 1 = :customers) AS consecutive
FROM customer WHERE name LIKE 'Store background % BV' \gset
\if :consecutive
\else
  \echo 'the background customers did not get consecutive ids'
  \quit 3
\endif
INSERT INTO subscription (customer_id, provider, identifier)
SELECT f.first_customer + s / 50, CASE WHEN s % 10 = 9 THEN 'kpn' ELSE 'routit' END,
       '+3168' || lpad(s::text, 7, '0')
FROM store_bench_fill AS f, generate_series(0, f.subscriptions - 1) AS s;

-- The months' partitions, their keys left for after the load.
SET tem.partition_keys_later = 'on';
SELECT tem_create_month_partition('call_detail_record', (f.first_month + make_interval(months => m))::date)
FROM store_bench_fill AS f, generate_series(0, f.months - 1) AS m
ORDER BY m;
SET tem.partition_keys_later = 'off';

-- The indexes, kept to be built again after the load exactly as the
-- migrations defined them.
CREATE TABLE store_bench_index AS
SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE i.indrelid = 'call_detail_record'::regclass;
SELECT format('DROP INDEX %I', name) FROM store_bench_index \gexec
-- What remains are the partitions' own keys of the months the migration
-- made (this one and the next three, and the default partition).
SELECT format('DROP INDEX %I', c.relname)
FROM pg_partition_tree('call_detail_record') AS t
JOIN pg_index AS i ON i.indrelid = t.relid
JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE t.isleaf \gexec
SELECT format('ALTER TABLE %s SET (autovacuum_enabled = false)', relid::regclass)
FROM pg_partition_tree('call_detail_record') WHERE isleaf \gexec

-- One month per transaction, in time order like daily carrier files.
-- The mix is import-bench's and totals-bench's: 45% voice, 20% SMS, 2%
-- MMS, 30% data, 3% services; 85% home, 12% EU, 3% world; a tenth from a
-- second provider; about 1% of numbers unknown (no customer).
CREATE PROCEDURE store_bench_load() LANGUAGE plpgsql AS $$
DECLARE
    f     store_bench_fill;
    m     INTEGER;
    first TIMESTAMPTZ;
    span  DOUBLE PRECISION;
    n     BIGINT;
BEGIN
    SELECT * INTO STRICT f FROM store_bench_fill;
    FOR m IN 0 .. f.months - 1 LOOP
        first := (f.first_month + make_interval(months => m))::timestamp AT TIME ZONE 'UTC';
        span := extract(epoch FROM (first + interval '1 month') - first);
        n := f.rows / f.months + CASE WHEN m = f.months - 1 THEN f.rows % f.months ELSE 0 END;
        INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at,
            kind, direction, destination, roaming_zone, duration_seconds, volume_bytes, units,
            provider_cost_micros, import_file_id, source_line)
        SELECT provider,
               CASE provider WHEN 'kpn' THEN 'KS' ELSE 'RTS' END || to_char(first AT TIME ZONE 'UTC', 'YYMM')
                   || lpad(g::text, 9, '0'),
               '+3168' || lpad(s::text, 7, '0'),
               CASE WHEN s < f.subscriptions THEN f.first_customer + s / 50 END,
               at, kind,
               CASE WHEN kind IN ('data', 'service') OR r3 < 0.7 THEN 'outgoing' ELSE 'incoming' END,
               CASE WHEN kind = 'data' THEN ''
                    WHEN kind = 'service' THEN (ARRAY['1244', '0900-8844', 'Spotify'])[1 + (g % 3)::int]
                    WHEN r4 < 0.6 THEN '+316' || lpad((floor(r4 * 1e9)::bigint % 100000000)::text, 8, '0')
                    WHEN r4 < 0.8 THEN '+3120' || lpad((floor(r4 * 1e9)::bigint % 10000000)::text, 7, '0')
                    WHEN r4 < 0.9 THEN '+324' || lpad((floor(r4 * 1e9)::bigint % 100000000)::text, 8, '0')
                    ELSE '+4915' || lpad((floor(r4 * 1e9)::bigint % 100000000)::text, 8, '0') END,
               zone, seconds, bytes,
               CASE WHEN kind IN ('sms', 'mms', 'service') THEN 1 ELSE 0 END,
               CASE kind WHEN 'voice' THEN seconds * CASE zone WHEN 'home' THEN 250 WHEN 'eu' THEN 500 ELSE 15000 END
                         WHEN 'data' THEN bytes / 100000
                         WHEN 'sms' THEN 75000
                         WHEN 'mms' THEN 250000
                         ELSE 500000 END,
               -- One file per provider and UTC day.
               (extract(epoch FROM at)::bigint / 86400) * 2 + CASE provider WHEN 'kpn' THEN 1 ELSE 0 END,
               (g % 2000000000)::int
        FROM (
            SELECT g, s, r3, r4, kind, zone,
                   CASE WHEN s % 10 = 9 THEN 'kpn' ELSE 'routit' END AS provider,
                   first + make_interval(secs => least(floor((g - 1) * span / n) + floor(r1 * 3), span - 1)) AS at,
                   CASE WHEN kind = 'voice' THEN CASE WHEN r5 < 0.05 THEN 0
                                                      WHEN r5 < 0.95 THEN 1 + floor(r5 * 900)::int
                                                      ELSE 900 + floor(r5 * 3600)::int END
                        ELSE 0 END AS seconds,
                   CASE WHEN kind = 'data' THEN floor(r5 * r5 * r5 * 500e6)::bigint ELSE 0 END AS bytes
            FROM (
                SELECT g, r1, r3, r4, r5,
                       floor(r2 * f.subscriptions * 1.01)::int AS s,
                       CASE WHEN k < 0.45 THEN 'voice' WHEN k < 0.65 THEN 'sms' WHEN k < 0.67 THEN 'mms'
                            WHEN k < 0.97 THEN 'data' ELSE 'service' END AS kind,
                       CASE WHEN z < 0.85 THEN 'home' WHEN z < 0.97 THEN 'eu' ELSE 'world' END AS zone
                FROM (SELECT g, random() AS k, random() AS z, random() AS r1, random() AS r2,
                             random() AS r3, random() AS r4, random() AS r5
                      FROM generate_series(1, n) AS g) AS draws
            ) AS usage
        ) AS cdr;
        RAISE NOTICE 'store-bench: month % of %: % CDRs of % loaded at %', m + 1, f.months, n,
            to_char(first AT TIME ZONE 'UTC', 'YYYY-MM'), clock_timestamp();
        COMMIT;
    END LOOP;
END
$$;
SELECT setseed(0.2025);
CALL store_bench_load();
UPDATE store_bench_fill SET loaded_at = clock_timestamp();

-- The keys, one sorted build per partition, then the table's indexes.
SELECT format('CREATE UNIQUE INDEX %I ON %s (provider, external_id)', relid::regclass::text || '_key', relid::regclass)
FROM pg_partition_tree('call_detail_record') WHERE isleaf \gexec
-- (pg_get_indexdef says ON ONLY for a partitioned table's index, which
-- would build it for no partition.)
SELECT replace(definition, ' ON ONLY ', ' ON ') FROM store_bench_index \gexec
UPDATE store_bench_fill SET indexed_at = clock_timestamp();

-- Hint bits, visibility map and statistics, as on a table in use for a
-- while; then autovacuum as everywhere else.
VACUUM (ANALYZE) call_detail_record;
ANALYZE customer, subscription;
SELECT format('ALTER TABLE %s RESET (autovacuum_enabled)', relid::regclass)
FROM pg_partition_tree('call_detail_record') WHERE isleaf \gexec
DROP PROCEDURE store_bench_load();
DROP TABLE store_bench_index;
UPDATE store_bench_fill SET finished_at = clock_timestamp();
