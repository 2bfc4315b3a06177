//! `temctl audit`: the carrier bill audit's findings for operators (issue
//! 19): audit a carrier invoice file from disk (as the import function
//! does for `carrier-invoices/` objects; for backfills), list and show
//! findings, dispute and resolve them, and write the dispute report for a
//! carrier. The rules are `tem_shared::audit`; this only parses and prints.

use std::io::{self, Write};
use std::path::PathBuf;

use chrono::NaiveDate;
use clap::{Args, Subcommand};
use tem_shared::adapters::audit::PgAudit;
use tem_shared::audit::dispute::{
    change_status, dispute_csv, euros, to_claim, FindingFilter, FindingStore, Status, StatusChange,
    StoredFinding,
};
use tem_shared::audit::run::{audit_carrier_invoice, AuditReport, DEFAULT_TOLERANCE};
use tem_shared::audit::Tolerance;
use tem_shared::import::normalize::scaled_decimal;
use tem_shared::routing::Provider;

use crate::db;
use crate::error::CliError;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Audit a carrier invoice file (the provider's carrier invoice format)
    /// against the CDRs, buy rates and subscriptions in the database.
    Import(ImportArgs),
    /// List the findings of current carrier invoices.
    List(ListArgs),
    /// One finding with its evidence.
    Show(ShowArgs),
    /// Mark a finding as claimed with the carrier.
    Dispute(DisputeArgs),
    /// Close a finding: credited by the carrier (with the amount) or
    /// written off.
    Resolve(ResolveArgs),
    /// The dispute report for a carrier (CSV on stdout): the open and
    /// disputed findings with an overcharge.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The carrier whose invoice format the file is in.
    #[arg(long, value_parser = parse_provider)]
    pub provider: Provider,
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The file's name in the evidence (default: carrier-invoices/PROVIDER/FILE NAME).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// A difference up to this many micro-euros is not a finding (default 10000, one cent).
    #[arg(long, value_name = "MICROS")]
    pub tolerance_micros: Option<i64>,
    /// ...nor one up to this share of the expected amount, in basis points (100 = 1%).
    #[arg(long, value_name = "BP")]
    pub tolerance_basis_points: Option<u32>,
    /// Print the audit as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_parser = parse_provider)]
    pub provider: Option<Provider>,
    /// The carrier period starting on this day.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub period: Option<NaiveDate>,
    #[arg(long, value_parser = parse_status)]
    pub status: Option<Status>,
    /// Also the findings a corrected carrier invoice replaced.
    #[arg(long)]
    pub superseded: bool,
    /// One JSON object per finding, one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub id: i64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DisputeArgs {
    pub id: i64,
    /// What was claimed, and where (a ticket number).
    #[arg(long)]
    pub note: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    pub id: i64,
    /// The carrier credited this amount, in euros (e.g. 2.50).
    #[arg(
        long,
        value_name = "EUROS",
        required_unless_present = "written_off",
        conflicts_with = "written_off"
    )]
    pub credited: Option<String>,
    /// Accepted as billed.
    #[arg(long)]
    pub written_off: bool,
    #[arg(long)]
    pub note: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[arg(value_parser = parse_provider)]
    pub provider: Provider,
    /// Only the carrier period starting on this day.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub period: Option<NaiveDate>,
}

fn parse_provider(name: &str) -> Result<Provider, String> {
    name.parse::<Provider>().map_err(|e| e.to_string())
}

fn parse_status(name: &str) -> Result<Status, String> {
    name.parse()
}

pub async fn run(args: AuditArgs) -> Result<(), CliError> {
    let url = db::url_from_env()?;
    let db = db::open(&url, 2).await?;
    db.check_schema().await?;
    let store = PgAudit::new(db.pool.clone());
    let mut out = io::stdout().lock();
    match args.command {
        AuditCommand::Import(args) => {
            let file = std::fs::File::open(&args.file)
                .map_err(|e| CliError::FileNotFound(format!("{} ({e})", args.file.display())))?;
            let key = args.key.unwrap_or_else(|| {
                format!(
                    "carrier-invoices/{}/{}",
                    args.provider,
                    args.file
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                )
            });
            let tolerance = Tolerance {
                micros: args.tolerance_micros.unwrap_or(DEFAULT_TOLERANCE.micros),
                basis_points: args
                    .tolerance_basis_points
                    .unwrap_or(DEFAULT_TOLERANCE.basis_points),
            };
            let report = audit_carrier_invoice(
                &store,
                args.provider.as_str(),
                &key,
                io::BufReader::new(file),
                tolerance,
            )
            .await?;
            if args.json {
                serde_json::to_writer(&mut out, &report).map_err(io::Error::from)?;
                writeln!(out)?;
            } else {
                out.write_all(summary(&report).as_bytes())?;
            }
        }
        AuditCommand::List(args) => {
            let filter = FindingFilter {
                provider: args.provider.map(|p| p.as_str().to_string()),
                period: args.period,
                status: args.status,
                include_superseded: args.superseded,
            };
            let findings = store.findings(&filter).await.map_err(audit_store)?;
            if args.json {
                for f in &findings {
                    serde_json::to_writer(&mut out, f).map_err(io::Error::from)?;
                    writeln!(out)?;
                }
            } else {
                out.write_all(table(&findings).as_bytes())?;
            }
        }
        AuditCommand::Show(args) => {
            let finding = store
                .finding(args.id)
                .await
                .map_err(audit_store)?
                .ok_or(tem_shared::audit::dispute::DisputeError::Unknown(args.id))?;
            if args.json {
                serde_json::to_writer(&mut out, &finding).map_err(io::Error::from)?;
                writeln!(out)?;
            } else {
                out.write_all(detail(&finding).as_bytes())?;
            }
        }
        AuditCommand::Dispute(args) => {
            let finding =
                change_status(&store, args.id, &StatusChange::Dispute { note: args.note }).await?;
            writeln!(
                out,
                "finding {} disputed: claim {} from {}",
                finding.id,
                euros(finding.overcharge_micros()),
                finding.provider
            )?;
        }
        AuditCommand::Resolve(args) => {
            let change = match args.credited {
                Some(amount) => StatusChange::Credited {
                    recovered_micros: scaled_decimal(&amount, '.', 1_000_000)
                        .map_err(CliError::BadAmount)?,
                    note: args.note,
                },
                None => StatusChange::WrittenOff { note: args.note },
            };
            let finding = change_status(&store, args.id, &change).await?;
            writeln!(
                out,
                "finding {} {}: recovered {}",
                finding.id,
                finding.status,
                euros(finding.recovered_micros)
            )?;
        }
        AuditCommand::Report(args) => {
            let filter = FindingFilter {
                provider: Some(args.provider.as_str().to_string()),
                period: args.period,
                status: None,
                include_superseded: false,
            };
            let findings = store.findings(&filter).await.map_err(audit_store)?;
            out.write_all(dispute_csv(&to_claim(&findings)).as_bytes())?;
        }
    }
    Ok(out.flush()?)
}

fn audit_store(e: tem_shared::ports::StoreError) -> CliError {
    CliError::Dispute(e.into())
}

fn summary(report: &AuditReport) -> String {
    let mut s = format!(
        "carrier invoice {} (#{}) of {} account {} for {} to {}: {} lines read, {} rejected\n",
        report.invoice_number,
        report.invoice_id,
        report.provider,
        report.account,
        report.period_start,
        report.period_end.pred_opt().unwrap_or(report.period_end),
        report.lines,
        report.rejected.len()
    );
    if let Some(by) = report.superseded_by {
        s.push_str(&format!(
            "already replaced by corrected carrier invoice #{by}: not audited again\n"
        ));
        return s;
    }
    for r in &report.rejected {
        s.push_str(&format!("  rejected line {}: {}\n", r.line, r.reason));
    }
    let recorded = &report.recorded;
    if recorded.reimported {
        s.push_str("imported before: findings updated in place\n");
    }
    for id in &recorded.superseded {
        s.push_str(&format!(
            "supersedes carrier invoice #{id} and its findings\n"
        ));
    }
    s.push_str(&format!(
        "{} findings ({} new, {} updated, {} no longer found); overcharge to claim {}\n",
        report.findings.len(),
        recorded.findings_created,
        recorded.findings_updated,
        recorded.findings_removed,
        euros(report.overcharge_micros())
    ));
    for f in &report.findings {
        s.push_str(&format!(
            "  {:<26} {:<14} {:<8} billed {:>14} expected {:>14}\n",
            f.kind.as_str(),
            f.subscription,
            f.class.map(|c| c.as_str()).unwrap_or("-"),
            euros(f.billed_micros),
            euros(f.expected_micros)
        ));
    }
    s
}

fn table(findings: &[StoredFinding]) -> String {
    let mut s = format!(
        "{:>6} {:<9} {:<10} {:<10} {:<14} {:<26} {:<8} {:>14} {:>14} {:<11}\n",
        "id",
        "provider",
        "account",
        "period",
        "subscription",
        "kind",
        "class",
        "billed",
        "expected",
        "status"
    );
    for f in findings {
        s.push_str(&format!(
            "{:>6} {:<9} {:<10} {:<10} {:<14} {:<26} {:<8} {:>14} {:>14} {:<11}{}\n",
            f.id,
            f.provider,
            f.account,
            f.period_start,
            f.subscription,
            f.kind.as_str(),
            f.class.map(|c| c.as_str()).unwrap_or("-"),
            euros(f.billed_micros),
            euros(f.expected_micros),
            f.status.as_str(),
            f.superseded_by
                .map(|by| format!(" superseded by #{by}"))
                .unwrap_or_default()
        ));
    }
    s.push_str(&format!(
        "{} findings; overcharge {}\n",
        findings.len(),
        euros(findings.iter().map(StoredFinding::overcharge_micros).sum())
    ));
    s
}

fn detail(f: &StoredFinding) -> String {
    let mut s = format!(
        "finding {}: {} of {}{}\n",
        f.id,
        f.kind,
        if f.subscription.is_empty() {
            "the file as a whole".to_string()
        } else {
            f.subscription.clone()
        },
        f.class.map(|c| format!(" ({c})")).unwrap_or_default()
    );
    s.push_str(&format!(
        "carrier invoice #{} {} of {} account {}, {} to {}\n",
        f.carrier_invoice_id,
        f.invoice_number,
        f.provider,
        f.account,
        f.period_start,
        f.period_end.pred_opt().unwrap_or(f.period_end)
    ));
    s.push_str(&format!(
        "billed {}, expected {}, overcharge {}\n",
        euros(f.billed_micros),
        euros(f.expected_micros),
        euros(f.overcharge_micros())
    ));
    s.push_str(&format!(
        "status {}, recovered {}{}\n",
        f.status,
        euros(f.recovered_micros),
        f.note
            .as_ref()
            .map(|n| format!(", note: {n}"))
            .unwrap_or_default()
    ));
    if let Some(by) = f.superseded_by {
        s.push_str(&format!("superseded by corrected carrier invoice #{by}\n"));
    }
    let lines = f
        .lines
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    s.push_str(&format!(
        "evidence: {} line(s) {}\n",
        f.file_key,
        if lines.is_empty() { "-".into() } else { lines }
    ));
    if let Some(count) = f.cdr_count {
        s.push_str(&format!("CDRs held: {count}\n"));
    }
    if let Some(query) = f.cdr_query() {
        s.push_str(&format!("CDRs: {query}\n"));
    }
    s
}
