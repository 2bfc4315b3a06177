//! What an import prints on stdout: a short summary, or one JSON object.

use std::io::{self, Write};

use tem_shared::import::importer::{ImportRequest, ImportStatus, ImportSummary};

/// Exactly one JSON object (the importer's summary) and a newline.
pub fn write_json(out: &mut impl Write, summary: &ImportSummary) -> io::Result<()> {
    serde_json::to_writer(&mut *out, summary)?;
    writeln!(out)?;
    out.flush()
}

pub fn write_human(
    out: &mut impl Write,
    request: &ImportRequest,
    s: &ImportSummary,
) -> io::Result<()> {
    let status = match s.status {
        ImportStatus::AlreadyImported => {
            "already imported (the same content was imported before; nothing loaded)"
        }
        ImportStatus::CompletedWithErrors => {
            "completed with errors (an entry was refused or stopped early, see below)"
        }
        ImportStatus::Completed => "completed",
    };
    writeln!(out, "import of {} ({})", request.key, request.provider)?;
    let line =
        |out: &mut dyn Write, label: &str, value: String| writeln!(out, "  {label:<17} {value}");
    line(out, "status", status.into())?;
    line(out, "read", format!("{} rows", s.read))?;
    line(out, "loaded", s.loaded.to_string())?;
    line(out, "duplicate", s.duplicate.to_string())?;
    line(out, "rejected", s.rejected.to_string())?;
    line(out, "without customer", s.without_customer.to_string())?;
    line(out, "customer cycles", cycles(s))?;
    if let Some(path) = &s.rejected_key {
        line(out, "rejected rows in", path.clone())?;
    }
    for entry in &s.entries {
        line(out, "entry", format!("{}: {}", entry.entry, entry.outcome))?;
    }
    line(out, "duration", duration(s))?;
    line(
        out,
        "import file",
        format!("#{} sha256 {}", s.import_file_id, s.sha256),
    )?;
    out.flush()
}

/// The (customer, cycle) pairs touched, the first few spelled out.
fn cycles(s: &ImportSummary) -> String {
    const SHOWN: usize = 3;
    let mut text = s.touched.len().to_string();
    if !s.touched.is_empty() {
        let shown: Vec<String> = s
            .touched
            .iter()
            .take(SHOWN)
            .map(|(customer, start)| format!("customer {customer} from {start}"))
            .collect();
        let more = s.touched.len().saturating_sub(SHOWN);
        let more = if more > 0 {
            format!(", {more} more")
        } else {
            String::new()
        };
        text.push_str(&format!(" ({}{more})", shown.join(", ")));
    }
    text
}

fn duration(s: &ImportSummary) -> String {
    let secs = s.duration_ms as f64 / 1000.0;
    if s.read == 0 {
        return format!("{secs:.2} s");
    }
    let rate = s.read as f64 / secs.max(0.001);
    format!("{secs:.2} s ({rate:.0} rows/s)")
}
