-- Natural keys for configuration as data (`temctl apply`): applying the same
-- file twice must find the rows it wrote the first time.

-- Refuse, with the rows to fix, rather than guess which duplicate is meant:
-- both keys decide which customer a CDR is billed to or which account is
-- synced.
DO $$
DECLARE
    duplicates TEXT;
BEGIN
    SELECT string_agg(format('%s %s from %s (ids %s)', provider, identifier, active_from, ids), '; ')
      INTO duplicates
      FROM (SELECT provider, identifier, active_from, string_agg(id::text, ', ' ORDER BY id) AS ids
              FROM subscription GROUP BY provider, identifier, active_from HAVING count(*) > 1) d;
    IF duplicates IS NOT NULL THEN
        RAISE EXCEPTION 'subscriptions with the same provider, identifier and active_from: %', duplicates
            USING HINT = 'delete or re-date all but one of each, then run the migrations again';
    END IF;
    SELECT string_agg(format('%L (ids %s)', name, ids), '; ')
      INTO duplicates
      FROM (SELECT name, string_agg(id::text, ', ' ORDER BY id) AS ids
              FROM sync_profile GROUP BY name HAVING count(*) > 1) d;
    IF duplicates IS NOT NULL THEN
        RAISE EXCEPTION 'sync profiles with the same name: %', duplicates
            USING HINT = 'rename all but one of each, then run the migrations again';
    END IF;
END
$$;

-- The code an apply file names a customer by. NULL for customers created
-- before codes existed; they are left alone until a file gives them one.
ALTER TABLE customer ADD COLUMN code TEXT UNIQUE CHECK (code <> '');

ALTER TABLE subscription
    ADD CONSTRAINT subscription_natural_key UNIQUE (provider, identifier, active_from);

ALTER TABLE sync_profile ADD CONSTRAINT sync_profile_name_key UNIQUE (name);

-- Every apply that changed something: what changed, from which file. The id
-- is part of the follow-up message ids, so re-sending one apply's follow-up
-- is deduplicated while a later apply's is not.
CREATE TABLE catalog_apply (
    id          BIGSERIAL PRIMARY KEY,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    source      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    changed     INTEGER NOT NULL,
    changes     JSONB NOT NULL
);
