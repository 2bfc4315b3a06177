//! `render-bench`: the documents of a large invoice (5,000 subscriptions,
//! about 20,000 lines) rendered as UBL plus PDF, against the UBL alone and
//! against an invoice a tenth of its size, each in a child process that
//! reports its time and peak memory. See bench/README.md.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use tem_bench::child::memory_kb;
use tem_shared::billing::document::pdf::{render_pdf, Mark};
use tem_shared::billing::document::ubl::{render, DocumentLine, IssuedInvoice, Profile};
use tem_shared::billing::parties::{Address, BuyerDetails, PeppolId, SellerDetails};
use tem_shared::billing::vat::{LineVat, RateBp, VatCategory};

#[derive(Parser)]
#[command(
    name = "render-bench",
    about = "Benchmark of an invoice's documents (UBL plus PDF) for a customer with 5,000 subscriptions",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Child>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Subscriptions of the large invoice (4 lines each).
    #[arg(long, default_value_t = 5_000)]
    subscriptions: u32,
    /// Subscriptions of the reference invoice.
    #[arg(long, default_value_t = 500)]
    reference_subscriptions: u32,
    /// Runs of each measurement; the fastest is reported (peak RSS is the
    /// largest).
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Also write the summary as JSON here.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Child {
    /// (internal) Renders one invoice and prints its report as JSON.
    #[command(hide = true)]
    Render {
        #[arg(long)]
        subscriptions: u32,
        /// `ubl` or `both` (UBL then PDF).
        #[arg(long)]
        what: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Report {
    subscriptions: u32,
    lines: usize,
    what: String,
    /// Building the invoice in memory (what the store read would give).
    build_ms: f64,
    ubl_ms: f64,
    pdf_ms: f64,
    ubl_bytes: usize,
    pdf_bytes: usize,
    pdf_pages: usize,
    /// VmHWM of the child process, after everything.
    peak_rss_kib: u64,
}

fn address(street: &str, city: &str, postcode: &str) -> Address {
    Address {
        street: street.into(),
        city: city.into(),
        postcode: postcode.into(),
        country: "NL".into(),
    }
}

/// An issued invoice as finalisation records it for a rate-plan customer:
/// per subscription, calls at home, data in the EU, texts, and the monthly
/// fee, all at 21%.
fn invoice(subscriptions: u32) -> IssuedInvoice {
    let vat = LineVat {
        category: VatCategory::S,
        rate: RateBp(2100),
    };
    let mut lines = Vec::with_capacity(subscriptions as usize * 4);
    for s in 0..subscriptions {
        let number = format!("+316{:08}", 10_000_000 + s);
        let seed = i64::from(s);
        for (kind, zone, label, usage, amount) in [
            (
                "voice",
                "home",
                "Calls, home",
                format!("{} calls, {} s", 3 + s % 40, 180 + seed * 7 % 5_000),
                1_234_567 + seed * 7_919 % 9_000_000,
            ),
            (
                "data",
                "eu",
                "Data, EU roaming",
                format!(
                    "{} sessions, {} bytes",
                    1 + s % 12,
                    5_000_000 + seed * 104_729
                ),
                2_004_999 + seed * 3_571 % 4_000_000,
            ),
            (
                "sms",
                "home",
                "SMS, home",
                format!("{} messages", 1 + s % 25),
                90_000 * (1 + seed % 25),
            ),
            (
                "fee",
                "",
                "Monthly fee Business",
                "1 month".to_string(),
                12_500_000,
            ),
        ] {
            lines.push(DocumentLine {
                description: format!("{label}: {number}"),
                subscription: number.clone(),
                kind: kind.into(),
                zone: zone.into(),
                usage,
                amount_micros: amount,
                vat,
            });
        }
    }
    IssuedInvoice {
        number: "2026-000123".into(),
        issue_date: "2026-04-06".parse().expect("a date"),
        due_date: "2026-05-06".parse().expect("a date"),
        cycle: "2026-03-01".parse().expect("a date"),
        seller: SellerDetails {
            code: "tem".into(),
            valid_from: "2020-01-01".parse().expect("a date"),
            legal_name: "TEM Services B.V.".into(),
            address: address("Kade 1", "Utrecht", "3511 AA"),
            kvk: "12345678".into(),
            vat_number: "NL123456789B01".into(),
            iban: "NL91ABNA0417164300".into(),
            bic: "ABNANL2A".into(),
            payment_terms_days: 30,
            peppol: PeppolId {
                scheme: "0106".into(),
                id: "12345678".into(),
            },
            invoice_number_format: "{year}-{seq:06}".into(),
        },
        buyer: BuyerDetails {
            customer_id: 1,
            valid_from: "2020-01-01".parse().expect("a date"),
            seller: "tem".into(),
            legal_name: "Fleet Logistics B.V.".into(),
            address: address("Dokweg 7", "Amsterdam", "1011 AB"),
            vat_number: Some("NL111222333B01".into()),
            peppol: PeppolId {
                scheme: "0106".into(),
                id: "11223344".into(),
            },
            invoice_email: "ap@fleet.example".into(),
            buyer_reference: None,
            purchase_order: Some("PO-2026-17".into()),
            payment_terms_days: None,
            vat_category: None,
        },
        lines,
        corrects: None,
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn child(subscriptions: u32, what: &str) -> Result<()> {
    let started = Instant::now();
    let invoice = invoice(subscriptions);
    let build_ms = ms(started);
    let started = Instant::now();
    let ubl = render(&invoice, Profile::PeppolBis)?;
    let ubl_ms = ms(started);
    let (pdf_ms, pdf_bytes, pdf_pages) = if what == "both" {
        let started = Instant::now();
        let pdf = render_pdf(&invoice, Mark::Original)?;
        (ms(started), pdf.bytes.len(), pdf.pages)
    } else {
        (0.0, 0, 0)
    };
    let (peak_rss_kib, _) = memory_kb()?;
    let report = Report {
        subscriptions,
        lines: invoice.lines.len(),
        what: what.into(),
        build_ms,
        ubl_ms,
        pdf_ms,
        ubl_bytes: ubl.xml.len(),
        pdf_bytes,
        pdf_pages,
        peak_rss_kib,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn run_child(subscriptions: u32, what: &str) -> Result<Report> {
    let exe = std::env::current_exe().context("the bench's own path")?;
    let output = Command::new(exe)
        .args([
            "render",
            "--subscriptions",
            &subscriptions.to_string(),
            "--what",
            what,
        ])
        .output()
        .context("run the render child")?;
    if !output.status.success() {
        bail!(
            "the render child failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("the child's report")
}

/// The fastest of `runs` (time is what the machine allowed at best; the
/// peak RSS is the largest seen).
fn best_of(runs: u32, subscriptions: u32, what: &str) -> Result<Report> {
    let mut best: Option<Report> = None;
    let mut peak = 0;
    for _ in 0..runs.max(1) {
        let report = run_child(subscriptions, what)?;
        peak = peak.max(report.peak_rss_kib);
        let total = report.ubl_ms + report.pdf_ms;
        if best.as_ref().is_none_or(|b| total < b.ubl_ms + b.pdf_ms) {
            best = Some(report);
        }
    }
    let mut best = best.context("at least one run")?;
    best.peak_rss_kib = peak;
    Ok(best)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Child::Render {
        subscriptions,
        what,
    }) = cli.command
    {
        return child(subscriptions, &what);
    }
    let args = cli.bench;
    let rows = [
        ("UBL + PDF", args.subscriptions, "both"),
        ("UBL alone", args.subscriptions, "ubl"),
        ("UBL + PDF", args.reference_subscriptions, "both"),
    ];
    let mut reports = Vec::new();
    println!(
        "| documents | subscriptions | lines | UBL ms | PDF ms | total ms | UBL MiB | PDF MiB | PDF pages | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (label, subscriptions, what) in rows {
        let r = best_of(args.runs, subscriptions, what)?;
        let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
        println!(
            "| {label} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {} | {:.1} |",
            r.subscriptions,
            r.lines,
            r.ubl_ms,
            r.pdf_ms,
            r.ubl_ms + r.pdf_ms,
            mib(r.ubl_bytes),
            mib(r.pdf_bytes),
            r.pdf_pages,
            r.peak_rss_kib as f64 / 1024.0
        );
        reports.push(r);
    }
    let large = &reports[0];
    let total_s = (large.ubl_ms + large.pdf_ms) / 1000.0;
    let rss_mib = large.peak_rss_kib as f64 / 1024.0;
    println!(
        "\n{} lines as UBL plus PDF: {total_s:.2} s (goal < 2 s: {}), peak RSS {rss_mib:.1} MiB (goal < 128 MiB: {})",
        large.lines,
        if total_s < 2.0 { "met" } else { "NOT met" },
        if rss_mib < 128.0 { "met" } else { "NOT met" },
    );
    println!(
        "the PDF adds {:.1} MiB of peak RSS to the UBL alone; {}x the lines take {:.1}x the time",
        (large.peak_rss_kib as f64 - reports[1].peak_rss_kib as f64) / 1024.0,
        large.lines / reports[2].lines.max(1),
        (large.ubl_ms + large.pdf_ms) / (reports[2].ubl_ms + reports[2].pdf_ms).max(0.001)
    );
    if let Some(path) = args.json_out {
        std::fs::write(&path, serde_json::to_string_pretty(&reports)?)?;
    }
    Ok(())
}
