//! `temctl invoice list|show|download|specify|preview`: invoices as
//! operators look at them (`billing::invoice_view`), their documents from
//! S3 (downloaded, or as a presigned URL), the usage specification written
//! on demand, and a draft's preview. Invoices are read from DATABASE_URL;
//! S3 through the usual AWS environment.

use std::io::{self, Write};
use std::path::PathBuf;

use chrono::{NaiveDate, Utc};
use clap::{Args, Subcommand};
use tem_shared::adapters::billing::invoice::PgInvoices;
use tem_shared::adapters::billing::invoice_view::PgInvoiceView;
use tem_shared::adapters::billing::specification::{record, write_cycle};
use tem_shared::adapters::s3::{S3Documents, S3MultipartUpload};
use tem_shared::adapters::{aws_config, s3_client};
use tem_shared::billing::euros;
use tem_shared::billing::invoice_view::{
    self, DocumentAccess, DocumentKind, InvoiceFilter, InvoiceRef, InvoiceStatus, InvoiceViewError,
};
use tem_shared::billing::specification::{self, object_key, SpecificationError};

use crate::db;
use crate::error::CliError;
use crate::stack::StackArgs;

#[derive(Debug, Args)]
pub struct InvoiceArgs {
    #[command(subcommand)]
    pub command: InvoiceCommand,
}

#[derive(Debug, Subcommand)]
pub enum InvoiceCommand {
    /// Invoices, newest cycle first: id, number, customer, cycle, kind,
    /// status, issue date, total, amount due, and why a draft is blocked.
    List(ListArgs),
    /// One invoice: lines, VAT breakdown, totals, parties, blocked reason,
    /// and its documents with their S3 keys and SHA-256.
    Show(ShowArgs),
    /// Download one of an invoice's documents from S3, or print a
    /// presigned URL for it (--presign).
    Download(DownloadArgs),
    /// Write an invoice's usage specification (every rated CDR of its
    /// cycle, CSV, gzip) to S3, next to the invoice, and record it.
    Specify(SpecifyArgs),
    /// A draft's lines and document amounts as it would be issued now:
    /// marked PREVIEW, without a number; with --ubl/--pdf also as UBL
    /// (with a PREVIEW note) and as a PDF watermarked "PREVIEW — NOT AN
    /// INVOICE" on every page, numbered DRAFT. Writes nothing to S3 and
    /// takes no number.
    Preview(PreviewArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this customer's: its numeric id or its code.
    #[arg(long, value_name = "C")]
    pub customer: Option<String>,
    /// Only this cycle's, named by its start date.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub cycle: Option<NaiveDate>,
    /// Only drafts or only final invoices.
    #[arg(long, value_parser = parse_status)]
    pub status: Option<InvoiceStatus>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The invoice: its id or its number (id:N or number:X when digits
    /// could be either).
    #[arg(value_name = "ID|NUMBER", value_parser = parse_ref)]
    pub invoice: InvoiceRef,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    #[arg(value_name = "ID|NUMBER", value_parser = parse_ref)]
    pub invoice: InvoiceRef,
    /// Which document.
    #[arg(long, value_parser = parse_document)]
    pub what: DocumentKind,
    /// Where to write it [default: the object's file name, here].
    #[arg(long, value_name = "FILE", conflicts_with = "presign")]
    pub out: Option<PathBuf>,
    /// Print a presigned GET URL instead of downloading.
    #[arg(long)]
    pub presign: bool,
    /// How long the presigned URL is valid, in seconds (default 900; at
    /// most 604800, S3's 7 days).
    #[arg(long, value_name = "SECONDS", requires = "presign")]
    pub expires: Option<u64>,
}

#[derive(Debug, Args)]
pub struct SpecifyArgs {
    #[arg(value_name = "ID|NUMBER", value_parser = parse_ref)]
    pub invoice: InvoiceRef,
    /// The bucket [default: $TEM_INVOICE_BUCKET, else the stack's
    /// CdrBucketName output (--stack/TEM_STACK)].
    #[arg(long, env = "TEM_INVOICE_BUCKET")]
    pub bucket: Option<String>,
    #[command(flatten)]
    pub stack: StackArgs,
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// The customer: its numeric id or its code.
    #[arg(value_name = "CUSTOMER")]
    pub customer: String,
    /// The cycle, named by its start date.
    #[arg(value_name = "CYCLE")]
    pub cycle: NaiveDate,
    #[arg(long)]
    pub json: bool,
    /// Also write the preview as UBL to FILE (- for stdout).
    #[arg(long, value_name = "FILE")]
    pub ubl: Option<PathBuf>,
    /// Also write the preview as a watermarked PDF to FILE (- for stdout).
    #[arg(long, value_name = "FILE")]
    pub pdf: Option<PathBuf>,
}

fn parse_ref(s: &str) -> Result<InvoiceRef, String> {
    s.parse().map_err(|e: InvoiceViewError| e.to_string())
}

fn parse_status(s: &str) -> Result<InvoiceStatus, String> {
    s.parse().map_err(|e: InvoiceViewError| e.to_string())
}

fn parse_document(s: &str) -> Result<DocumentKind, String> {
    s.parse().map_err(|e: InvoiceViewError| e.to_string())
}

pub async fn run(args: InvoiceArgs) -> Result<(), CliError> {
    let url = db::url_from_env()?;
    let db = db::open(&url, 2).await?;
    db.check_schema().await?;
    let view = PgInvoiceView::new(db.pool.clone());
    let mut out = io::stdout().lock();
    match args.command {
        InvoiceCommand::List(a) => {
            let rows = invoice_view::InvoiceViewStore::list(
                &view,
                &InvoiceFilter {
                    customer: a.customer,
                    cycle: a.cycle,
                    status: a.status,
                    limit: a.limit,
                },
            )
            .await
            .map_err(InvoiceViewError::from)?;
            if a.json {
                serde_json::to_writer(&mut out, &rows).map_err(io::Error::from)?;
                writeln!(out)?;
            } else {
                out.write_all(invoice_view::render_list(&rows).as_bytes())?;
            }
        }
        InvoiceCommand::Show(a) => {
            let detail = invoice_view::show(&view, &a.invoice).await?;
            if a.json {
                serde_json::to_writer(&mut out, &detail).map_err(io::Error::from)?;
                writeln!(out)?;
            } else {
                out.write_all(invoice_view::render_detail(&detail).as_bytes())?;
            }
        }
        InvoiceCommand::Download(a) => {
            // Which document, and whether it exists, before any AWS set-up.
            let detail = invoice_view::show(&view, &a.invoice).await?;
            let document = invoice_view::document(&detail, a.what)?;
            let expires = invoice_view::expiry(a.expires)?;
            let s3 = S3Documents::new(s3_client(&aws_config().await));
            if a.presign {
                let url = s3.presign(&document.bucket, &document.key, expires).await?;
                writeln!(out, "{url}")?;
                eprintln!(
                    "valid for {} s; sha256 {}",
                    expires.as_secs(),
                    document.sha256
                );
            } else {
                let to = a.out.unwrap_or_else(|| {
                    PathBuf::from(document.key.rsplit('/').next().unwrap_or("document"))
                });
                let size = s3.download(&document.bucket, &document.key, &to).await?;
                writeln!(
                    out,
                    "{} of {} written to {} ({size} bytes, recorded sha256 {})",
                    a.what,
                    invoice_view::name_of(&detail.summary),
                    to.display(),
                    document.sha256
                )?;
            }
        }
        InvoiceCommand::Specify(a) => {
            let detail = invoice_view::show(&view, &a.invoice).await?;
            let bucket = match a.bucket.filter(|b| !b.trim().is_empty()) {
                Some(bucket) => bucket,
                None => a.stack.output("CdrBucketName").await?,
            };
            let s = &detail.summary;
            let key = object_key(s.customer_id, s.cycle, s.number.as_deref(), s.id);
            let mut upload = S3MultipartUpload::new(
                s3_client(&aws_config().await),
                &bucket,
                &key,
                specification::CONTENT_TYPE,
            );
            let written = write_cycle(&db.pool, &mut upload, s.customer_id, s.cycle).await?;
            record(&db.pool, s.id, &bucket, &key, &written)
                .await
                .map_err(InvoiceViewError::from)?;
            writeln!(
                out,
                "usage specification of {}: s3://{bucket}/{key}\n{} CDRs rated {} EUR, {} bytes in {} part(s), sha256 {}",
                invoice_view::name_of(s),
                written.rows,
                euros(written.rated_cost_micros),
                written.bytes,
                written.parts,
                written.sha256
            )?;
        }
        InvoiceCommand::Preview(a) => {
            let preview = invoice_view::preview(
                &view,
                &PgInvoices::new(db.pool.clone()),
                &a.customer,
                a.cycle,
                Utc::now(),
            )
            .await?;
            if a.ubl.is_some() || a.pdf.is_some() {
                let (ubl, pdf) = invoice_view::preview_documents(&preview)?;
                let to_stdout = |p: &PathBuf| p.as_os_str() == "-";
                for (path, bytes, what) in [(&a.ubl, ubl.xml, "UBL"), (&a.pdf, pdf.bytes, "PDF")] {
                    let Some(path) = path else { continue };
                    if to_stdout(path) {
                        out.write_all(&bytes)?;
                    } else {
                        std::fs::write(path, &bytes).map_err(|source| CliError::WriteFile {
                            path: path.display().to_string(),
                            source,
                        })?;
                        // On stderr: stdout may carry the other document.
                        eprintln!(
                            "preview {what} (not an invoice, numbered {}) written to {}",
                            invoice_view::PREVIEW_NUMBER,
                            path.display()
                        );
                    }
                }
                // A document on stdout stays alone there.
                if [&a.ubl, &a.pdf]
                    .iter()
                    .any(|p| p.as_ref().is_some_and(to_stdout))
                {
                    return Ok(());
                }
            }
            if a.json {
                let value = serde_json::json!({
                    "preview": true,
                    "number": null,
                    "draft": preview.draft,
                    "issuable": preview.issued.is_ok(),
                    "problems": preview.issued.as_ref().err(),
                    "amounts": preview.issued.as_ref().ok().map(|i| &i.amounts),
                });
                serde_json::to_writer(&mut out, &value).map_err(io::Error::from)?;
                writeln!(out)?;
            } else {
                out.write_all(invoice_view::render_preview(&preview).as_bytes())?;
            }
        }
    }
    Ok(())
}

impl From<SpecificationError> for CliError {
    fn from(e: SpecificationError) -> Self {
        CliError::Specification(e)
    }
}
