//! `temctl insights`: what BillingInsight found in customers' cycles
//! (cost changes, idle lines, roaming share, unrated and unassigned CDRs)
//! and the alerts of issue 19 recorded beside them (`budget_alert`,
//! `budget_resolved`, `anomaly`, `bill_shock`), newest cycle first.

use std::io::{self, Write};

use chrono::NaiveDate;
use clap::Args;
use tem_shared::adapters::budgets::{list_insights, ListedInsight};

use crate::db;
use crate::error::CliError;

/// The kinds an insight can have, for `--kind`.
const KINDS: [&str; 9] = [
    "cost_change",
    "idle_subscription",
    "roaming_share",
    "unrated_cdrs",
    "unassigned_cdrs",
    "budget_alert",
    "budget_resolved",
    "anomaly",
    "bill_shock",
];

#[derive(Debug, Args)]
pub struct InsightsArgs {
    /// Only this customer: its numeric id or its code.
    #[arg(long, value_name = "ID|CODE")]
    pub customer: Option<String>,
    /// Only this cycle, named by its start date.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub cycle: Option<NaiveDate>,
    /// Only this kind (cost_change, idle_subscription, roaming_share,
    /// unrated_cdrs, unassigned_cdrs, budget_alert, budget_resolved,
    /// anomaly, bill_shock).
    #[arg(long, value_parser = parse_kind)]
    pub kind: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

fn parse_kind(s: &str) -> Result<String, String> {
    KINDS.contains(&s).then(|| s.to_string()).ok_or_else(|| {
        format!(
            "unknown insight kind {s:?}; use one of {}",
            KINDS.join(", ")
        )
    })
}

pub async fn run(args: InsightsArgs) -> Result<(), CliError> {
    let url = db::url_from_env()?;
    let db = db::open(&url, 1).await?;
    db.check_schema().await?;
    let found = list_insights(
        &db.pool,
        args.customer.as_deref(),
        args.cycle,
        args.kind.as_deref(),
        args.limit,
    )
    .await
    .map_err(|e| CliError::Insights(e.source.to_string()))?;
    let mut out = io::stdout().lock();
    if args.json {
        for insight in &found {
            serde_json::to_writer(&mut out, insight).map_err(io::Error::from)?;
            writeln!(out)?;
        }
    } else if found.is_empty() {
        writeln!(out, "no insights")?;
    } else {
        for i in &found {
            writeln!(out, "{}", line(i))?;
        }
    }
    Ok(out.flush()?)
}

fn line(i: &ListedInsight) -> String {
    let subject = if i.subject.is_empty() {
        "-"
    } else {
        &i.subject
    };
    format!(
        "{}  {:<12} {:<17} {:<32} {}",
        i.cycle, i.customer, i.kind, subject, i.detail
    )
}
