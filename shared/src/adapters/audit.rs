//! The carrier bill audit's store on PostgreSQL (migration 0018):
//! [`AuditStore`] (what an audit reads and how its findings are recorded)
//! and [`FindingStore`] (the findings as operators work them).
//!
//! The CDRs of the account's subscriptions are summed by the database in
//! one `GROUP BY` over a hash join with the subscriptions in scope (not
//! `= ANY(array)`, which would compare every CDR with every subscription),
//! so an audit reads one row per subscription and kind whatever the
//! number of CDRs.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use chrono::{Days, NaiveDate};
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::audit::dispute::{FindingFilter, FindingStore, StatusUpdate, StoredFinding};
use crate::audit::parse::CarrierFile;
use crate::audit::run::{AuditStore, Existing, Recorded, Scope};
use crate::audit::{Finding, Known};
use crate::costs::ChargeClass;
use crate::ports::StoreError;

#[derive(Clone)]
pub struct PgAudit {
    pool: PgPool,
}

impl PgAudit {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn bad_row(what: String) -> StoreError {
    StoreError {
        retryable: false,
        source: what.into(),
    }
}

#[async_trait]
impl AuditStore for PgAudit {
    async fn existing(
        &self,
        provider: &str,
        account: &str,
        period_start: NaiveDate,
        sha256: &str,
    ) -> Result<Existing, StoreError> {
        let row = sqlx::query(
            "SELECT id, superseded_by FROM carrier_invoice
             WHERE provider = $1 AND account = $2 AND period_start = $3 AND content_sha256 = $4",
        )
        .bind(provider)
        .bind(account)
        .bind(period_start)
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => Existing::New,
            Some(row) => match row.try_get::<Option<i64>, _>("superseded_by")? {
                None => Existing::Current(row.try_get("id")?),
                Some(by) => Existing::Superseded {
                    id: row.try_get("id")?,
                    by,
                },
            },
        })
    }

    async fn known(&self, scope: &Scope) -> Result<BTreeMap<String, Known>, StoreError> {
        // The account's rates valid on the period's start, and which
        // subscriptions the account has rates for at all.
        let rows = sqlx::query(
            "SELECT subscription,
                    (array_agg(recurring_micros ORDER BY valid_from DESC)
                        FILTER (WHERE valid_from <= $3))[1] AS rate
             FROM buy_rate WHERE provider = $1 AND account = $2 GROUP BY subscription",
        )
        .bind(&scope.provider)
        .bind(&scope.account)
        .bind(scope.period_start)
        .fetch_all(&self.pool)
        .await?;
        let mut known: BTreeMap<String, Known> = BTreeMap::new();
        for row in rows {
            known
                .entry(row.try_get("subscription")?)
                .or_default()
                .buy_rate_micros = row.try_get("rate")?;
        }
        let in_scope: Vec<String> = known
            .keys()
            .cloned()
            .chain(scope.billed.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();

        // The inventory: a number may have several periods; it is active
        // from its first to its last (`active_to` inclusive; exclusive here).
        let rows = sqlx::query(
            "SELECT s.identifier, min(s.active_from) AS active_from,
                    CASE WHEN bool_or(s.active_to IS NULL) THEN NULL ELSE max(s.active_to) END AS active_to
             FROM subscription s JOIN unnest($2::text[]) AS k(id) ON k.id = s.identifier
             WHERE s.provider = $1 GROUP BY s.identifier",
        )
        .bind(&scope.provider)
        .bind(&in_scope)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let k = known.entry(row.try_get("identifier")?).or_default();
            k.active_from = Some(row.try_get("active_from")?);
            let to: Option<NaiveDate> = row.try_get("active_to")?;
            k.active_to = to.and_then(|d| d.checked_add_days(Days::new(1)));
        }

        let rows = sqlx::query(
            "SELECT c.subscription, c.kind, sum(c.provider_cost_micros)::bigint AS cost, count(*) AS cdrs
             FROM call_detail_record c JOIN unnest($2::text[]) AS k(id) ON k.id = c.subscription
             WHERE c.provider = $1 AND c.started_at >= $3 AND c.started_at < $4
             GROUP BY c.subscription, c.kind",
        )
        .bind(&scope.provider)
        .bind(&in_scope)
        .bind(scope.cdr_from)
        .bind(scope.cdr_to)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let class: ChargeClass = kind
                .parse()
                .map_err(|e: String| bad_row(format!("call_detail_record.kind: {e}")))?;
            let cost: i64 = row.try_get("cost")?;
            let cdrs: i64 = row.try_get("cdrs")?;
            known
                .entry(row.try_get("subscription")?)
                .or_default()
                .usage
                .insert(class, (cost, u64::try_from(cdrs).unwrap_or(0)));
        }
        // A billed number with no inventory row keeps `active_from` None:
        // the audit reports it as billed but not active.
        Ok(known)
    }

    async fn record(
        &self,
        scope: &Scope,
        file: &CarrierFile,
        sha256: &str,
        findings: &[Finding],
    ) -> Result<Recorded, StoreError> {
        let invoice = &file.invoice;
        let mut tx = self.pool.begin().await?;
        // Imports of one period take turns: which invoice is current
        // depends on which was recorded last.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!(
                "tem:carrier-invoice:{}/{}/{}",
                invoice.provider, invoice.account, invoice.period_start
            ))
            .execute(&mut *tx)
            .await?;
        let mut recorded = Recorded::default();
        let same = sqlx::query(
            "SELECT id, superseded_by FROM carrier_invoice
             WHERE provider = $1 AND account = $2 AND period_start = $3 AND content_sha256 = $4",
        )
        .bind(&invoice.provider)
        .bind(&invoice.account)
        .bind(invoice.period_start)
        .bind(sha256)
        .fetch_optional(&mut *tx)
        .await?;
        let invoice_id: i64 = match same {
            Some(row) => {
                recorded.reimported = true;
                let by: Option<i64> = row.try_get("superseded_by")?;
                if by.is_some() {
                    // Superseded while this audit ran: its findings stay as
                    // they were.
                    recorded.invoice_id = row.try_get("id")?;
                    recorded.superseded_by = by;
                    tx.commit().await?;
                    return Ok(recorded);
                }
                let id: i64 = row.try_get("id")?;
                sqlx::query("UPDATE carrier_invoice SET audited_at = now() WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                id
            }
            None => {
                let id: i64 = sqlx::query_scalar(
                    "SELECT nextval(pg_get_serial_sequence('carrier_invoice', 'id'))",
                )
                .fetch_one(&mut *tx)
                .await?;
                recorded.superseded = sqlx::query_scalar(
                    "UPDATE carrier_invoice SET superseded_by = $4
                     WHERE provider = $1 AND account = $2 AND period_start = $3 AND superseded_by IS NULL
                     RETURNING id",
                )
                .bind(&invoice.provider)
                .bind(&invoice.account)
                .bind(invoice.period_start)
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE audit_finding SET superseded_by = $2, updated_at = now()
                     WHERE carrier_invoice_id = ANY($1) AND superseded_by IS NULL",
                )
                .bind(&recorded.superseded)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO carrier_invoice (id, provider, account, invoice_number, period_start, period_end,
                         file_key, content_sha256, lines_read, rejected, stated_total_micros, lines_total_micros)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(id)
                .bind(&invoice.provider)
                .bind(&invoice.account)
                .bind(&invoice.invoice_number)
                .bind(invoice.period_start)
                .bind(invoice.period_end)
                .bind(&invoice.file)
                .bind(sha256)
                .bind(i32::try_from(invoice.lines.len()).unwrap_or(i32::MAX))
                .bind(serde_json::to_value(&file.rejected).unwrap_or(Value::Null))
                .bind(file.stated_total.map(|(_, total)| total))
                .bind(file.lines_total)
                .execute(&mut *tx)
                .await?;
                id
            }
        };
        recorded.invoice_id = invoice_id;

        let rows: Vec<Value> = findings
            .iter()
            .map(|f| {
                let lines = f
                    .evidence
                    .lines
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                let cdrs = f.evidence.cdrs.as_ref();
                json!({
                    "kind": f.kind.as_str(),
                    "subscription": f.subscription,
                    "charge_class": f.class.map(ChargeClass::as_str).unwrap_or(""),
                    "billed": f.billed_micros,
                    "expected": f.expected_micros,
                    "lines": format!("{{{lines}}}"),
                    "cdr_count": cdrs.map(|c| c.count),
                    "windowed": cdrs.is_some(),
                })
            })
            .collect();
        let rows = Value::Array(rows);
        let removed = sqlx::query(
            "DELETE FROM audit_finding a
             WHERE a.carrier_invoice_id = $1 AND a.status = 'open' AND a.superseded_by IS NULL
               AND NOT EXISTS (
                 SELECT 1 FROM jsonb_to_recordset($2) AS f(kind text, subscription text, charge_class text)
                 WHERE (f.kind, f.subscription, f.charge_class) = (a.kind, a.subscription, coalesce(a.charge_class, '')))",
        )
        .bind(invoice_id)
        .bind(&rows)
        .execute(&mut *tx)
        .await?;
        recorded.findings_removed = usize::try_from(removed.rows_affected()).unwrap_or(0);
        let inserted: Vec<bool> = sqlx::query_scalar(
            "INSERT INTO audit_finding AS a (carrier_invoice_id, kind, subscription, charge_class, billed_micros,
                 expected_micros, file_key, lines, cdr_count, cdr_from, cdr_to)
             SELECT $1, f.kind, f.subscription, nullif(f.charge_class, ''), f.billed, f.expected, $3, f.lines,
                    f.cdr_count, CASE WHEN f.windowed THEN $4::timestamptz END, CASE WHEN f.windowed THEN $5::timestamptz END
             FROM jsonb_to_recordset($2) AS f(kind text, subscription text, charge_class text, billed bigint,
                  expected bigint, lines int[], cdr_count bigint, windowed boolean)
             ON CONFLICT (carrier_invoice_id, kind, subscription, (coalesce(charge_class, ''))) DO UPDATE
                SET billed_micros = EXCLUDED.billed_micros, expected_micros = EXCLUDED.expected_micros,
                    lines = EXCLUDED.lines, cdr_count = EXCLUDED.cdr_count, updated_at = now()
                WHERE a.status = 'open'
             RETURNING (xmax = 0)",
        )
        .bind(invoice_id)
        .bind(&rows)
        .bind(&invoice.file)
        .bind(scope.cdr_from)
        .bind(scope.cdr_to)
        .fetch_all(&mut *tx)
        .await?;
        recorded.findings_created = inserted.iter().filter(|new| **new).count();
        recorded.findings_updated = inserted.len() - recorded.findings_created;
        tx.commit().await?;
        Ok(recorded)
    }
}

const FINDING_COLUMNS: &str = "a.id, a.carrier_invoice_id, i.provider, i.account, i.invoice_number, i.period_start,
    i.period_end, a.kind, a.subscription, a.charge_class, a.billed_micros, a.expected_micros, a.file_key, a.lines,
    a.cdr_count, a.cdr_from, a.cdr_to, a.status, a.recovered_micros, a.note, a.superseded_by, a.created_at,
    a.updated_at, a.disputed_at, a.resolved_at";

fn finding_from_row(row: &PgRow) -> Result<StoredFinding, StoreError> {
    let kind: String = row.try_get("kind")?;
    let class: Option<String> = row.try_get("charge_class")?;
    let status: String = row.try_get("status")?;
    let lines: Vec<i32> = row.try_get("lines")?;
    let cdr_count: Option<i64> = row.try_get("cdr_count")?;
    Ok(StoredFinding {
        id: row.try_get("id")?,
        carrier_invoice_id: row.try_get("carrier_invoice_id")?,
        provider: row.try_get("provider")?,
        account: row.try_get("account")?,
        invoice_number: row.try_get("invoice_number")?,
        period_start: row.try_get("period_start")?,
        period_end: row.try_get("period_end")?,
        kind: kind
            .parse()
            .map_err(|e: String| bad_row(format!("audit_finding.kind: {e}")))?,
        subscription: row.try_get("subscription")?,
        class: class
            .map(|c| c.parse::<ChargeClass>())
            .transpose()
            .map_err(|e| bad_row(format!("audit_finding.charge_class: {e}")))?,
        billed_micros: row.try_get("billed_micros")?,
        expected_micros: row.try_get("expected_micros")?,
        file_key: row.try_get("file_key")?,
        lines: lines
            .into_iter()
            .map(|l| u32::try_from(l).unwrap_or(0))
            .collect(),
        cdr_count: cdr_count.map(|n| u64::try_from(n).unwrap_or(0)),
        cdr_from: row.try_get("cdr_from")?,
        cdr_to: row.try_get("cdr_to")?,
        status: status
            .parse()
            .map_err(|e: String| bad_row(format!("audit_finding.status: {e}")))?,
        recovered_micros: row.try_get("recovered_micros")?,
        note: row.try_get("note")?,
        superseded_by: row.try_get("superseded_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        disputed_at: row.try_get("disputed_at")?,
        resolved_at: row.try_get("resolved_at")?,
    })
}

#[async_trait]
impl FindingStore for PgAudit {
    async fn findings(&self, filter: &FindingFilter) -> Result<Vec<StoredFinding>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {FINDING_COLUMNS} FROM audit_finding a JOIN carrier_invoice i ON i.id = a.carrier_invoice_id
             WHERE ($1::text IS NULL OR i.provider = $1) AND ($2::date IS NULL OR i.period_start = $2)
               AND ($3::text IS NULL OR a.status = $3) AND ($4 OR a.superseded_by IS NULL)
             ORDER BY i.provider, i.account, i.period_start, a.subscription, a.kind, a.id"
        ))
        .bind(&filter.provider)
        .bind(filter.period)
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.include_superseded)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(finding_from_row).collect()
    }

    async fn finding(&self, id: i64) -> Result<Option<StoredFinding>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {FINDING_COLUMNS} FROM audit_finding a JOIN carrier_invoice i ON i.id = a.carrier_invoice_id
             WHERE a.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(finding_from_row).transpose()
    }

    async fn update_status(
        &self,
        id: i64,
        update: &StatusUpdate,
    ) -> Result<Option<StoredFinding>, StoreError> {
        let changed = sqlx::query(
            "UPDATE audit_finding SET status = $3, recovered_micros = $4, note = $5, updated_at = now(),
                 disputed_at = CASE WHEN $3 = 'disputed' THEN now() ELSE disputed_at END,
                 resolved_at = CASE WHEN $3 IN ('credited', 'written_off') THEN now() END
             WHERE id = $1 AND status = $2 AND superseded_by IS NULL",
        )
        .bind(id)
        .bind(update.from.as_str())
        .bind(update.to.as_str())
        .bind(update.recovered_micros)
        .bind(&update.note)
        .execute(&self.pool)
        .await?;
        if changed.rows_affected() == 0 {
            return Ok(None);
        }
        self.finding(id).await
    }
}
