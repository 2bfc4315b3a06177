//! `temctl costs show CUSTOMER CYCLE`: a cycle's chargeback (issue 19).
//! The customer's cost tree with each node's amount rolled up from below,
//! the charges of subscriptions without an assignment (per subscription:
//! the documented place for them, `UNALLOCATED`), and the invoice's net
//! total with the line that says they agree. The allocation itself is
//! `tem_shared::costs::cycle`; this only prints it.

use std::collections::BTreeMap;
use std::io::{self, Write};

use chrono::NaiveDate;
use clap::{Args, Subcommand};
use serde_json::json;
use tem_shared::adapters::costs::cycle_allocation;
use tem_shared::catalog::cost_centres::kind_name;
use tem_shared::costs::cycle::CycleAllocation;
use tem_shared::costs::gl::{gl_csv, gl_rows};
use tem_shared::costs::report::{ordered, render};
use tem_shared::costs::ChargeClass;

use crate::db;
use crate::error::CliError;

#[derive(Debug, Args)]
pub struct CostsArgs {
    #[command(subcommand)]
    pub command: CostsCommand,
}

#[derive(Debug, Subcommand)]
pub enum CostsCommand {
    /// A cycle's invoice allocated over the customer's cost tree.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The customer: its numeric id, or its code (as in `temctl apply`).
    #[arg(value_name = "CUSTOMER")]
    pub customer: String,
    /// The cycle, named by its start date.
    #[arg(value_name = "YYYY-MM-DD")]
    pub cycle: NaiveDate,
    /// Show the tree down to this depth only (1: the roots); amounts are
    /// still rolled up from every level below.
    #[arg(long, value_name = "N")]
    pub depth: Option<usize>,
    /// Show each node's amount per charge class too.
    #[arg(long)]
    pub by_class: bool,
    /// Print the chargeback as one JSON object on stdout.
    #[arg(long, conflicts_with = "gl_csv")]
    pub json: bool,
    /// Print the general-ledger CSV (cost centre, GL code, charge class,
    /// VAT category, amount in euros with 6 decimals) instead.
    #[arg(long)]
    pub gl_csv: bool,
}

pub async fn run(args: CostsArgs) -> Result<(), CliError> {
    let CostsCommand::Show(args) = args.command;
    let url = db::url_from_env()?;
    let db = db::open(&url, 1).await?;
    db.check_schema().await?;
    let cycle = cycle_allocation(&db.pool, &args.customer, args.cycle).await?;
    let mut out = io::stdout().lock();
    if args.gl_csv {
        out.write_all(gl_csv(&gl_rows(&cycle)).as_bytes())?;
    } else if args.json {
        serde_json::to_writer(&mut out, &as_json(&cycle, args.depth)).map_err(io::Error::from)?;
        writeln!(out)?;
    } else {
        out.write_all(render(&cycle, args.depth, args.by_class).as_bytes())?;
    }
    Ok(out.flush()?)
}

fn as_json(cycle: &CycleAllocation, depth: Option<usize>) -> serde_json::Value {
    let up = cycle.rolled_up();
    let by_class = cycle.rolled_up_by_class();
    let nodes: Vec<serde_json::Value> = ordered(cycle, depth)
        .into_iter()
        .map(|(level, node)| {
            let classes: BTreeMap<&str, i64> = ChargeClass::ALL
                .iter()
                .filter_map(|c| {
                    by_class
                        .get(&(node.code.clone(), *c))
                        .filter(|a| **a != 0)
                        .map(|a| (c.as_str(), *a))
                })
                .collect();
            json!({
                "code": node.code,
                "name": node.name,
                "kind": kind_name(node.kind),
                "parent": node.parent,
                "depth": level,
                "amount_micros": up.get(&node.code).copied().unwrap_or(0),
                "by_class_micros": classes,
            })
        })
        .collect();
    let unallocated: Vec<serde_json::Value> = cycle
        .unallocated_by_subscription()
        .into_iter()
        .map(
            |(subscription, amount)| json!({"subscription": subscription, "amount_micros": amount}),
        )
        .collect();
    let allocated = cycle.allocation.allocated_micros();
    let unallocated_total = cycle.allocation.unallocated_micros();
    json!({
        "customer_id": cycle.customer.id,
        "customer_code": cycle.customer.code,
        "customer_name": cycle.customer.name,
        "cycle": cycle.cycle,
        "invoice_id": cycle.invoice_id,
        "invoice_status": cycle.invoice_status,
        "nodes": nodes,
        "unallocated": unallocated,
        "allocated_micros": allocated,
        "unallocated_micros": unallocated_total,
        "net_total_micros": cycle.net_total_micros,
        // Checked before printing (CostsError::Inconsistent otherwise).
        "agrees": allocated + unallocated_total == cycle.net_total_micros,
    })
}
