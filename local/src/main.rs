//! `local-run`: the main job, locally. Starts the emulator, deploys the
//! template, seeds demo profiles against the carrier simulator, runs one
//! master-sync cycle, and prints the tasks, what landed in S3, the totals
//! and invoices, and one completed sync as a timeline.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use tem_local::demo;
use tem_local::deployment::{wait_for, Deployment};
use tem_local::emulator::Emulator;
use tem_shared::adapters::costs::cycle_allocation;
use tem_shared::adapters::operations::PgStepHistory;
use tem_shared::billing::euros;
use tem_shared::command::{Cause, Command, CyclePayload};
use tem_shared::costs::report::render;
use tem_shared::ops::timeline;
use tem_shared::ports::TaskStore;
use tem_shared::tasks::{SyncTask, TaskStatus};

const STACK: &str = "tem-local";
const TOKEN: &str = "local-sim-token";

#[tokio::main]
async fn main() -> Result<()> {
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tem_local".into());
    println!("==> emulator");
    let emulator = Emulator::start()?;
    println!("    {}", emulator.endpoint);
    println!("==> database {database_url}");
    let pool = demo::prepare_database(&database_url)
        .await
        .context("prepare the database (is PostgreSQL running?)")?;
    println!("==> carrier simulator");
    let simulator = provider_sim::start(emulator.serve_addr(), TOKEN).await?;
    println!("    http://{}", simulator.addr);
    println!(
        "==> build and deploy infra/template.yaml as stack {STACK} (replacing an earlier one)"
    );
    tem_local::stack::Stack::remove_existing(&emulator, STACK).await?;
    let params = [
        ("ScheduleEnabled", "false".to_string()),
        ("PollDelaySeconds", "2".to_string()),
        ("BackoffBaseSeconds", "2".to_string()),
    ];
    let function_db_url = emulator.for_functions(&database_url);
    let deployment = Deployment::create(&emulator, STACK, &function_db_url, pool, &params).await?;
    let period = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    println!("==> demo data: local/demo.yaml (as temctl apply)");
    let seeded = demo::seed(
        &deployment,
        &emulator.for_functions(&format!("http://{}", simulator.addr)),
        TOKEN,
        period,
    )
    .await?;
    let s = seeded.summary;
    println!(
        "    {} changed ({} created, {} updated), {} unchanged",
        s.changed, s.created, s.updated, s.unchanged
    );
    for delivery in &seeded.follow_up {
        let outcome = if delivery.is_sent() {
            "sent"
        } else {
            "NOT sent"
        };
        println!("    follow-up {outcome}: {}", delivery.follow_up.describe());
    }
    let profiles = seeded.profile_ids;
    // Routit prepares its export for a while: show the polling.
    simulator_control(
        &format!("http://{}/_control/routit", simulator.addr),
        json!({"not_ready_polls": 2}),
    )
    .await?;
    println!(
        "    {} active demo profiles, period {period}",
        profiles.len()
    );

    println!("==> one master-sync cycle (the schedule's event)");
    let event = json!({
        "version": "0", "id": uuid::Uuid::new_v4().to_string(), "detail-type": "Scheduled Event",
        "source": "aws.events", "time": chrono::Utc::now(), "resources": [], "detail": {}
    });
    let answer = deployment.invoke("SyncManagerFunctionName", &event).await?;
    if let Some(error) = answer.error {
        anyhow::bail!("sync-manager failed ({error}): {}", answer.payload);
    }
    let sent = answer.payload["sent"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    println!(
        "    sent {}, skipped {}, failures {}",
        sent.len(),
        answer.payload["skipped"].as_array().map_or(0, Vec::len),
        answer.payload["failures"].as_array().map_or(0, Vec::len)
    );
    for skip in answer.payload["skipped"].as_array().into_iter().flatten() {
        println!(
            "    skipped profile {}: {}",
            skip["profile_id"], skip["reason"]
        );
    }

    let tasks = deployment.tasks();
    let task_ids: Vec<String> = sent
        .iter()
        .filter_map(|s| s["task_id"].as_str().map(str::to_string))
        .collect();
    let finished = wait_for("every task to finish", Duration::from_secs(120), || async {
        let mut all = Vec::new();
        for id in &task_ids {
            match tasks.get(id).await? {
                Some(task) if task.status.is_finished() => all.push(task),
                _ => return Ok(None),
            }
        }
        Ok(Some(all))
    })
    .await?;

    println!("==> sync tasks");
    println!(
        "    {:<34} {:<10} {:>7} {:<10} {:<10} error",
        "task", "provider", "profile", "period", "status"
    );
    for task in &finished {
        println!(
            "    {:<34} {:<10} {:>7} {:<10} {:<10} {}",
            task.task_id,
            task.provider,
            task.profile_id,
            task.period,
            task.status,
            task.error.as_deref().unwrap_or("")
        );
    }
    println!("==> s3://{}/inbox/", deployment.output("CdrBucketName"));
    let exports = deployment.objects("inbox/").await?;
    for (key, size) in &exports {
        println!("    {key}  ({size} bytes)");
    }

    println!("==> CDR imports (through the bucket's notifications)");
    let keys: Vec<String> = exports.iter().map(|(k, _)| k.clone()).collect();
    let imports = wait_for("every export to be imported", Duration::from_secs(120), || async {
        let rows: Vec<(String, String, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT DISTINCT ON (key) key, status, rows_read, rows_loaded, rows_duplicate, rows_rejected, rows_without_customer
             FROM import_file WHERE key = ANY($1) AND status <> 'running' ORDER BY key, id DESC",
        )
        .bind(&keys)
        .fetch_all(&deployment.pool)
        .await?;
        Ok((rows.len() == keys.len()).then_some(rows))
    })
    .await?;
    println!(
        "    {:<52} {:<10} {:>5} {:>6} {:>5} {:>8} {:>11}",
        "key", "status", "read", "loaded", "dup", "rejected", "no customer"
    );
    for (key, status, read, loaded, duplicate, rejected, without) in imports {
        println!("    {key:<52} {status:<10} {read:>5} {loaded:>6} {duplicate:>5} {rejected:>8} {without:>11}");
    }
    let per_customer: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT c.name, count(*), sum(r.provider_cost_micros)::bigint FROM call_detail_record r
         JOIN customer c ON c.id = r.customer_id GROUP BY c.name ORDER BY c.name",
    )
    .fetch_all(&deployment.pool)
    .await?;
    println!("==> CDRs per customer (provider cost)");
    for (name, count, micros) in per_customer {
        println!("    {name:<22} {count:>5} CDRs  EUR {}", euros(micros));
    }
    println!("==> totals per customer cycle (DispatchTotals -> CalculateTotals -> BackupTotals -> BillingInsight -> GenerateInvoice)");
    backfill_totals(&deployment).await?;
    let totals = wait_for("the totals", Duration::from_secs(120), || async {
        let rows: Vec<(String, String, String, i64, i64, Option<i32>)> = sqlx::query_as(
            "SELECT c.name, t.cycle::text, t.method, t.cdr_count, t.rated_cost_micros,
                    (SELECT max(version) FROM totals_history h WHERE h.customer_id = t.customer_id AND h.cycle = t.cycle)
             FROM totals t JOIN customer c ON c.id = t.customer_id ORDER BY 1, 2",
        )
        .fetch_all(&deployment.pool)
        .await?;
        let counted: i64 = rows.iter().map(|r| r.3).sum();
        let loaded: i64 = sqlx::query_scalar("SELECT count(*) FROM call_detail_record WHERE customer_id IS NOT NULL")
            .fetch_one(&deployment.pool)
            .await?;
        // Done when every CDR with a customer is in a total that has a history version.
        Ok((!rows.is_empty() && counted == loaded && rows.iter().all(|r| r.5.is_some())).then_some(rows))
    })
    .await?;
    for (name, cycle, method, count, rated, version) in totals {
        println!(
            "    {name:<22} cycle {cycle}  {method:<9} {count:>5} CDRs  EUR {}  (history v{})",
            euros(rated),
            version.unwrap_or(0)
        );
    }
    print_insights_and_invoices(&deployment).await?;
    print_cost_allocations(&deployment).await?;
    print_one_timeline(&deployment, &finished).await?;
    closed_cycle_documents(&deployment).await?;
    carrier_audit_summary(&deployment, &format!("http://{}", simulator.addr), period).await?;
    daily_maintenance(&deployment).await?;
    println!("The emulator keeps running (scripts/emulator.sh stop ends it).");
    Ok(())
}

/// The daily maintenance, started from the console as its schedule would:
/// its three steps on the maintenance queue, and what each did. The demo's
/// CDRs are recent, so nothing is past its retention yet; the archive
/// itself is shown by `tests/emulator_archive.rs`.
async fn daily_maintenance(deployment: &Deployment) -> Result<()> {
    println!(
        "==> daily maintenance (MaintainPartitions -> ArchiveExpiredMonths -> PruneExpiredRecords)"
    );
    let answer = deployment
        .invoke(
            "MaintenanceFunctionName",
            &serde_json::json!({"command": "maintenance"}),
        )
        .await?;
    if let Some(error) = answer.error {
        anyhow::bail!(
            "the maintenance function failed: {error}: {}",
            answer.payload
        );
    }
    let report: serde_json::Value = wait_for("the maintenance run", Duration::from_secs(120), || async {
        let report: Option<serde_json::Value> = sqlx::query_scalar(
            "SELECT report FROM maintenance_run WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 1",
        )
        .fetch_optional(&deployment.pool)
        .await?;
        Ok(report)
    })
    .await?;
    let count = |v: &serde_json::Value| v.as_array().map_or(0, Vec::len);
    println!(
        "    partitions created {}, months archived {}, months kept {}, rows pruned {}, analysed {}",
        count(&report["partitions"]["created"]),
        count(&report["archive"]["written"]),
        count(&report["archive"]["kept"]),
        report["housekeeping"]["pruned"]
            .as_object()
            .map_or(0, |p| p.values().filter_map(serde_json::Value::as_u64).sum::<u64>()),
        report["housekeeping"]["analysed"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );
    Ok(())
}

/// One carrier bill audit: KPN EEN's invoice for the month of the demo's
/// period, fetched from the simulator and put under `carrier-invoices/` as
/// provider-sync does on a month's last day; the bucket's notification
/// makes cdr-import audit it (`AuditCarrierInvoice`) against the CDRs, the
/// demo's buy rates and its subscriptions. The demo synced only yesterday,
/// so the other days' usage shows as missing CDRs, and the simulator bills
/// ten numbers the demo does not have.
async fn carrier_audit_summary(
    deployment: &Deployment,
    simulator: &str,
    period: chrono::NaiveDate,
) -> Result<()> {
    use chrono::Datelike;
    let provider = "kpn_een";
    let month = period.with_day(1).context("the first of the month")?;
    println!(
        "==> carrier bill audit: {provider}'s invoice for {}",
        month.format("%Y-%m")
    );
    let body = reqwest::Client::new()
        .get(format!("{simulator}/{provider}/carrier-invoices/{month}"))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let profile: i64 =
        sqlx::query_scalar("SELECT id FROM sync_profile WHERE provider = $1 ORDER BY id LIMIT 1")
            .bind(provider)
            .fetch_one(&deployment.pool)
            .await?;
    let key = format!("carrier-invoices/{provider}/{profile}/{month}.csv");
    deployment
        .clients
        .s3
        .put_object()
        .bucket(deployment.output("CdrBucketName"))
        .key(&key)
        .body(body.to_vec().into())
        .send()
        .await
        .context("put the carrier invoice into the bucket")?;
    let (id, number, lines, billed): (i64, String, i32, i64) =
        wait_for("the carrier invoice's audit", Duration::from_secs(120), || async {
            Ok(sqlx::query_as(
                "SELECT id, invoice_number, lines_read, lines_total_micros FROM carrier_invoice WHERE file_key = $1",
            )
            .bind(&key)
            .fetch_optional(&deployment.pool)
            .await?)
        })
        .await?;
    println!(
        "    s3 key {key}: invoice {number}, {lines} lines, EUR {} billed",
        euros(billed)
    );
    let findings: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT kind, count(*), sum(billed_micros)::bigint, sum(billed_micros - expected_micros)::bigint
         FROM audit_finding WHERE carrier_invoice_id = $1 GROUP BY kind ORDER BY kind",
    )
    .bind(id)
    .fetch_all(&deployment.pool)
    .await?;
    println!(
        "    {:<26} {:>8} {:>14} {:>16}",
        "finding", "count", "billed EUR", "over expected"
    );
    for (kind, count, billed, over) in findings {
        println!(
            "    {kind:<26} {count:>8} {:>14} {:>16}",
            euros(billed),
            euros(over)
        );
    }
    println!("    (temctl audit list --provider {provider} lists them; temctl audit report {provider} writes the dispute CSV)");
    Ok(())
}

/// The demo's cycles are all open (their CDRs are yesterday's), so their
/// invoices are drafts without documents. This gives Acme a few calls in a
/// cycle that closed two months ago, sends that cycle to the totals
/// function as an operator's console command would, and waits for the
/// chain to finalise the invoice (GenerateInvoice), render its UBL and PDF
/// (RenderInvoice) and write its usage specification (SpecifyInvoice);
/// then prints what the bucket holds under `invoices/`.
async fn closed_cycle_documents(deployment: &Deployment) -> Result<()> {
    use chrono::Datelike;
    let pool = &deployment.pool;
    let acme: i64 = sqlx::query_scalar("SELECT id FROM customer WHERE code = 'acme'")
        .fetch_one(pool)
        .await
        .context("the demo customer acme")?;
    // Acme's cycles start on the 1st: the cycle two months back ended at
    // least 31 days ago, past the 5 days' grace.
    let today = chrono::Utc::now().date_naive();
    let this_month = today.with_day(1).context("the first of this month")?;
    let cycle = this_month
        .checked_sub_months(chrono::Months::new(2))
        .context("two months back")?;
    println!("==> a closed cycle's invoice documents (acme, cycle {cycle}, as a console command)");
    let calls = [
        ("+31612340000", 3, 95, 41_000),
        ("+31612340000", 9, 620, 212_000),
        ("+31612340003", 12, 48, 19_000),
        ("+31612340003", 20, 1_810, 615_000),
    ];
    let mut ids = Vec::new();
    for (n, (subscription, day, seconds, cost)) in calls.into_iter().enumerate() {
        let started = cycle + chrono::Duration::days(day);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
                destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
             VALUES ('kpn_sp16', $1, $2, $3, ($4::date + time '10:00') AT TIME ZONE 'UTC', 'voice', 'outgoing', '+31201234567',
                     'home', $5, 0, 0, $6, coalesce((SELECT min(id) FROM import_file), 0), $7)
             ON CONFLICT DO NOTHING
             RETURNING id",
        )
        .bind(format!("demo-closed-{cycle}-{n}"))
        .bind(subscription)
        .bind(acme)
        .bind(started)
        .bind(seconds)
        .bind(cost)
        .bind(n as i64 + 1)
        .fetch_optional(pool)
        .await
        .context("insert the closed cycle's calls")?
        .unwrap_or_default();
        if id != 0 {
            ids.push(id);
        }
    }
    // As an import does: mark the cycle changed, so CalculateTotals rates it.
    sqlx::query(
        "INSERT INTO cycle_change (customer_id, cycle, changed_from, source)
         SELECT r.customer_id, $2::date, min(r.started_at), 'import'
         FROM call_detail_record r WHERE r.id = ANY($1) GROUP BY 1",
    )
    .bind(&ids)
    .bind(cycle)
    .execute(pool)
    .await
    .context("mark the closed cycle changed")?;
    let answer = deployment
        .invoke(
            "TotalsFunctionName",
            &json!({"customer_id": acme, "cycle": cycle.to_string()}),
        )
        .await?;
    if let Some(error) = answer.error {
        anyhow::bail!("the totals function failed ({error}): {}", answer.payload);
    }
    let (number, blocked): (Option<String>, Option<String>) = wait_for(
        "the closed cycle's invoice",
        Duration::from_secs(120),
        || async {
            Ok(sqlx::query_as(
                "SELECT number, blocked_reason FROM invoice
                 WHERE customer_id = $1 AND cycle = $2 AND sequence = 0
                   AND (status = 'final' OR blocked_reason IS NOT NULL)",
            )
            .bind(acme)
            .bind(cycle)
            .fetch_optional(pool)
            .await?)
        },
    )
    .await?;
    let Some(number) = number else {
        println!("    not issued: {}", blocked.unwrap_or_default());
        return Ok(());
    };
    println!("    invoice {number} is final");
    let recorded = wait_for(
        "its UBL, PDF and usage specification",
        Duration::from_secs(120),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM invoice_document d WHERE d.invoice_id = i.id)
                      + (SELECT count(*) FROM invoice_specification s WHERE s.invoice_id = i.id)
                 FROM invoice i WHERE i.customer_id = $1 AND i.cycle = $2 AND i.sequence = 0",
            )
            .bind(acme)
            .bind(cycle)
            .fetch_one(pool)
            .await?;
            Ok((n == 3).then_some(n))
        },
    )
    .await;
    if let Err(e) = recorded {
        println!("    {e}; `temctl failed list` shows a step that failed");
    }
    let bucket = deployment.output("CdrBucketName");
    println!("==> s3://{bucket}/invoices/");
    for (key, size) in deployment.objects("invoices/").await? {
        println!("    {key}  ({size} bytes)");
    }
    Ok(())
}

/// One completed sync as `temctl task show` prints it: the task with the
/// longest chain, so the timeline shows the import and the totals too.
async fn print_one_timeline(deployment: &Deployment, finished: &[SyncTask]) -> Result<()> {
    let history = PgStepHistory::new(deployment.pool.clone());
    let tasks = deployment.tasks();
    let mut best: Option<timeline::Timeline> = None;
    for task in finished
        .iter()
        .filter(|t| t.status == TaskStatus::Completed)
    {
        let t = timeline::timeline(&history, &tasks, &task.task_id).await?;
        let size = |t: &timeline::Timeline| timeline::render(t).lines().count();
        if best.as_ref().is_none_or(|b| size(&t) > size(b)) {
            best = Some(t);
        }
    }
    if let Some(t) = best {
        println!(
            "==> one sync as a timeline (temctl task show {})",
            t.task_id
        );
        for line in timeline::render(&t).lines() {
            println!("    {line}");
        }
    }
    Ok(())
}

/// What BillingInsight and GenerateInvoice made of the totals.
async fn print_insights_and_invoices(deployment: &Deployment) -> Result<()> {
    // One line per kind: the subjects (lines, providers) it is about.
    let insights: Vec<(String, String, String, i64, String)> = sqlx::query_as(
        "SELECT c.name, i.cycle::text, i.kind, count(*), coalesce(string_agg(nullif(i.subject, ''), ' ' ORDER BY i.subject), '')
         FROM billing_insight i JOIN customer c ON c.id = i.customer_id
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .fetch_all(&deployment.pool)
    .await?;
    println!("==> billing insights");
    for (name, cycle, kind, count, subjects) in insights {
        println!("    {name:<22} cycle {cycle}  {kind:<18} x{count:<3} {subjects}");
    }
    #[derive(sqlx::FromRow)]
    struct Invoice {
        name: String,
        cycle: String,
        kind: String,
        status: String,
        rated: i64,
        fees: i64,
        total: i64,
        lines: i64,
        number: Option<String>,
        blocked_reason: Option<String>,
        document: Option<String>,
    }
    let invoices: Vec<Invoice> = sqlx::query_as(
        "SELECT c.name, i.cycle::text AS cycle, i.kind, i.status, i.rated_cost_micros AS rated,
                i.fees_micros AS fees, i.total_micros AS total,
                (SELECT count(*) FROM invoice_line l WHERE l.invoice_id = i.id) AS lines,
                i.number, i.blocked_reason,
                (SELECT 's3://' || d.bucket || '/' || d.key FROM invoice_document d
                 WHERE d.invoice_id = i.id AND d.format = 'ubl') AS document
         FROM invoice i JOIN customer c ON c.id = i.customer_id ORDER BY 1, 2, i.sequence",
    )
    .fetch_all(&deployment.pool)
    .await?;
    println!("==> invoices");
    for i in invoices {
        println!(
            "    {:<22} cycle {}  {} ({})  rated EUR {} + fees EUR {} = EUR {}  ({} lines)",
            i.name,
            i.cycle,
            i.kind,
            i.status,
            euros(i.rated),
            euros(i.fees),
            euros(i.total),
            i.lines
        );
        // Final invoices carry their number; a closed cycle's draft that
        // could not be issued says what billing data it lacks.
        if let Some(number) = i.number {
            println!("        number {number}");
        }
        // RenderInvoice's e-invoice (UBL, Peppol BIS Billing 3.0).
        if let Some(document) = i.document {
            println!("        e-invoice {document}");
        }
        if let Some(reason) = i.blocked_reason {
            println!("        blocked: {reason}");
        }
    }
    Ok(())
}

/// Each demo customer's chargeback: every cycle's invoice over its cost
/// tree, as `temctl costs show` prints it (two levels deep).
async fn print_cost_allocations(deployment: &Deployment) -> Result<()> {
    let cycles: Vec<(String, chrono::NaiveDate)> = sqlx::query_as(
        "SELECT c.code, i.cycle FROM invoice i JOIN customer c ON c.id = i.customer_id
         WHERE i.sequence = 0 AND c.code IS NOT NULL AND EXISTS (SELECT 1 FROM cost_node n WHERE n.customer_id = c.id)
         ORDER BY 1, 2",
    )
    .fetch_all(&deployment.pool)
    .await?;
    println!("==> cost-centre allocation (temctl costs show CUSTOMER CYCLE)");
    for (code, cycle) in cycles {
        let allocation = cycle_allocation(&deployment.pool, &code, cycle).await?;
        for line in render(&allocation, Some(2), false).lines() {
            println!("    {line}");
        }
    }
    Ok(())
}

/// Customer cycles with CDRs but no totals (left by an earlier run whose
/// DispatchTotals had no consumer yet; a re-run's identical exports are
/// deduplicated, so nothing dispatches them) get the console's command.
async fn backfill_totals(deployment: &Deployment) -> Result<()> {
    let rows: Vec<(i64, chrono::DateTime<chrono::Utc>, i16, String)> = sqlx::query_as(
        "SELECT DISTINCT r.customer_id, date_trunc('hour', r.started_at), c.billing_cycle_start_day, c.time_zone
         FROM call_detail_record r JOIN customer c ON c.id = r.customer_id",
    )
    .fetch_all(&deployment.pool)
    .await?;
    let mut cycles = std::collections::BTreeSet::new();
    for (customer, at, day, zone) in rows {
        let zone: chrono_tz::Tz = zone.parse().map_err(|_| {
            anyhow::anyhow!("customer {customer} has time zone {zone:?}, which is not an IANA zone name; correct it in the catalog file and apply it")
        })?;
        cycles.insert((customer, tem_shared::cdr::cycle_of(at, day as u32, zone)));
    }
    for (customer, cycle) in cycles {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM totals WHERE customer_id = $1 AND cycle = $2)",
        )
        .bind(customer)
        .bind(cycle)
        .fetch_one(&deployment.pool)
        .await?;
        if !exists {
            println!("    no totals yet for customer {customer}, cycle {cycle}: sending the console's command");
            let answer = deployment
                .invoke(
                    "TotalsFunctionName",
                    &Command::DispatchTotals(CyclePayload::new(customer, cycle, Cause::Backfill))
                        .payload(),
                )
                .await?;
            if let Some(error) = answer.error {
                anyhow::bail!("totals failed ({error}): {}", answer.payload);
            }
        }
    }
    Ok(())
}

/// Sets a simulator behaviour (see provider_sim::Behaviour).
async fn simulator_control(url: &str, body: serde_json::Value) -> Result<()> {
    reqwest::Client::new()
        .put(url)
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}
