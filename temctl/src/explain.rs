//! `temctl explain --cdr ID`: how one CDR was priced by the last totals
//! calculation of its cycle, and whether those totals are current.

use std::io::{self, Write};

use clap::Args;
use tem_shared::adapters::billing::explain::explain_cdr;
use tem_shared::billing::euros;
use tem_shared::billing::explain::{CdrExplanation, CdrRef, PricingDetail};
use tem_shared::billing::rating::Rate;
use tem_shared::cdr::Kind;

use crate::db;
use crate::error::CliError;

/// Arguments of `temctl explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The CDR: PROVIDER:EXTERNAL_ID (e.g. routit:RT25000000001), or its
    /// numeric id (found by reading the whole CDR table; the key is
    /// instant).
    #[arg(long, value_name = "ID")]
    pub cdr: String,
    /// Print the explanation as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: ExplainArgs) -> Result<(), CliError> {
    // A malformed reference is refused before anything connects.
    let cdr: CdrRef = args.cdr.parse()?;
    let url = db::url_from_env()?;
    let db = db::open(&url, 1).await?;
    db.check_schema().await?;
    let explanation = explain_cdr(&db.pool, &cdr).await?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &explanation).map_err(io::Error::from)?;
        writeln!(out)?;
    } else {
        out.write_all(render(&explanation).as_bytes())?;
    }
    Ok(())
}

fn money(micros: i64) -> String {
    format!("{} EUR ({micros} micro-euros)", euros(micros))
}

fn kind_of(kind: &str) -> Kind {
    match kind {
        "voice" => Kind::Voice,
        "sms" => Kind::Sms,
        "mms" => Kind::Mms,
        "data" => Kind::Data,
        _ => Kind::Service,
    }
}

/// The rate's figures that apply to a CDR of `kind`.
fn rate_figures(rate: &Rate, kind: Kind, increments: Option<&str>) -> String {
    let zone = rate.zone.map_or("any", |z| z.as_str());
    let price = match kind {
        Kind::Voice => format!(
            "connect fee {}, {} per minute, increments {}",
            rate.connect_fee_micros,
            rate.price_per_minute_micros,
            increments.unwrap_or("?")
        ),
        Kind::Data => format!(
            "{} per data unit, increments of {}",
            rate.price_per_unit_micros,
            increments.unwrap_or("?")
        ),
        Kind::Sms | Kind::Mms => format!("{} per message", rate.price_per_message_micros),
        Kind::Service => "the provider cost".to_string(),
    };
    format!(
        "rate '{}': {} in zone {zone}, prefix '{}'; {price} (micro-euros)",
        rate.id,
        rate.kind.as_str(),
        rate.prefix
    )
}

fn render_pricing(out: &mut String, kind: Kind, pricing: &PricingDetail) {
    match &pricing.rate {
        Some(rate) => out.push_str(&format!(
            "{}\n",
            rate_figures(rate, kind, pricing.increments.as_deref())
        )),
        None if pricing.unrated => {
            out.push_str("no rate of the plan matches: unrated, priced at the provider cost\n")
        }
        None => out.push_str("no rate applies: priced at the provider cost\n"),
    }
    out.push_str(&format!(
        "billed {} {}, of which bundles covered {} {}\n",
        pricing.billed_quantity, pricing.unit, pricing.covered_quantity, pricing.unit
    ));
    for share in &pricing.bundles {
        if share.covered > 0 {
            out.push_str(&format!(
                "  bundle '{}' ({}, {} {} per cycle): covered {} {}, {} left after this CDR\n",
                share.id,
                share.scope,
                share.allowance,
                pricing.unit,
                share.covered,
                pricing.unit,
                share.left
            ));
        } else {
            out.push_str(&format!(
                "  bundle '{}' ({}, {} {} per cycle): used up\n",
                share.id, share.scope, share.allowance, pricing.unit
            ));
        }
    }
    if let Some(arithmetic) = &pricing.arithmetic {
        out.push_str(&format!("arithmetic: {arithmetic} micro-euros\n"));
    }
    out.push_str(&format!(
        "rated cost: {}{}\n",
        money(pricing.rated_cost_micros),
        if pricing.unrated { " (unrated)" } else { "" }
    ));
}

/// The explanation for people.
fn render(e: &CdrExplanation) -> String {
    let c = &e.cdr;
    let kind = kind_of(&c.kind);
    let quantity = match kind {
        Kind::Voice => format!("{} s", c.duration_seconds),
        Kind::Data => format!("{} bytes", c.volume_bytes),
        _ => format!("{} units", c.units),
    };
    let mut out = format!(
        "CDR {}:{} (id {})\n  {} {}, zone {}, to '{}', {quantity}, started {} UTC, subscription {}\n  provider cost {}\n",
        c.provider,
        c.external_id,
        c.id,
        c.kind,
        c.direction,
        c.roaming_zone,
        c.destination,
        c.started_at.format("%Y-%m-%d %H:%M:%S"),
        c.subscription,
        money(c.provider_cost_micros)
    );
    match (e.customer_id, e.cycle) {
        (Some(customer), Some(cycle)) => {
            let method = match (e.method.as_deref(), &e.rate_plan_id) {
                (Some("rate_plan"), Some(plan)) => format!("rate plan '{plan}'"),
                _ => "standard method (rated at the provider cost)".to_string(),
            };
            out.push_str(&format!("customer {customer}, cycle {cycle}, {method}\n"));
        }
        _ => out.push_str("no customer\n"),
    }
    if let Some(pricing) = &e.pricing {
        render_pricing(&mut out, kind, pricing);
    }
    out.push_str(&format!("totals: {}\n", e.status));
    out.push_str(&format!("explanation: {}\n", e.explanation));
    for warning in &e.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}
