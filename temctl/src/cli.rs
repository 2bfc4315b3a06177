//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tem_shared::routing::Provider;

/// Operators' tools for the telecom expense platform. Every command works on
/// the PostgreSQL database named by the DATABASE_URL environment variable.
///
/// Exit codes: 0 success, 1 the command failed, 2 usage error (bad
/// arguments, DATABASE_URL or the stack not set, a removal not confirmed).
#[derive(Debug, Parser)]
#[command(name = "temctl", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import a carrier's CDR export (ZIP of CSV, .csv.gz or .csv), exactly
    /// as the cdr-import Lambda does; for backfills of historic exports.
    Import(ImportArgs),
    /// Apply the project's database migrations (creates the tables on an
    /// empty database; a no-op when up to date).
    Migrate,
    /// Create or update customers, subscriptions, rate plans and sync
    /// profiles from a YAML file; objects not in the file are left alone.
    Apply(crate::apply::ApplyArgs),
    /// Show one customer cycle's totals and their lines.
    Totals(crate::totals::TotalsArgs),
    /// Cost centres and chargeback: `costs show CUSTOMER CYCLE` allocates
    /// the cycle's invoice over the customer's cost tree.
    Costs(crate::costs::CostsArgs),
    /// List insights: BillingInsight's findings and the budget, anomaly
    /// and bill-shock alerts, newest cycle first.
    Insights(crate::insights::InsightsArgs),
    /// The carrier bill audit: audit a carrier invoice file, list, show,
    /// dispute and resolve findings, and the dispute report per carrier.
    Audit(crate::audit::AuditArgs),
    /// Show how one CDR was priced (rate, billed quantity, bundles,
    /// arithmetic) and whether its cycle's totals are current.
    Explain(crate::explain::ExplainArgs),
    /// Failed messages of a deployed stack: list, stats, show, retry,
    /// remove (rows in DATABASE_URL; queues through the AWS environment).
    Failed(crate::failed::FailedArgs),
    /// Sync tasks of a deployed stack (--stack/TEM_STACK): one task's
    /// timeline, or the tasks of the last day.
    Task(crate::task::TaskArgs),
    /// Evaluate the runbook's monitoring points (sync-manager runs, failure
    /// rates, routing failures, failed tasks, queue depths, totals duration)
    /// and the daily extras. Exit code 0 OK, 1 WARNING, 2 CRITICAL,
    /// 3 UNKNOWN. Needs DATABASE_URL, AWS access and --stack NAME (or
    /// TEM_STACK).
    Status(crate::status::StatusArgs),
    /// Invoices: list, show, download a document (or a presigned URL),
    /// write the usage specification, preview a draft.
    Invoice(crate::invoice::InvoiceArgs),
    /// The daily maintenance's parts, run by hand: `maintenance partitions`
    /// creates the monthly partitions ahead; `maintenance run` runs every
    /// part (partitions, archive past retention, housekeeping).
    Maintenance(crate::maintenance::MaintenanceArgs),
    /// The archive of months past their retention: `archive list`, and
    /// `archive restore CUSTOMER YYYY-MM` for a late dispute.
    Archive(crate::maintenance::ArchiveArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The carrier whose format the file is in (e.g. routit, t_mobile).
    #[arg(long, value_parser = parse_provider)]
    pub provider: Provider,
    /// The export to import.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The sync profile the file belongs to, recorded on the import.
    #[arg(long, value_name = "N")]
    pub profile_id: Option<i64>,
    /// Print the import summary as one JSON object on stdout (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Where the rejected-rows CSV is written.
    #[arg(long, value_name = "DIR", default_value = "./rejected-rows")]
    pub rejects_dir: PathBuf,
}

fn parse_provider(name: &str) -> Result<Provider, String> {
    name.parse::<Provider>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn failed_retry_takes_ids_or_all_with_filters() {
        let cli = Cli::try_parse_from([
            "temctl",
            "failed",
            "retry",
            "--all",
            "--provider",
            "routit",
            "--since",
            "2h",
            "--dry-run",
        ])
        .unwrap();
        let Command::Failed(args) = cli.command else {
            panic!("not failed")
        };
        let crate::failed::FailedCommand::Retry(retry) = args.command else {
            panic!("not retry")
        };
        let act = &retry.target;
        assert!(act.all && retry.dry_run && act.ids.is_empty());
        assert_eq!(act.filters.provider.as_deref(), Some("routit"));
    }

    #[test]
    fn dry_run_belongs_to_retry_and_yes_to_remove() {
        for wrong in [
            ["temctl", "failed", "retry", "--all", "--yes"],
            ["temctl", "failed", "remove", "--all", "--dry-run"],
        ] {
            let err = Cli::try_parse_from(wrong).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{wrong:?}");
        }
    }

    #[test]
    fn an_invoice_download_takes_expires_only_with_presign_and_names_known_documents() {
        let cli = Cli::try_parse_from([
            "temctl",
            "invoice",
            "download",
            "2025-000001",
            "--what",
            "specification",
            "--presign",
            "--expires",
            "60",
        ])
        .unwrap();
        let Command::Invoice(args) = cli.command else {
            panic!("not invoice")
        };
        let crate::invoice::InvoiceCommand::Download(download) = args.command else {
            panic!("not download")
        };
        assert!(download.presign);
        assert_eq!(download.expires, Some(60));
        for wrong in [
            vec![
                "temctl",
                "invoice",
                "download",
                "7",
                "--what",
                "pdf",
                "--expires",
                "60",
            ],
            vec![
                "temctl",
                "invoice",
                "download",
                "7",
                "--what",
                "pdf",
                "--presign",
                "--out",
                "f",
            ],
            vec!["temctl", "invoice", "download", "7", "--what", "invoice"],
            vec!["temctl", "invoice", "list", "--status", "sent"],
            vec!["temctl", "invoice", "show", "id:x"],
        ] {
            let err = Cli::try_parse_from(&wrong).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{wrong:?}");
        }
    }

    #[test]
    fn a_task_status_that_does_not_exist_is_a_usage_error() {
        let err = Cli::try_parse_from(["temctl", "task", "list", "--status", "lost"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn an_unknown_provider_is_a_usage_error_listing_the_known_ones() {
        let err =
            Cli::try_parse_from(["temctl", "import", "--provider", "kpn", "x.csv"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(
            text.contains("routit") && text.contains("t_mobile"),
            "{text}"
        );
    }
}
