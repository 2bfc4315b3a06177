//! `tick-bench`: a day's carrier exports through the deployed stack in the
//! emulator (issue 17, item 2). Seeds a fresh database with customers whose
//! cycles are some 20 days old and already rated, has the carrier simulator
//! serve the day's exports, sends sync-manager the schedule's event, and
//! measures the time until every affected cycle's draft invoice bills the
//! new CDRs, with each step's durations, postponements, pool waits, the
//! connections at peak and the dead letters; then checks every invoice
//! against one calculated from scratch. See bench/README.md.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tem_bench::db::{server_url, BenchDb};
use tem_bench::report::{load_average, print_json_summary};
use tem_bench::tick::run::{self, Alone, Connections, StepStats, Tick, APPLICATION};
use tem_bench::tick::seed::{self, Seeded, Spec, PROVIDERS};
use tem_bench::tick::verify::{self, Verification};
use tem_local::deployment::Deployment;
use tem_local::emulator::Emulator;

const TOKEN: &str = "tick-bench-token";

#[derive(Parser)]
#[command(
    name = "tick-bench",
    about = "A day's exports through the deployed stack in the emulator: from the schedule's event to the last draft invoice"
)]
struct Cli {
    /// Customers, each with subscriptions at every carrier.
    #[arg(long, default_value_t = 200)]
    customers: u32,
    /// Every n-th customer is on the rate plan with bundles (3: a third).
    #[arg(long, default_value_t = 3)]
    rate_plan_every: u32,
    /// Subscriptions of each customer at each of the 7 carriers.
    #[arg(long, default_value_t = 5)]
    subscriptions_per_provider: u32,
    /// CDRs already in each customer's cycle, rated before the tick.
    #[arg(long, default_value_t = 100_000)]
    cdrs_per_customer: u64,
    /// CDRs of the synced day, over all carriers' exports.
    #[arg(long, default_value_t = 50_000)]
    day_cdrs: u64,
    /// Days from a cycle's start to the synced day.
    #[arg(long, default_value_t = 20)]
    cycle_age_days: i64,
    /// Cycle ages vary by up to this many days either side, so start days
    /// vary (0: every cycle starts on the same day).
    #[arg(long, default_value_t = 2)]
    cycle_age_spread: i64,
    /// The connection budget of the stack (template parameter
    /// DatabaseMaxConnections: 30, 50, 100, 200 or 400).
    #[arg(long, default_value_t = 30)]
    tier: u32,
    /// Give up waiting for the invoices (and the tasks) after this long.
    #[arg(long, default_value_t = 600)]
    timeout_seconds: u64,
    /// How often the invoices are polled, milliseconds.
    #[arg(long, default_value_t = 250)]
    poll_ms: u64,
    /// Cycles rated (and verified) at once in the benchmark's own process.
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// COPY streams loading the CDRs at once.
    #[arg(long, default_value_t = 2)]
    load_streams: usize,
    #[arg(long, default_value_t = 20_261_206)]
    seed: u64,
    /// Deploy the debug build of the functions (scripts/build.sh), not the
    /// native release build (scripts/build.sh --release --native).
    #[arg(long)]
    debug_functions: bool,
    /// The stack's name in the emulator (replaced if it exists).
    #[arg(long, default_value = "tem-tick")]
    stack: String,
    /// PostgreSQL server [default: $DATABASE_URL, else
    /// postgres://postgres@127.0.0.1:5432/postgres]; a fresh database
    /// tem_bench_* is created on it and dropped at the end.
    #[arg(long)]
    database_url: Option<String>,
    /// Skip checking every invoice against one calculated from scratch.
    #[arg(long)]
    no_verify: bool,
    /// Keep the stack and the database afterwards.
    #[arg(long)]
    keep: bool,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
struct Goal {
    goal: String,
    actual: String,
    target: String,
    met: bool,
    margin: String,
}

#[derive(Serialize)]
struct Summary {
    spec: Spec,
    tier: u32,
    build: String,
    load_average_start: String,
    load_average_end: String,
    database: String,
    deploy_seconds: f64,
    seeded: Seeded,
    tick: Tick,
    invoice_seconds_p50: Option<f64>,
    invoice_seconds_p95: Option<f64>,
    steps: Vec<StepStats>,
    postponements: i64,
    pool_waits: i64,
    retries: i64,
    connections: Connections,
    dead_letters: std::collections::BTreeMap<String, i64>,
    one_chain_alone: Option<Alone>,
    verification: Option<Verification>,
    goals: Vec<Goal>,
    all_goals_met: bool,
    notes: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    tem_bench::report::init_tracing();
    let cli = Cli::parse();
    let clock_start = Instant::now();
    let load_average_start = load_average();
    let build = if cli.debug_functions {
        "debug"
    } else {
        "native-release"
    };
    // Which zips the stack deploys (tem_local::emulator::Emulator::build_args).
    std::env::set_var("EMULATOR_BUILD", build);
    let period = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    let spec = Spec {
        customers: cli.customers,
        rate_plan_every: cli.rate_plan_every,
        subscriptions_per_provider: cli.subscriptions_per_provider,
        cdrs_per_customer: cli.cdrs_per_customer,
        day_cdrs: cli.day_cdrs,
        cycle_age_days: cli.cycle_age_days,
        cycle_age_spread: cli.cycle_age_spread,
        period,
        seed: cli.seed,
        parallel: cli.parallel,
    };
    println!(
        "== tick-bench: {} customers x {} CDRs already rated, {} CDRs of {period} from {} carriers, tier {} ({build} functions); load average {load_average_start} ==",
        spec.customers,
        spec.cdrs_per_customer,
        spec.day_cdrs,
        PROVIDERS.len(),
        cli.tier
    );

    println!("==> emulator, database, carrier simulator");
    let emulator = Emulator::start()?;
    let server = cli.database_url.clone().unwrap_or_else(server_url);
    let db = BenchDb::create(&server).await?;
    // The benchmark's own connections carry its application name, so the
    // connection count leaves them out.
    db.pool.close().await;
    let options: PgConnectOptions = db
        .url
        .parse::<PgConnectOptions>()
        .context("the benchmark database's URL")?
        .application_name(APPLICATION);
    let pool = PgPoolOptions::new()
        .max_connections((cli.parallel * 3 + 4) as u32)
        .connect_with(options)
        .await
        .context("connect to the benchmark database")?;
    println!("    {} on {}", db.name, emulator.endpoint);
    let simulator = provider_sim::start(emulator.serve_addr(), TOKEN).await?;
    let simulator_base = emulator.for_functions(&format!("http://{}", simulator.addr));

    println!(
        "==> build ({build}) and deploy infra/template.yaml as {} with DatabaseMaxConnections={}",
        cli.stack, cli.tier
    );
    let deploy_clock = Instant::now();
    tem_local::stack::Stack::remove_existing(&emulator, &cli.stack).await?;
    let deployment = Deployment::create(
        &emulator,
        &cli.stack,
        &emulator.for_functions(&db.url),
        pool.clone(),
        &[("DatabaseMaxConnections", cli.tier.to_string())],
    )
    .await?;
    let deploy_seconds = deploy_clock.elapsed().as_secs_f64();
    println!("    {deploy_seconds:.1} s");

    let result = measure(
        &cli,
        &spec,
        &db,
        &pool,
        &deployment,
        &simulator_base,
        deploy_seconds,
        build,
        load_average_start,
    )
    .await;

    if cli.keep {
        println!(
            "kept: stack {} in the emulator, database {} ({})",
            cli.stack, db.name, db.url
        );
    } else {
        if let Err(e) = deployment.stack.delete().await {
            eprintln!("could not delete the stack: {e:#}");
        }
        pool.close().await;
        if let Err(e) = db.drop_database().await {
            eprintln!("could not drop the database: {e:#}");
        }
    }
    drop(simulator);
    let summary = result?;
    println!("(whole run {:.0} s)", clock_start.elapsed().as_secs_f64());
    if !summary.all_goals_met {
        std::process::exit(1);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    cli: &Cli,
    spec: &Spec,
    db: &BenchDb,
    pool: &sqlx::PgPool,
    deployment: &Deployment,
    simulator_base: &str,
    deploy_seconds: f64,
    build: &str,
    load_average_start: String,
) -> Result<Summary> {
    println!("==> catalog: customers, subscriptions, rate plan, one sync profile per carrier");
    for provider in PROVIDERS {
        deployment
            .put_secret(
                &format!("{}/{provider}/tick", deployment.secrets_prefix),
                &json!({ "token": TOKEN }).to_string(),
            )
            .await?;
    }
    let prefix = deployment.secrets_prefix.clone();
    let (customers, profile_ids, subscriptions) =
        seed::catalog(pool, spec, simulator_base, |p| format!("{prefix}/{p}/tick")).await?;
    println!(
        "    {} customers ({} on the rate plan), {subscriptions} subscriptions, {} profiles, cycle start days {:?}",
        customers.len(),
        customers.iter().filter(|c| c.on_plan).count(),
        profile_ids.len(),
        customers
            .iter()
            .map(|c| c.start_day)
            .collect::<std::collections::BTreeSet<_>>()
    );
    println!(
        "==> {} CDRs already in the cycles (COPY, {} streams)",
        spec.cdrs_per_customer * u64::from(spec.customers),
        cli.load_streams
    );
    let (load_seconds, vacuum_seconds) =
        seed::cdrs(pool, spec, &customers, cli.load_streams).await?;
    println!("    loaded in {load_seconds:.1} s, VACUUM (ANALYZE) {vacuum_seconds:.1} s");
    println!(
        "==> every cycle rated once (calculation, history, insights, draft invoice; {} at once)",
        spec.parallel
    );
    let (rate_seconds, full_calculations) = seed::rate(pool, &customers, spec.parallel).await?;
    let marks_left: i64 = sqlx::query_scalar("SELECT count(*) FROM cycle_change")
        .fetch_one(pool)
        .await?;
    println!(
        "    {rate_seconds:.1} s, {full_calculations} full calculations, {marks_left} marks left"
    );
    // The tick should not pay for the seeding's dirty buffers.
    if let Err(e) = sqlx::query("CHECKPOINT").execute(pool).await {
        println!("    CHECKPOINT skipped: {e}");
    }
    let seeded = Seeded {
        customers: customers.clone(),
        profile_ids,
        subscriptions,
        load_seconds,
        vacuum_seconds,
        rate_seconds,
        full_calculations,
        marks_left,
    };

    println!(
        "==> the simulator serves {} CDRs of {} over {} numbers per carrier",
        spec.day_cdrs,
        spec.period,
        spec.subscribers()
    );
    let http = reqwest::Client::new();
    for (provider, rows) in spec.rows_per_provider() {
        http.put(format!("{simulator_base}/_control/{provider}"))
            .json(&json!({ "rows": rows, "subscribers": spec.subscribers() }))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("set the simulator's {provider}"))?;
    }

    println!("==> the tick: the schedule's event to sync-manager (t0)");
    let clock = Instant::now();
    let sampler = run::Sampler::start(pool.clone(), db.name.clone(), clock);
    let tick = run::tick(
        deployment,
        pool,
        &customers,
        Duration::from_secs(cli.timeout_seconds),
        Duration::from_millis(cli.poll_ms),
        clock,
    )
    .await;
    let connections = sampler.stop().await;
    let tick = tick?;
    match tick.last_invoice_seconds {
        Some(s) => println!(
            "    sync-manager answered at {:.2} s ({} profiles sent); the last invoice at {s:.1} s; every task finished at {}",
            tick.manager_seconds,
            tick.sent,
            tick.tasks_seconds.map_or("-".into(), |t| format!("{t:.1} s"))
        ),
        None => println!(
            "    TIMED OUT after {} s: {} of {} invoices current",
            cli.timeout_seconds,
            tick.invoice_seconds.len(),
            customers.len()
        ),
    }

    let steps = run::step_stats(pool, tick.t0).await?;
    let postponements: i64 = steps.iter().map(|s| s.postponed).sum();
    let pool_waits: i64 = steps.iter().map(|s| s.pool_waits).sum();
    let retries: i64 = steps.iter().map(|s| s.retried).sum();
    let dead_letters = run::dead_letters(deployment).await?;
    let dead_letter_count: i64 = dead_letters.values().sum();

    println!("==> one chain alone on the idle stack (DispatchTotals of one cycle to its invoice)");
    let alone = match run::one_chain_alone(deployment, pool, &customers[0], Duration::from_secs(60))
        .await
    {
        Ok(alone) => {
            println!("    {:.2} s", alone.seconds);
            Some(alone)
        }
        Err(e) => {
            println!("    failed: {e:#}");
            None
        }
    };

    let verification = if cli.no_verify {
        None
    } else {
        println!(
            "==> every affected invoice against one calculated from scratch ({} cycles)",
            customers.len()
        );
        let v = verify::verify(pool, &customers, spec.parallel).await?;
        println!("    {} of {} equal ({:.0} s)", v.equal, v.cycles, v.seconds);
        for d in v.differences.iter().take(10) {
            println!("    DIFFERS: {d}");
        }
        Some(v)
    };

    let mut invoice_times: Vec<f64> = tick.invoice_seconds.values().copied().collect();
    invoice_times.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        (!invoice_times.is_empty())
            .then(|| invoice_times[((invoice_times.len() - 1) as f64 * q).round() as usize])
    };
    let mut goals = Vec::new();
    let last = tick.last_invoice_seconds;
    goals.push(Goal {
        goal: "the last invoice within 60 s of the tick".into(),
        actual: last.map_or("timed out".into(), |s| format!("{s:.1} s")),
        target: "<= 60 s".into(),
        met: last.is_some_and(|s| s <= 60.0),
        margin: last.map_or("-".into(), |s| {
            format!("{:+.1} s ({:+.0}%)", 60.0 - s, (1.0 - s / 60.0) * 100.0)
        }),
    });
    goals.push(Goal {
        goal: format!("0 postponements on the {}-connection tier", cli.tier),
        actual: postponements.to_string(),
        target: "0".into(),
        met: postponements == 0,
        margin: if postponements == 0 {
            "0".into()
        } else {
            format!("{postponements} too many")
        },
    });
    if let Some(v) = &verification {
        goals.push(Goal {
            goal: "every invoice equal to one calculated from scratch".into(),
            actual: format!("{} of {}", v.equal, v.cycles),
            target: format!("{} of {}", v.cycles, v.cycles),
            met: v.differences.is_empty(),
            margin: format!("{} differ", v.differences.len()),
        });
    }
    goals.push(Goal {
        goal: "no message in a dead-letter queue".into(),
        actual: dead_letter_count.to_string(),
        target: "0".into(),
        met: dead_letter_count == 0,
        margin: format!("{dead_letter_count} dead letters"),
    });
    let all_goals_met = goals.iter().all(|g| g.met) && !tick.timed_out;
    let mut notes = Vec::new();
    if full_calculations != customers.len() {
        notes.push(format!(
            "only {full_calculations} of {} first calculations were full ones",
            customers.len()
        ));
    }
    if marks_left != 0 {
        notes.push(format!(
            "{marks_left} change marks were left before the tick"
        ));
    }
    let summary = Summary {
        spec: spec.clone(),
        tier: cli.tier,
        build: build.to_string(),
        load_average_start,
        load_average_end: load_average(),
        database: db.name.clone(),
        deploy_seconds,
        seeded: Seeded {
            customers: Vec::new(),
            ..seeded
        },
        invoice_seconds_p50: quantile(0.5),
        invoice_seconds_p95: quantile(0.95),
        tick,
        steps,
        postponements,
        pool_waits,
        retries,
        connections,
        dead_letters,
        one_chain_alone: alone,
        verification,
        goals,
        all_goals_met,
        notes,
    };
    print_report(&summary);
    if let Some(path) = &cli.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(summary)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

fn print_report(s: &Summary) {
    println!();
    println!(
        "== tick-bench: {} customers x {} CDRs, {} new CDRs of {}, tier {}, {} functions ==",
        s.spec.customers, s.spec.cdrs_per_customer, s.spec.day_cdrs, s.spec.period, s.tier, s.build
    );
    println!(
        "  load average {} at the start, {} at the end",
        s.load_average_start, s.load_average_end
    );
    println!(
        "  seeding: load {:.0} s, vacuum {:.0} s, rating {:.0} s; deploy {:.0} s",
        s.seeded.load_seconds, s.seeded.vacuum_seconds, s.seeded.rate_seconds, s.deploy_seconds
    );
    println!(
        "  the last invoice {} s after the tick (invoices p50 {} s, p95 {} s); every task finished at {} s; sync-manager answered at {:.2} s",
        opt(s.tick.last_invoice_seconds),
        opt(s.invoice_seconds_p50),
        opt(s.invoice_seconds_p95),
        opt(s.tick.tasks_seconds),
        s.tick.manager_seconds
    );
    println!("  tasks: {:?}", s.tick.tasks);
    println!();
    println!(
        "  {:<22} {:>6} {:>5} {:>5} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8}",
        "step (s after t0)",
        "runs",
        "post",
        "retry",
        "pool",
        "p50 s",
        "p95 s",
        "max s",
        "first",
        "last",
        "wait p50",
        "wait p95",
        "wait max"
    );
    for st in &s.steps {
        println!(
            "  {:<22} {:>6} {:>5} {:>5} {:>5} {:>7.3} {:>7.3} {:>7.3} {:>7.1} {:>7.1} {:>8} {:>8} {:>8}",
            st.step,
            st.attempts,
            st.postponed,
            st.retried,
            st.pool_waits,
            st.p50,
            st.p95,
            st.max,
            st.first_start,
            st.last_end,
            opt(st.wait_p50),
            opt(st.wait_p95),
            opt(st.wait_max)
        );
    }
    println!(
        "  (runs: attempts in step_run; post: postponed; pool: attempts whose error is a pool wait; wait: from the end of the attempt that sent the message to the first attempt's start)"
    );
    println!();
    println!(
        "  postponements {}, pool waits {}, retries {}, connections at peak {} ({} active; at {:.1} s; {} samples), dead letters {}",
        s.postponements,
        s.pool_waits,
        s.retries,
        s.connections.peak,
        s.connections.peak_active,
        s.connections.peak_at_seconds,
        s.connections.samples,
        s.dead_letters.values().sum::<i64>()
    );
    if let Some(a) = &s.one_chain_alone {
        let hops: Vec<String> = a
            .steps
            .iter()
            .map(|(step, wait, run)| format!("{step} wait {wait:.3} + run {run:.3}"))
            .collect();
        println!(
            "  one chain alone: {:.2} s ({})",
            a.seconds,
            hops.join("; ")
        );
    }
    for note in &s.notes {
        println!("  note: {note}");
    }
    println!("goals:");
    for g in &s.goals {
        println!(
            "  [{}] {:<52} actual {:<12} target {:<12} margin {}",
            if g.met { "met   " } else { "MISSED" },
            g.goal,
            g.actual,
            g.target,
            g.margin
        );
    }
    print_json_summary(s);
}
