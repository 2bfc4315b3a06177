//! `temctl totals --customer ID --cycle YYYY-MM-DD`: one cycle's totals and
//! their lines per subscription, kind and zone, as stored by CalculateTotals.

use std::io::{self, Write};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use clap::Args;
use serde::Serialize;
use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tem_shared::billing::euros;
use tem_shared::cdr::cycle_bounds;
use tem_shared::cdr::cycle_of;

use crate::db;
use crate::error::CliError;

/// Arguments of `temctl totals`.
#[derive(Debug, Args)]
pub struct TotalsArgs {
    /// The customer: its numeric id, or its code (as in `temctl apply`).
    #[arg(long, value_name = "ID")]
    pub customer: String,
    /// The cycle, named by its start date.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub cycle: NaiveDate,
    /// Print the totals and lines as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ShowTotalsError {
    #[error("no customer has the id or code {0:?}; name a customer by its numeric id or its code")]
    UnknownCustomer(String),
    #[error("{given:?} is the id of customer #{by_id} and the code of customer #{by_code}; give the code of the one you mean, or the id #{by_code}")]
    Ambiguous {
        given: String,
        by_id: i64,
        by_code: i64,
    },
    #[error("{cycle} is not a cycle of customer {customer}: its cycles start on day {day}; {cycle} lies in the cycle {containing}")]
    NotACycle {
        customer: String,
        cycle: NaiveDate,
        day: u32,
        containing: NaiveDate,
    },
    #[error("customer {customer} has no totals for the cycle {cycle}; calculate them by invoking the totals function with {console}")]
    NoTotals {
        customer: String,
        cycle: NaiveDate,
        console: String,
    },
    #[error("database error while {doing}: {source}")]
    Database {
        doing: &'static str,
        source: sqlx::Error,
    },
    #[error("cannot write the totals to stdout: {0}")]
    Output(#[from] io::Error),
}

fn db_error(doing: &'static str) -> impl FnOnce(sqlx::Error) -> ShowTotalsError {
    move |source| ShowTotalsError::Database { doing, source }
}

struct Customer {
    id: i64,
    code: Option<String>,
    name: String,
    day: u32,
    zone: Tz,
}

impl Customer {
    fn label(&self) -> String {
        match &self.code {
            Some(code) => format!("{code} (#{})", self.id),
            None => format!("#{}", self.id),
        }
    }
}

#[derive(Debug, Serialize)]
struct Figures {
    cdr_count: i64,
    voice_seconds: i64,
    data_bytes: i64,
    messages: i64,
    provider_cost_micros: i64,
    provider_cost_eur: String,
    rated_cost_micros: i64,
    rated_cost_eur: String,
    unrated_count: i64,
}

impl Figures {
    fn read(row: &PgRow) -> Result<Self, sqlx::Error> {
        let provider: i64 = row.try_get("provider_cost_micros")?;
        let rated: i64 = row.try_get("rated_cost_micros")?;
        Ok(Self {
            cdr_count: row.try_get("cdr_count")?,
            voice_seconds: row.try_get("voice_seconds")?,
            data_bytes: row.try_get("data_bytes")?,
            messages: row.try_get("messages")?,
            provider_cost_micros: provider,
            provider_cost_eur: euros(provider),
            rated_cost_micros: rated,
            rated_cost_eur: euros(rated),
            unrated_count: row.try_get("unrated_count")?,
        })
    }
}

#[derive(Debug, Serialize)]
struct Line {
    subscription: String,
    kind: String,
    roaming_zone: String,
    #[serde(flatten)]
    figures: Figures,
}

pub async fn run(args: TotalsArgs) -> Result<(), CliError> {
    let url = db::url_from_env()?;
    let db = db::open(&url, 1).await?;
    db.check_schema().await?;
    show(&db.pool, &args).await.map_err(CliError::from)
}

async fn find_customer(pool: &PgPool, given: &str) -> Result<Customer, ShowTotalsError> {
    let rows = sqlx::query(
        "SELECT id, code, name, billing_cycle_start_day, time_zone FROM customer
         WHERE code = $1 OR ($2::bigint IS NOT NULL AND id = $2) ORDER BY id",
    )
    .bind(given)
    .bind(given.parse::<i64>().ok())
    .fetch_all(pool)
    .await
    .map_err(db_error("finding the customer"))?;
    let read = |row: &PgRow| -> Result<Customer, sqlx::Error> {
        let day: i16 = row.try_get("billing_cycle_start_day")?;
        let zone: String = row.try_get("time_zone")?;
        Ok(Customer {
            id: row.try_get("id")?,
            code: row.try_get("code")?,
            name: row.try_get("name")?,
            day: u32::try_from(day).unwrap_or(1),
            // The fallback CalculateTotals uses for a zone it cannot read.
            zone: zone.parse().unwrap_or(chrono_tz::Europe::Amsterdam),
        })
    };
    let mut customers: Vec<Customer> = rows
        .iter()
        .map(read)
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_error("reading the customer"))?;
    match customers.len() {
        0 => Err(ShowTotalsError::UnknownCustomer(given.to_string())),
        1 => Ok(customers.remove(0)),
        _ => {
            // One matched by code, the other by id.
            let (by_code, by_id) = if customers[0].code.as_deref() == Some(given) {
                (customers[0].id, customers[1].id)
            } else {
                (customers[1].id, customers[0].id)
            };
            Err(ShowTotalsError::Ambiguous {
                given: given.to_string(),
                by_id,
                by_code,
            })
        }
    }
}

async fn show(pool: &PgPool, args: &TotalsArgs) -> Result<(), ShowTotalsError> {
    let customer = find_customer(pool, &args.customer).await?;
    let cycle = args.cycle;
    let totals = sqlx::query(
        "SELECT method, rate_plan_id, calculated_at, cdr_count, voice_seconds, data_bytes, messages,
                provider_cost_micros, rated_cost_micros, unrated_count
         FROM totals WHERE customer_id = $1 AND cycle = $2",
    )
    .bind(customer.id)
    .bind(cycle)
    .fetch_optional(pool)
    .await
    .map_err(db_error("reading the totals"))?;
    let Some(totals) = totals else {
        if cycle.day() != customer.day {
            let (local_midnight, _) = cycle_bounds(cycle, customer.zone);
            return Err(ShowTotalsError::NotACycle {
                customer: customer.label(),
                cycle,
                day: customer.day,
                containing: cycle_of(local_midnight, customer.day, customer.zone),
            });
        }
        return Err(ShowTotalsError::NoTotals {
            customer: customer.label(),
            cycle,
            console: json!({ "customer_id": customer.id, "cycle": cycle }).to_string(),
        });
    };
    let read = "reading the totals";
    let method: String = totals.try_get("method").map_err(db_error(read))?;
    let plan: Option<String> = totals.try_get("rate_plan_id").map_err(db_error(read))?;
    let calculated_at: DateTime<Utc> = totals.try_get("calculated_at").map_err(db_error(read))?;
    let figures = Figures::read(&totals).map_err(db_error(read))?;
    let rows = sqlx::query(
        "SELECT subscription, kind, roaming_zone, cdr_count, voice_seconds, data_bytes, messages,
                provider_cost_micros, rated_cost_micros, unrated_count
         FROM totals_line WHERE customer_id = $1 AND cycle = $2
         ORDER BY subscription, kind, roaming_zone",
    )
    .bind(customer.id)
    .bind(cycle)
    .fetch_all(pool)
    .await
    .map_err(db_error("reading the lines"))?;
    let lines = rows
        .iter()
        .map(|row| {
            Ok(Line {
                subscription: row.try_get("subscription")?,
                kind: row.try_get("kind")?,
                roaming_zone: row.try_get("roaming_zone")?,
                figures: Figures::read(row)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(db_error("reading the lines"))?;
    let (start, end) = cycle_bounds(cycle, customer.zone);

    let mut out = io::stdout().lock();
    if args.json {
        let value = json!({
            "customer_id": customer.id,
            "customer_code": customer.code,
            "customer_name": customer.name,
            "cycle": cycle,
            "cycle_start": start,
            "cycle_end": end,
            "time_zone": customer.zone.name(),
            "method": method,
            "rate_plan_id": plan,
            "calculated_at": calculated_at,
            "totals": figures,
            "lines": lines,
        });
        serde_json::to_writer(&mut out, &value).map_err(io::Error::from)?;
        writeln!(out)?;
        return Ok(out.flush()?);
    }
    writeln!(
        out,
        "totals of customer {} {}, cycle {cycle} ({} to {} UTC; from 00:00 {} on day {})",
        customer.label(),
        customer.name,
        start.format("%Y-%m-%d %H:%M"),
        end.format("%Y-%m-%d %H:%M"),
        customer.zone.name(),
        customer.day
    )?;
    let field =
        |out: &mut dyn Write, label: &str, value: String| writeln!(out, "  {label:<15} {value}");
    let method = match &plan {
        Some(plan) => format!("{method} (plan {plan})"),
        None => method,
    };
    field(&mut out, "method", method)?;
    field(&mut out, "calculated at", calculated_at.to_rfc3339())?;
    field(&mut out, "CDRs", figures.cdr_count.to_string())?;
    field(&mut out, "voice seconds", figures.voice_seconds.to_string())?;
    field(&mut out, "data bytes", figures.data_bytes.to_string())?;
    field(&mut out, "messages", figures.messages.to_string())?;
    field(
        &mut out,
        "provider cost",
        format!("EUR {}", figures.provider_cost_eur),
    )?;
    field(
        &mut out,
        "rated cost",
        format!("EUR {}", figures.rated_cost_eur),
    )?;
    field(&mut out, "unrated", figures.unrated_count.to_string())?;
    writeln!(out, "lines ({})", lines.len())?;
    let width = lines
        .iter()
        .map(|l| l.subscription.chars().count())
        .max()
        .unwrap_or(0)
        .max("subscription".len());
    writeln!(
        out,
        "  {:<width$}  {:<7} {:<5} {:>6} {:>9} {:>13} {:>8} {:>16} {:>16} {:>7}",
        "subscription",
        "kind",
        "zone",
        "CDRs",
        "voice s",
        "data bytes",
        "messages",
        "provider EUR",
        "rated EUR",
        "unrated"
    )?;
    for l in &lines {
        let f = &l.figures;
        writeln!(
            out,
            "  {:<width$}  {:<7} {:<5} {:>6} {:>9} {:>13} {:>8} {:>16} {:>16} {:>7}",
            l.subscription,
            l.kind,
            l.roaming_zone,
            f.cdr_count,
            f.voice_seconds,
            f.data_bytes,
            f.messages,
            f.provider_cost_eur,
            f.rated_cost_eur,
            f.unrated_count
        )?;
    }
    Ok(out.flush()?)
}
