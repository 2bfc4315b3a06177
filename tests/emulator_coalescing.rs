//! Coalescing through the deployed stack (issue 11): seven DispatchTotals
//! for one cycle, as seven providers' imports of one five-minute run send
//! them, delivered at once and then again as duplicates, run at most two
//! calculations of the cycle, leave the totals one calculation in full
//! gives, and every sync task still completes after its own
//! GenerateInvoice. Only the chains whose calculation did the work back the
//! totals up and evaluate their insights; the others go from their
//! calculation straight to their invoice (issue 17).
//!
//! Two customers share the one deploy, both bursts at once: Acme's cycle
//! was never calculated (the first run of a cycle, so there is no
//! `cycle_state` row yet to serialize on), Globex's was calculated before
//! its seven imports arrived (the usual case). The test holds the cycles'
//! lock until calculations of each wait for it, so the case where a
//! waiting calculation's snapshot predates the first one's commit is
//! surely part of the run.
//!
//! About a minute of the run is the duplicates: a copy that arrives while
//! its first copy runs waits for that copy's claim to expire (the totals
//! function's 60 s deadline), then is acknowledged as a duplicate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::json;
use sqlx::PgPool;
use tem_local::deployment::wait_for;
use tem_shared::adapters::totals::{calculate_totals, calculate_totals_with};
use tem_shared::billing::calculation::{Calculation, Recalculation};
use tem_shared::billing::totals::CycleTotals;
use tem_shared::cdr::cycle_of;
use tem_shared::envelope::{derived_id, Envelope, Step};
use tem_shared::ports::TaskStore;
use tem_shared::tasks::{NewTask, TaskStatus};
use tem_tests::db::{insert_business_customer, insert_customer_on_plan, mark_imported};
use tem_tests::stack::{deploy, yesterday, TestStack};

/// The seven carriers whose imports of one run each chain a DispatchTotals.
const PROVIDERS: [&str; 7] = [
    "kpn_sp16", "kpn_een", "vodafone", "t_mobile", "routit", "yielder", "telfort",
];
/// Each task's chain is five steps long; a duplicate that finds its first
/// copy still running waits for that copy's claim (the function's 60 s
/// deadline), so the queue needs about a minute more to drain.
const TASKS_TIMEOUT: Duration = Duration::from_secs(180);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(150);
const CHAIN: [&str; 5] = [
    "DispatchTotals",
    "CalculateTotals",
    "BackupTotals",
    "BillingInsight",
    "GenerateInvoice",
];
/// The chain of a task whose calculation found the cycle current, made by
/// another task's chain: that one backs the totals up and evaluates them.
const SHORT_CHAIN: [&str; 3] = ["DispatchTotals", "CalculateTotals", "GenerateInvoice"];

/// A voice call of `seconds` on the customer's line at `provider`, marked
/// as the importer marks what it loads.
async fn call(
    pool: &PgPool,
    customer: i64,
    provider: &str,
    external_id: &str,
    at: DateTime<Utc>,
    seconds: i32,
) {
    let line = PROVIDERS.iter().position(|p| *p == provider).unwrap_or(9);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO call_detail_record (provider, external_id, subscription, customer_id, started_at, kind, direction,
            destination, roaming_zone, duration_seconds, volume_bytes, units, provider_cost_micros, import_file_id, source_line)
         VALUES ($1, $2, $3, $4, $5, 'voice', 'outgoing', '+31201234567', 'home', $6, 0, 0, 0, 1, 1)
         RETURNING id",
    )
    .bind(provider)
    .bind(external_id)
    .bind(format!("+3162{customer:04}{line:03}"))
    .bind(customer)
    .bind(at)
    .bind(seconds)
    .fetch_one(pool)
    .await
    .expect("insert a call");
    mark_imported(pool, &[id]).await;
}

/// One sync task per provider for `customer`, each with one open branch
/// (as sync-manager creates it), and the DispatchTotals its import would
/// chain, carrying the task. Returns (task id, envelope id, body).
async fn tasks_and_dispatches(
    stack: &TestStack,
    customer: i64,
    name: &str,
    first_profile: i64,
    period: NaiveDate,
    cycle: NaiveDate,
) -> Vec<(String, String, String)> {
    let tasks = stack.deployment.tasks();
    let mut out = Vec::new();
    for (n, provider) in PROVIDERS.iter().enumerate() {
        let task_id = format!("{name}-{provider}");
        let now = Utc::now();
        tasks
            .create(
                &NewTask {
                    task_id: task_id.clone(),
                    profile_id: first_profile + n as i64,
                    provider: provider.to_string(),
                    period,
                    created_at: now,
                },
                None,
            )
            .await
            .expect("create the sync task");
        let id = derived_id(&["coalescing", &task_id]);
        let body = Envelope::root(
            id.clone(),
            Step::DispatchTotals,
            json!({ "customer_id": customer, "cycle": cycle, "cause": "import", "provider": provider }),
            vec![],
            Some(task_id.clone()),
            now,
        )
        .to_body();
        out.push((task_id, id, body));
    }
    out
}

async fn calculations(pool: &PgPool, customer: i64, cycle: NaiveDate) -> i64 {
    sqlx::query_scalar("SELECT calculations FROM cycle_state WHERE customer_id = $1 AND cycle = $2")
        .bind(customer)
        .bind(cycle)
        .fetch_one(pool)
        .await
        .expect("the cycle was calculated")
}

/// The advisory lock that serializes the work on one cycle (see
/// shared/src/adapters/totals.rs).
fn lock_key(customer: i64, cycle: NaiveDate) -> String {
    format!("totals:{customer}:{cycle}")
}

/// Sessions of this database waiting for the cycle's lock.
async fn waiting_for_lock(pool: &PgPool, customer: i64, cycle: NaiveDate) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l
         WHERE l.locktype = 'advisory' AND NOT l.granted
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)",
    )
    .bind(lock_key(customer, cycle))
    .fetch_one(pool)
    .await
    .expect("read pg_locks")
}

/// The task's step attempts: (message id, step, outcome, error, started, finished).
type Attempt = (
    String,
    String,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

async fn attempts(pool: &PgPool, task_id: &str) -> Vec<Attempt> {
    sqlx::query_as(
        "SELECT message_id, step, outcome, error, started_at, finished_at FROM step_run
         WHERE task_id = $1 ORDER BY started_at, id",
    )
    .bind(task_id)
    .fetch_all(pool)
    .await
    .expect("read the step journal")
}

/// The customer's cycle after the burst: it is current, its totals are
/// what rating it in full gives, and they are `expected` (cdrs, rated).
async fn assert_one_calculation_s_totals(
    pool: &PgPool,
    customer: i64,
    cycle: NaiveDate,
    expected: (i64, i64),
) -> CycleTotals {
    let (stored, report) = calculate_totals_with(pool, customer, cycle, Recalculation::Incremental)
        .await
        .expect("read the stored totals");
    assert_eq!(
        report.calculation,
        Calculation::AlreadyCurrent,
        "no change is left pending after the burst"
    );
    let (full, _) = calculate_totals_with(pool, customer, cycle, Recalculation::Full)
        .await
        .expect("rate the cycle in full");
    assert_eq!(stored, full, "the burst's totals are one calculation's");
    assert_eq!((stored.cdr_count, stored.rated_cost_micros), expected);
    stored
}

#[tokio::test(flavor = "multi_thread")]
async fn seven_dispatches_of_one_cycle_at_once_and_again_calculate_at_most_twice_and_every_task_completes(
) {
    let clock = Instant::now();
    let stack = deploy().await;
    let deployed = clock.elapsed();
    let pool = &stack.db.pool;
    let period = yesterday();
    let acme = insert_business_customer(pool).await;
    let globex = insert_customer_on_plan(pool, "Globex", "business").await;
    // 09:00 in Amsterdam on the period's day, whatever the season.
    let morning: DateTime<Utc> = format!("{period}T07:00:00Z").parse().unwrap();
    let cycle = cycle_of(morning, 1, chrono_tz::Europe::Amsterdam);
    let minute = chrono::Duration::minutes(1);

    // Globex's cycle was calculated once already: seven calls of 30 s.
    for i in 0..7 {
        call(
            pool,
            globex,
            "routit",
            &format!("globex-before-{i}"),
            morning + minute * i,
            30,
        )
        .await;
    }
    calculate_totals(pool, globex, cycle)
        .await
        .expect("the earlier calculation");
    assert_eq!(calculations(pool, globex, cycle).await, 1);

    // Then one run imports from seven carriers: Acme gets three calls of
    // under a minute from each (0.10 each), Globex two of over a minute
    // later in the day (0.20 each).
    for (k, provider) in PROVIDERS.iter().enumerate() {
        let k = k as i32;
        for i in 0..3 {
            let at = morning + minute * (3 * k + i);
            call(
                pool,
                acme,
                provider,
                &format!("acme-{provider}-{i}"),
                at,
                30 + i,
            )
            .await;
        }
        for i in 0..2 {
            let at = morning + chrono::Duration::hours(2) + minute * (2 * k + i);
            call(
                pool,
                globex,
                provider,
                &format!("globex-{provider}-{i}"),
                at,
                61 + i,
            )
            .await;
        }
    }

    let mut dispatches = tasks_and_dispatches(&stack, acme, "acme", 1, period, cycle).await;
    dispatches.extend(tasks_and_dispatches(&stack, globex, "globex", 101, period, cycle).await);
    let bodies: Vec<String> = dispatches.iter().map(|(_, _, body)| body.clone()).collect();
    // The cycles' lock is held here while the burst arrives, so that
    // calculations surely wait with their snapshots taken before the first
    // one commits (the case coalescing must get right), not only run one
    // after the other.
    let mut holder = pool.begin().await.unwrap();
    for customer in [acme, globex] {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(lock_key(customer, cycle))
            .execute(&mut *holder)
            .await
            .unwrap();
    }
    // All fourteen at once, then the same fourteen again (a redelivery of
    // each: same envelope ids).
    let burst = Instant::now();
    stack.send_batches("TotalsQueueUrl", &bodies).await;
    stack.send_batches("TotalsQueueUrl", &bodies).await;
    // Two waiting calculations, of either cycle: the emulator may give all
    // of one invocation's concurrent records to one cycle, and start no
    // other invocation while they wait, so two of each could never come.
    wait_for(
        "two calculations to wait for their cycle's lock",
        TASKS_TIMEOUT,
        || async {
            let acme_waiting = waiting_for_lock(pool, acme, cycle).await;
            let globex_waiting = waiting_for_lock(pool, globex, cycle).await;
            Ok((acme_waiting + globex_waiting >= 2).then_some(()))
        },
    )
    .await
    .unwrap();
    holder.rollback().await.unwrap();

    let mut finished = BTreeMap::new();
    for (task_id, _, _) in &dispatches {
        finished.insert(
            task_id.clone(),
            stack.finished_task(task_id, TASKS_TIMEOUT).await,
        );
    }
    let tasks_done = burst.elapsed();
    wait_for("the totals queue to drain", DRAIN_TIMEOUT, || async {
        Ok((stack.queue_depth("TotalsQueueUrl").await == 0).then_some(()))
    })
    .await
    .unwrap();
    let drained = burst.elapsed();

    // Every task completed once, after its own GenerateInvoice, and the
    // duplicates did not count on it.
    let mut full_chains: BTreeMap<&str, i64> = BTreeMap::new();
    for (task_id, dispatch_id, _) in &dispatches {
        let task = stack.task(task_id).await.expect("the task is still there");
        assert_eq!(
            (task.status, task.outstanding, task.failed_ids.len()),
            (TaskStatus::Completed, 0, 0),
            "{task:?}"
        );
        assert_eq!(
            task.finished_at, finished[task_id].finished_at,
            "a duplicate changed the finished task {task_id}"
        );
        let done = task.finished_at.expect("a finished task has a time");
        let runs = attempts(pool, task_id).await;
        let completed: Vec<&Attempt> = runs
            .iter()
            .filter(|a| a.2.as_deref() == Some("completed"))
            .collect();
        let steps: Vec<&str> = completed.iter().map(|a| a.1.as_str()).collect();
        assert!(
            steps == CHAIN || steps == SHORT_CHAIN,
            "each step of {task_id}'s chain ran once, in order, the backup and insights only after its own calculation: {runs:?}"
        );
        if steps == CHAIN {
            let customer = task_id.split('-').next().unwrap_or_default();
            *full_chains.entry(customer).or_default() += 1;
        }
        let invoice = *completed.last().expect("the chain ran");
        assert!(
            invoice.4 <= done && invoice.5.is_some_and(|end| done <= end),
            "{task_id} completed during its own GenerateInvoice ({done} not in {:?}..{:?})",
            invoice.4,
            invoice.5
        );
        assert!(
            runs.iter()
                .any(|a| &a.0 == dispatch_id && a.2.as_deref() == Some("duplicate")),
            "the second copy of {task_id}'s DispatchTotals was acknowledged as a duplicate: {runs:?}"
        );
        // Nothing failed and was retried: the only other attempts are
        // duplicates waiting for their first copy's claim.
        for (_, step, outcome, error, _, _) in &runs {
            match outcome.as_deref() {
                Some("completed" | "duplicate") => {}
                Some("retry")
                    if error
                        .as_deref()
                        .is_some_and(|e| e.contains("claimed by another invocation")) => {}
                other => panic!("{task_id}: {step} ended {other:?}: {error:?}"),
            }
        }
    }

    // At most two real calculations per cycle for the burst.
    let acme_calculations = calculations(pool, acme, cycle).await;
    let globex_calculations = calculations(pool, globex, cycle).await - 1;
    assert!(
        (1..=2).contains(&acme_calculations),
        "Acme's burst calculated {acme_calculations} times"
    );
    assert!(
        (1..=2).contains(&globex_calculations),
        "Globex's burst calculated {globex_calculations} times"
    );
    // Only the chains that calculated backed up and evaluated insights.
    assert_eq!(
        (
            full_chains.get("acme").copied(),
            full_chains.get("globex").copied()
        ),
        (Some(acme_calculations), Some(globex_calculations)),
        "one whole chain per calculation of the burst"
    );

    // One version of history and one invoice of each cycle, of the totals
    // a single calculation gives.
    for (customer, expected) in [(acme, (21, 2_100_000)), (globex, (21, 3_500_000))] {
        let (versions, history_rated): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), max((figures->>'rated_cost_micros')::bigint) FROM totals_history
             WHERE customer_id = $1 AND cycle = $2",
        )
        .bind(customer)
        .bind(cycle)
        .fetch_one(pool)
        .await
        .unwrap();
        let invoices: Vec<(String, i64)> = sqlx::query_as(
            "SELECT kind, rated_cost_micros FROM invoice WHERE customer_id = $1 AND cycle = $2",
        )
        .bind(customer)
        .bind(cycle)
        .fetch_all(pool)
        .await
        .unwrap();
        let totals = assert_one_calculation_s_totals(pool, customer, cycle, expected).await;
        assert_eq!(
            (versions, history_rated),
            (1, Some(totals.rated_cost_micros))
        );
        assert_eq!(
            invoices,
            vec![("invoice".to_string(), totals.rated_cost_micros)]
        );
    }

    let dead = stack.deployment.drain("TotalsDlqUrl").await.unwrap();
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM failed_message")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(failed, 0);

    eprintln!(
        "coalescing: deploy {deployed:?}, tasks finished {tasks_done:?} and queue drained {drained:?} after the burst; \
         calculations: Acme {acme_calculations}, Globex {globex_calculations}"
    );
    stack.finish().await.unwrap();
}
