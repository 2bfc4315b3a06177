-- Cost centres and chargeback (issue 19): each customer's organisation as
-- a tree of cost nodes, and each subscription's effective-dated assignment
-- to nodes of that tree. Written by `temctl apply` (catalog/cost_centres.rs),
-- read by the allocation of a cycle (costs/cycle.rs). The tree's rules
-- (parents exist, no cycles, nothing below an employee) are checked in
-- Rust with `CostTree::new` before anything is written, so `parent_code`
-- has no foreign key: an apply replaces a customer's whole tree at once
-- and would otherwise have to order its deletes and inserts.

CREATE TABLE cost_node (
    customer_id  BIGINT NOT NULL REFERENCES customer (id),
    code         TEXT NOT NULL CHECK (code <> '' AND code <> 'UNALLOCATED'),
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('division', 'department', 'cost_centre', 'employee')),
    parent_code  TEXT,
    -- General-ledger account per charge class, e.g. {"data": "4810"}; a
    -- class without one takes the nearest ancestor's.
    gl_codes     JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, code),
    CHECK (parent_code IS NULL OR parent_code <> code)
);

-- One row per version: the version valid on a cycle's start date decides
-- where that cycle's charges go. Shares are JSON lists of
-- {"node": CODE, "weight": PERCENT}; `by_class` maps a charge class to such
-- a list. Kept as JSON because they are read and written whole, always
-- with their assignment.
CREATE TABLE cost_assignment (
    customer_id   BIGINT NOT NULL REFERENCES customer (id),
    subscription  TEXT NOT NULL,
    valid_from    DATE NOT NULL,
    shares        JSONB NOT NULL CHECK (jsonb_typeof(shares) = 'array' AND jsonb_array_length(shares) > 0),
    by_class      JSONB NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(by_class) = 'object'),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, subscription, valid_from)
);
