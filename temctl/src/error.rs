//! Every way a command can fail, with its exit code.

use tem_shared::import::importer::ImportError;
use tem_shared::import::source::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("DATABASE_URL is not set; set it to the URL of the PostgreSQL database to work on, e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/tem")]
    MissingDatabaseUrl,
    #[error("DATABASE_URL is not a valid PostgreSQL URL ({0})")]
    BadDatabaseUrl(String),
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect { target: String, source: sqlx::Error },
    #[error("the database {target} has no call_detail_record table; run `temctl migrate` first")]
    NotMigrated { target: String },
    #[error("database error while {doing}: {source}")]
    Database {
        doing: &'static str,
        source: sqlx::Error,
    },
    #[error("migrating {target} failed: {source}")]
    Migrate {
        target: String,
        source: sqlx::migrate::MigrateError,
    },
    #[error("file {0} not found")]
    FileNotFound(String),
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: SourceError },
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Apply(#[from] crate::apply::ApplyError),
    #[error(transparent)]
    Totals(#[from] crate::totals::ShowTotalsError),
    #[error(transparent)]
    Costs(#[from] tem_shared::costs::cycle::CostsError),
    #[error("reading insights failed: {0}")]
    Insights(String),
    #[error(transparent)]
    Maintenance(#[from] tem_shared::maintenance::MaintenanceError),
    #[error(transparent)]
    Audit(#[from] tem_shared::audit::run::AuditError),
    #[error(transparent)]
    Dispute(#[from] tem_shared::audit::dispute::DisputeError),
    #[error("the amount {0}; write euros with a point, e.g. 2.50")]
    BadAmount(String),
    #[error(transparent)]
    Explain(#[from] tem_shared::billing::explain::ExplainError),
    #[error(transparent)]
    Stack(#[from] crate::stack::StackError),
    #[error(transparent)]
    Port(#[from] tem_shared::ports::PortError),
    #[error(transparent)]
    Selection(tem_shared::ops::failed::SelectionError),
    #[error("no failed message {0}; `temctl failed list --status any` lists them")]
    NoSuchFailure(String),
    #[error("stack {stack} has no task {task_id} (tasks expire after TASK_TTL_DAYS); `temctl task list --since 7d` lists them")]
    NoSuchTask { task_id: String, stack: String },
    #[error("not confirmed: removing {0} failed message(s) needs confirmation; run it again with --yes, or on a terminal and type yes")]
    Unconfirmed(usize),
    #[error("{0}")]
    PartlyDone(String),
    #[error(transparent)]
    Invoice(#[from] tem_shared::billing::invoice_view::InvoiceViewError),
    #[error(transparent)]
    Specification(tem_shared::billing::specification::SpecificationError),
    #[error("cannot write {path}: {source}; check that its folder exists and is writable")]
    WriteFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the summary to stdout: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// The reader of stdout went away (`temctl totals | head`): not a
    /// failure of the command, so it ends quietly as other tools do.
    pub fn is_closed_output(&self) -> bool {
        let io = match self {
            CliError::Output(e) | CliError::Totals(crate::totals::ShowTotalsError::Output(e)) => e,
            _ => return false,
        };
        io.kind() == std::io::ErrorKind::BrokenPipe
    }

    /// 2 when the command was called wrongly (as for clap's usage errors),
    /// 1 when it ran and failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::MissingDatabaseUrl | CliError::BadDatabaseUrl(_) | CliError::BadAmount(_) => {
                2
            }
            CliError::Apply(e) => e.exit_code(),
            CliError::Stack(e) => e.exit_code(),
            CliError::Selection(_) | CliError::Unconfirmed(_) => 2,
            CliError::Explain(tem_shared::billing::explain::ExplainError::BadReference(_)) => 2,
            CliError::Invoice(e) if e.is_usage() => 2,
            _ => 1,
        }
    }
}
