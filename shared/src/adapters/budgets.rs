//! Budgets, alert rules, budget levels, the alert outbox and the
//! bill-shock alerts on PostgreSQL (migration 0017): [`BudgetStore`] and its
//! run (one transaction under the cycle's budget lock), [`AlertOutbox`],
//! and [`BillShockStore`] for the import.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::{json, Value};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::adapters::costs::{assignment_from_row, node_from_row};
use crate::billing::invoice::UsageLine;
use crate::budgets::alerts::{Alert, AlertKind, AlertOutbox};
use crate::budgets::anomaly::{Anomaly, AnomalyRule};
use crate::budgets::bill_shock::{Shock, UsageCdr};
use crate::budgets::cycle::{BudgetConfig, BudgetRun, BudgetStore, StoredBudget};
use crate::budgets::import::{BillShockStore, ShockCustomer};
use crate::budgets::{Budget, Level, Scope};
use crate::catalog::budgets::{scope_from, scope_key};
use crate::cdr::{Kind, Zone};
use crate::ports::StoreError;

/// How long a claim of outbox rows holds: longer than a publish of 50.
const CLAIM_SECONDS: i64 = 60;

#[derive(Clone)]
pub struct PgBudgets {
    pool: PgPool,
}

impl PgBudgets {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn bad(what: &str, value: impl std::fmt::Debug) -> StoreError {
    StoreError {
        retryable: false,
        source: format!(
            "{what} {value:?} is not valid; apply the configuration again with temctl apply"
        )
        .into(),
    }
}

async fn customer_label(pool: &PgPool, customer_id: i64) -> Result<String, StoreError> {
    let code: Option<Option<String>> =
        sqlx::query_scalar("SELECT code FROM customer WHERE id = $1")
            .bind(customer_id)
            .fetch_optional(pool)
            .await?;
    Ok(code.flatten().unwrap_or_else(|| customer_id.to_string()))
}

#[async_trait]
impl BudgetStore for PgBudgets {
    async fn config(&self, customer_id: i64, cycle: NaiveDate) -> Result<BudgetConfig, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (scope, subject) scope, subject, valid_from, amount_micros, thresholds
             FROM budget WHERE customer_id = $1 AND valid_from <= $2
             ORDER BY scope, subject, valid_from DESC",
        )
        .bind(customer_id)
        .bind(cycle)
        .fetch_all(&self.pool)
        .await?;
        let mut budgets = Vec::with_capacity(rows.len());
        for row in rows {
            let scope: String = row.try_get("scope")?;
            let subject: String = row.try_get("subject")?;
            let scope = scope_from(&scope, &subject).ok_or_else(|| bad("budget scope", &scope))?;
            let thresholds: Vec<i32> = row.try_get("thresholds")?;
            let budget = Budget::new(
                scope,
                row.try_get("amount_micros")?,
                thresholds.iter().map(|t| u32::try_from(*t).unwrap_or(0)),
            )
            .map_err(|e| bad("budget", e.to_string()))?;
            budgets.push(StoredBudget {
                valid_from: row.try_get("valid_from")?,
                budget,
            });
        }
        let rule = sqlx::query(
            "SELECT anomaly_k_percent, anomaly_floor_micros FROM alert_rule
             WHERE customer_id = $1 AND valid_from <= $2 ORDER BY valid_from DESC LIMIT 1",
        )
        .bind(customer_id)
        .bind(cycle)
        .fetch_optional(&self.pool)
        .await?;
        let anomaly = match rule {
            Some(row) => {
                let k: Option<i32> = row.try_get("anomaly_k_percent")?;
                let floor: Option<i64> = row.try_get("anomaly_floor_micros")?;
                k.zip(floor).map(|(k, floor_micros)| AnomalyRule {
                    k_percent: u32::try_from(k).unwrap_or(0),
                    floor_micros,
                })
            }
            None => None,
        };
        let mut config = BudgetConfig {
            customer: String::new(),
            budgets,
            anomaly,
            tree: Vec::new(),
            assignments: Vec::new(),
        };
        if config.budgets.is_empty() && config.anomaly.is_none() {
            return Ok(config);
        }
        config.customer = customer_label(&self.pool, customer_id).await?;
        if config
            .budgets
            .iter()
            .any(|b| matches!(b.budget.scope, Scope::CostCentre(_)))
        {
            let rows = sqlx::query(
                "SELECT code, name, kind, parent_code, gl_codes FROM cost_node WHERE customer_id = $1 ORDER BY code",
            )
            .bind(customer_id)
            .fetch_all(&self.pool)
            .await?;
            config.tree = rows
                .iter()
                .map(node_from_row)
                .collect::<Result<_, sqlx::Error>>()?;
            let rows = sqlx::query(
                "SELECT subscription, valid_from, shares, by_class FROM cost_assignment
                 WHERE customer_id = $1 ORDER BY subscription, valid_from",
            )
            .bind(customer_id)
            .fetch_all(&self.pool)
            .await?;
            config.assignments = rows
                .iter()
                .map(assignment_from_row)
                .collect::<Result<_, sqlx::Error>>()?;
        }
        Ok(config)
    }

    async fn begin(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Box<dyn BudgetRun>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Two evaluations of one cycle (two chains that each calculated)
        // run one after the other, the second reading the first's levels
        // and the totals as they are once it holds the lock.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("budget:{customer_id}:{cycle}"))
            .execute(&mut *tx)
            .await?;
        Ok(Box::new(PgBudgetRun {
            tx,
            customer_id,
            cycle,
        }))
    }
}

struct PgBudgetRun {
    tx: Transaction<'static, Postgres>,
    customer_id: i64,
    cycle: NaiveDate,
}

#[async_trait]
impl BudgetRun for PgBudgetRun {
    async fn usage(&mut self) -> Result<Option<Vec<UsageLine>>, StoreError> {
        let rows = sqlx::query(
            "SELECT l.subscription, l.kind, l.roaming_zone, l.cdr_count, l.voice_seconds, l.data_bytes,
                    l.messages, l.rated_cost_micros
             FROM totals t
             LEFT JOIN totals_line l ON l.customer_id = t.customer_id AND l.cycle = t.cycle
             WHERE t.customer_id = $1 AND t.cycle = $2",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_all(&mut *self.tx)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut lines = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(subscription) = r.try_get::<Option<String>, _>("subscription")? else {
                continue;
            };
            lines.push(UsageLine {
                subscription,
                kind: r.try_get("kind")?,
                zone: r.try_get("roaming_zone")?,
                cdr_count: r.try_get("cdr_count")?,
                voice_seconds: r.try_get("voice_seconds")?,
                data_bytes: r.try_get("data_bytes")?,
                messages: r.try_get("messages")?,
                rated_cost_micros: r.try_get("rated_cost_micros")?,
            });
        }
        Ok(Some(lines))
    }

    async fn fee_counts(&mut self) -> Result<BTreeMap<String, i64>, StoreError> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT identifier, count(*) FROM subscription
             WHERE customer_id = $1 AND active_from <= $2 AND (active_to IS NULL OR active_to >= $2)
             GROUP BY identifier",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_all(&mut *self.tx)
        .await?
        .into_iter()
        .collect())
    }

    async fn usage_by_subscription(
        &mut self,
        cycles: &[NaiveDate],
    ) -> Result<BTreeMap<NaiveDate, BTreeMap<String, i64>>, StoreError> {
        let mut out: BTreeMap<NaiveDate, BTreeMap<String, i64>> = BTreeMap::new();
        // A cycle with totals but no lines still counts (as 0 for all).
        let with_totals: Vec<NaiveDate> = sqlx::query_scalar(
            "SELECT cycle FROM totals WHERE customer_id = $1 AND cycle = ANY($2)",
        )
        .bind(self.customer_id)
        .bind(cycles)
        .fetch_all(&mut *self.tx)
        .await?;
        for cycle in with_totals {
            out.entry(cycle).or_default();
        }
        let rows = sqlx::query_as::<_, (NaiveDate, String, i64)>(
            "SELECT cycle, subscription, sum(rated_cost_micros)::bigint FROM totals_line
             WHERE customer_id = $1 AND cycle = ANY($2) GROUP BY cycle, subscription",
        )
        .bind(self.customer_id)
        .bind(cycles)
        .fetch_all(&mut *self.tx)
        .await?;
        for (cycle, subscription, cost) in rows {
            out.entry(cycle).or_default().insert(subscription, cost);
        }
        Ok(out)
    }

    async fn levels(&mut self) -> Result<BTreeMap<Scope, Level>, StoreError> {
        let rows = sqlx::query_as::<_, (String, String, Option<i32>)>(
            "SELECT scope, subject, level FROM budget_level WHERE customer_id = $1 AND cycle = $2",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut out = BTreeMap::new();
        for (scope, subject, level) in rows {
            if let Some(scope) = scope_from(&scope, &subject) {
                out.insert(scope, level.and_then(|l| u32::try_from(l).ok()));
            }
        }
        Ok(out)
    }

    async fn set_level(
        &mut self,
        scope: &Scope,
        level: Level,
        spent_micros: i64,
    ) -> Result<(), StoreError> {
        let (scope, subject) = scope_key(scope);
        sqlx::query(
            "INSERT INTO budget_level (customer_id, cycle, scope, subject, level, spent_micros)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (customer_id, cycle, scope, subject) DO UPDATE
             SET level = EXCLUDED.level, spent_micros = EXCLUDED.spent_micros, updated_at = now()",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .bind(scope)
        .bind(subject)
        .bind(level.map(|l| i32::try_from(l).unwrap_or(i32::MAX)))
        .bind(spent_micros)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn raise(&mut self, alert: &Alert, insight_subject: &str) -> Result<(), StoreError> {
        enqueue(&mut self.tx, alert).await?;
        if !insight_subject.is_empty() {
            sqlx::query(
                "INSERT INTO billing_insight (customer_id, cycle, kind, subject, detail)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (customer_id, cycle, kind, subject) DO UPDATE
                 SET detail = EXCLUDED.detail, detected_at = now()",
            )
            .bind(self.customer_id)
            .bind(self.cycle)
            .bind(alert.kind.as_str())
            .bind(insight_subject)
            .bind(&alert.body)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    async fn anomalous(&mut self) -> Result<BTreeSet<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT subject FROM billing_insight WHERE customer_id = $1 AND cycle = $2 AND kind = 'anomaly'",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .fetch_all(&mut *self.tx)
        .await?
        .into_iter()
        .collect())
    }

    async fn replace_anomalies(
        &mut self,
        anomalies: &BTreeMap<String, Anomaly>,
    ) -> Result<(), StoreError> {
        let subjects: Vec<&str> = anomalies.keys().map(String::as_str).collect();
        let details: Vec<Value> = anomalies
            .iter()
            .map(|(s, a)| {
                json!({
                    "subscription": s,
                    "cost_micros": a.cost_micros,
                    "median_micros": a.median_micros,
                    "limit_micros": a.limit_micros,
                })
            })
            .collect();
        sqlx::query(
            "DELETE FROM billing_insight WHERE customer_id = $1 AND cycle = $2 AND kind = 'anomaly'
               AND NOT (subject = ANY($3))",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .bind(&subjects)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "INSERT INTO billing_insight (customer_id, cycle, kind, subject, detail)
             SELECT $1, $2, 'anomaly', s, d FROM UNNEST($3::text[], $4::jsonb[]) AS n(s, d)
             ON CONFLICT (customer_id, cycle, kind, subject) DO UPDATE
             SET detail = EXCLUDED.detail,
                 detected_at = CASE WHEN billing_insight.detail = EXCLUDED.detail
                                    THEN billing_insight.detected_at ELSE now() END",
        )
        .bind(self.customer_id)
        .bind(self.cycle)
        .bind(&subjects)
        .bind(&details)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// Writes an alert to the outbox inside `tx`.
async fn enqueue(tx: &mut Transaction<'static, Postgres>, alert: &Alert) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO alert_outbox (id, customer_id, kind, attributes, body) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&alert.id)
    .bind(alert.customer_id)
    .bind(alert.kind.as_str())
    .bind(serde_json::to_value(&alert.attributes).unwrap_or(Value::Null))
    .bind(&alert.body)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn kind_of(kind: &str) -> Option<AlertKind> {
    [
        AlertKind::BudgetAlert,
        AlertKind::BudgetResolved,
        AlertKind::BillShock,
        AlertKind::Anomaly,
    ]
    .into_iter()
    .find(|k| k.as_str() == kind)
}

#[async_trait]
impl AlertOutbox for PgBudgets {
    async fn claim(&self, customer_id: i64, limit: i64) -> Result<Vec<Alert>, StoreError> {
        let rows = sqlx::query(
            "UPDATE alert_outbox SET claimed_until = now() + make_interval(secs => $3)
             WHERE id IN (SELECT id FROM alert_outbox
                          WHERE customer_id = $1 AND published_at IS NULL
                            AND (claimed_until IS NULL OR claimed_until < now())
                          ORDER BY created_at, id LIMIT $2
                          FOR UPDATE SKIP LOCKED)
             RETURNING id, customer_id, kind, attributes, body, created_at",
        )
        .bind(customer_id)
        .bind(limit)
        .bind(CLAIM_SECONDS as f64)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let attributes: Value = row.try_get("attributes")?;
            let created_at: DateTime<Utc> = row.try_get("created_at")?;
            out.push((
                created_at,
                Alert {
                    id: row.try_get("id")?,
                    customer_id: row.try_get("customer_id")?,
                    kind: kind_of(&kind).ok_or_else(|| bad("alert kind", &kind))?,
                    attributes: serde_json::from_value(attributes)
                        .map_err(|e| bad("alert attributes", e.to_string()))?,
                    body: row.try_get("body")?,
                },
            ));
        }
        // RETURNING keeps no order: publish oldest first.
        out.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
        Ok(out.into_iter().map(|(_, a)| a).collect())
    }

    async fn customers_pending(&self) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT customer_id FROM alert_outbox WHERE published_at IS NULL ORDER BY customer_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn published(&self, id: &str, message_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE alert_outbox SET published_at = now(), message_id = $2, claimed_until = NULL
             WHERE id = $1",
        )
        .bind(id)
        .bind(message_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl BillShockStore for PgBudgets {
    async fn customers(
        &self,
        import_file_id: i64,
        customer_ids: &[i64],
    ) -> Result<Vec<ShockCustomer>, StoreError> {
        // Per customer with a bill-shock rule today, the span of this
        // file's roaming data outside the EU (the partial index).
        let rows = sqlx::query(
            "SELECT c.id, coalesce(c.code, c.id::text) AS label, r.bill_shock_limit_micros,
                    c.billing_cycle_start_day, c.time_zone,
                    min(d.started_at) AS first_at, max(d.started_at) AS last_at
             FROM customer c
             JOIN LATERAL (SELECT bill_shock_limit_micros FROM alert_rule
                           WHERE customer_id = c.id AND valid_from <= current_date
                           ORDER BY valid_from DESC LIMIT 1) r ON r.bill_shock_limit_micros IS NOT NULL
             JOIN call_detail_record d ON d.customer_id = c.id AND d.kind = 'data' AND d.roaming_zone = 'world'
                                      AND d.import_file_id = $1
             WHERE c.id = ANY($2)
             GROUP BY c.id, c.code, c.billing_cycle_start_day, c.time_zone, r.bill_shock_limit_micros",
        )
        .bind(import_file_id)
        .bind(customer_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(ShockCustomer {
                customer_id: row.try_get("id")?,
                customer: row.try_get("label")?,
                limit_micros: row.try_get("bill_shock_limit_micros")?,
                start_day: u32::try_from(row.try_get::<i16, _>("billing_cycle_start_day")?)
                    .unwrap_or(1),
                time_zone: row.try_get("time_zone")?,
                first_at: row.try_get("first_at")?,
                last_at: row.try_get("last_at")?,
            });
        }
        Ok(out)
    }

    async fn world_data(
        &self,
        customer_id: i64,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageCdr>, StoreError> {
        let rows = sqlx::query_as::<_, (String, DateTime<Utc>, i64)>(
            "SELECT subscription, started_at, provider_cost_micros FROM call_detail_record
             WHERE customer_id = $1 AND kind = 'data' AND roaming_zone = 'world'
               AND started_at >= $2 AND started_at <= $3",
        )
        .bind(customer_id)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(subscription, started_at, amount_micros)| UsageCdr {
                subscription,
                started_at,
                kind: Kind::Data,
                zone: Zone::World,
                amount_micros,
            })
            .collect())
    }

    async fn raise(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
        import_file_id: i64,
        shock: &Shock,
        alert: &Alert,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("bill-shock:{customer_id}:{}", shock.subscription))
            .execute(&mut *tx)
            .await?;
        // A window overlapping one alerted before is the same episode.
        let day = Duration::days(1);
        let seen: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM bill_shock_alert
                            WHERE customer_id = $1 AND subscription = $2
                              AND window_start < $4 AND window_end > $3)",
        )
        .bind(customer_id)
        .bind(&shock.subscription)
        .bind(shock.window_start - day)
        .bind(shock.window_end + day)
        .fetch_one(&mut *tx)
        .await?;
        if seen {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO bill_shock_alert (customer_id, subscription, window_start, window_end,
                 amount_micros, limit_micros, newest_cdr_at, import_file_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(customer_id)
        .bind(&shock.subscription)
        .bind(shock.window_start)
        .bind(shock.window_end)
        .bind(shock.amount_micros)
        .bind(shock.limit_micros)
        .bind(shock.newest_cdr_at)
        .bind(import_file_id)
        .execute(&mut *tx)
        .await?;
        enqueue(&mut tx, alert).await?;
        // An insight of the cycle its window starts in.
        sqlx::query(
            "INSERT INTO billing_insight (customer_id, cycle, kind, subject, detail)
             VALUES ($1, $2, 'bill_shock', $3, $4)
             ON CONFLICT (customer_id, cycle, kind, subject) DO UPDATE
             SET detail = EXCLUDED.detail, detected_at = now()",
        )
        .bind(customer_id)
        .bind(cycle)
        .bind(&shock.subscription)
        .bind(&alert.body)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// One stored insight, as `temctl insights` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ListedInsight {
    pub customer_id: i64,
    pub customer: String,
    pub cycle: NaiveDate,
    pub kind: String,
    pub subject: String,
    pub detail: Value,
    pub detected_at: DateTime<Utc>,
}

/// The stored insights (BillingInsight's rules, budget levels, anomalies,
/// bill shocks), newest cycle first, filtered by customer (id or code),
/// cycle and kind.
pub async fn list_insights(
    pool: &PgPool,
    customer: Option<&str>,
    cycle: Option<NaiveDate>,
    kind: Option<&str>,
    limit: i64,
) -> Result<Vec<ListedInsight>, StoreError> {
    let id: Option<i64> = customer.and_then(|c| c.parse().ok());
    let rows = sqlx::query(
        "SELECT i.customer_id, coalesce(c.code, c.id::text) AS customer, i.cycle, i.kind, i.subject,
                i.detail, i.detected_at
         FROM billing_insight i JOIN customer c ON c.id = i.customer_id
         WHERE ($1::text IS NULL OR c.code = $1 OR c.id = $2)
           AND ($3::date IS NULL OR i.cycle = $3)
           AND ($4::text IS NULL OR i.kind = $4)
         ORDER BY i.cycle DESC, c.id, i.kind, i.subject
         LIMIT $5",
    )
    .bind(customer)
    .bind(id)
    .bind(cycle)
    .bind(kind)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(ListedInsight {
            customer_id: row.try_get("customer_id")?,
            customer: row.try_get("customer")?,
            cycle: row.try_get("cycle")?,
            kind: row.try_get("kind")?,
            subject: row.try_get("subject")?,
            detail: row.try_get("detail")?,
            detected_at: row.try_get("detected_at")?,
        });
    }
    Ok(out)
}
