//! GenerateInvoice: the invoice of one customer's billing cycle, from the
//! totals CalculateTotals wrote plus the rate plan's monthly fees.
//!
//! # Life of a cycle's invoice
//!
//! - **Open** (`now` < cycle end + grace; the end is the UTC bound of
//!   [`cycle_bounds`] in the customer's time zone): one draft invoice per
//!   (customer, cycle), rewritten on every run (same id, lines replaced).
//! - **Closed**: the first run makes that invoice final (creating it from
//!   the current totals if there was no draft). A final invoice never
//!   changes again; the database refuses it too.
//! - **Blocked**: a closed cycle whose customer lacks billing data (no
//!   billing details valid on the issue date, a required field missing, no
//!   seller details, no VAT category or rate) stays a draft with its
//!   `blocked_reason`, and the run succeeds with [`InvoiceOutcome::Blocked`]
//!   naming what is missing. Nothing is lost and nothing is retried in a
//!   loop: the step finishes, `temctl status` reports the blocked drafts,
//!   and the invoice becomes final once the data is there: `temctl apply`
//!   of sellers or billing details sends GenerateInvoice for the blocked
//!   drafts it may unblock, and the hourly finalisation sweep sends it for
//!   every closed draft anyway.
//! - **Late changes**: when the cycle's totals or fees no longer match what
//!   the final invoice and its earlier corrections billed together, a
//!   correction invoice (sequence 1, 2, ...) is created, final at once,
//!   whose lines are the differences per line (positive or negative). When
//!   nothing differs nothing is written, so repeating a run is harmless.
//!
//! # Lines
//!
//! One line per totals line (subscription, kind, zone) for its rated cost,
//! and for a customer with a rate plan one fee line per subscription
//! identifier active at the cycle start (`active_from` <= start date and
//! `active_to` open or >= start date) for the plan's `monthly_fee_micros`.
//! Every invoice satisfies total = sum of its lines = rated cost + fees;
//! this is checked here before anything is written and again by the
//! database at commit.
//!
//! # Finalisation
//!
//! When an invoice (or a correction, final at once) becomes final it is
//! issued ([`crate::billing::issue`]): its issue date is the finalisation's date in the customer's
//! time zone; the seller's and customer's details valid on that date
//! ([`crate::billing::parties`]) and each line's VAT category and the rate
//! valid on that date ([`crate::billing::vat`]) are recorded with it, with
//! its document amounts in cents ([`crate::billing::document::amounts`]);
//! and it takes the next number of its seller's gapless series
//! ([`crate::billing::numbering`]) as the last write before the commit. A
//! draft never has a number.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::billing::customer::{CustomerError, CustomerSettings};
use crate::billing::issue::{issue, prepare_issue};
use crate::billing::parties::{SellerDetails, StoredBuyer};
use crate::billing::rating::{monthly_fees, RatePlan};
use crate::billing::vat::RateBp;
use crate::cdr::cycle_bounds;
use crate::ports::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum InvoiceError {
    #[error(transparent)]
    Customer(#[from] CustomerError),
    #[error(
        "customer {customer} has no totals for cycle {cycle}; run CalculateTotals for it first"
    )]
    NoTotals { customer: i64, cycle: NaiveDate },
    #[error("a grace period of {0} puts the end of cycle {1} outside the calendar; configure a grace of days, not centuries")]
    BadGrace(Duration, NaiveDate),
    #[error("invoice of customer {customer} cycle {cycle} would be inconsistent: {reason}; recalculate the cycle's totals and run GenerateInvoice again")]
    Inconsistent {
        customer: i64,
        cycle: NaiveDate,
        reason: String,
    },
    #[error("an invoice has status {0:?}, which this build does not know (draft or final); deploy the build that wrote it")]
    UnknownStatus(String),
    #[error("database error: {0}")]
    Store(#[from] StoreError),
}

/// An invoice's `status` column (the database allows only these two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// Rewritten by every GenerateInvoice until the cycle's grace period ends.
    Draft,
    /// Never changed again; later changes become corrections.
    Final,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Final => "final",
        }
    }

    fn from_column(status: &str) -> Result<Self, InvoiceError> {
        match status {
            "draft" => Ok(InvoiceStatus::Draft),
            "final" => Ok(InvoiceStatus::Final),
            other => Err(InvoiceError::UnknownStatus(other.to_string())),
        }
    }
}

/// What one run did, for the step's log and output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum InvoiceOutcome {
    /// The cycle is open; its draft was created or rewritten.
    DraftWritten {
        invoice_id: i64,
        created: bool,
        rated_cost_micros: i64,
        fees_micros: i64,
        total_micros: i64,
        closes_at: DateTime<Utc>,
    },
    /// The cycle has closed and its invoice became final.
    Finalised {
        invoice_id: i64,
        /// False when no draft existed and the final was made at once.
        from_draft: bool,
        total_micros: i64,
        /// Its number in the seller's series.
        number: String,
    },
    /// Late changes after finalisation, billed as a correction invoice.
    CorrectionCreated {
        invoice_id: i64,
        correction_id: i64,
        sequence: i32,
        total_micros: i64,
        number: String,
    },
    /// The cycle has closed but the invoice cannot be issued: the customer
    /// or seller lacks billing data. The invoice stays a draft with the
    /// reason recorded (for a correction nothing is written: the next run
    /// computes it again); the finalisation sweep tries again every hour.
    Blocked {
        /// The cycle's invoice (sequence 0).
        invoice_id: i64,
        /// True when the blocked document is a correction of a final invoice.
        correction: bool,
        /// Each problem, naming its field and what to apply.
        missing: Vec<String>,
    },
    /// The final invoice and its corrections already bill the current totals.
    Unchanged { invoice_id: i64, corrections: i32 },
}

/// One invoice line. `zone` is the roaming zone of a usage line and empty
/// for a fee; (subscription, kind, zone) identifies a line within a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceLine {
    pub description: String,
    pub subscription: String,
    pub kind: String,
    pub zone: String,
    pub quantity: String,
    pub amount_micros: i64,
}

/// (subscription, kind, zone): a line's identity within a cycle.
pub type LineKey = (String, String, String);

impl InvoiceLine {
    fn key(&self) -> LineKey {
        (
            self.subscription.clone(),
            self.kind.clone(),
            self.zone.clone(),
        )
    }
}

/// A totals line as read from `totals_line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLine {
    pub subscription: String,
    pub kind: String,
    pub zone: String,
    pub cdr_count: i64,
    pub voice_seconds: i64,
    pub data_bytes: i64,
    pub messages: i64,
    pub rated_cost_micros: i64,
}

/// What a cycle is worth now: the lines an invoice made today would have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Billable {
    pub lines: Vec<InvoiceLine>,
    pub rated_cost_micros: i64,
    pub fees_micros: i64,
    pub total_micros: i64,
}

/// A cycle's totals as an invoice bills them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleUsage {
    pub rated_cost_micros: i64,
    /// The totals version an invoice records (`totals_calculated_at`).
    pub calculated_at: DateTime<Utc>,
    pub lines: Vec<UsageLine>,
}

/// The figures an invoice row records besides its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvoiceFigures {
    pub rated_cost_micros: i64,
    pub fees_micros: i64,
    pub total_micros: i64,
    pub totals_calculated_at: DateTime<Utc>,
}

/// Where invoices are kept (`adapters::billing::invoice` on PostgreSQL).
#[async_trait]
pub trait InvoiceStore: Send + Sync {
    /// Starts one GenerateInvoice run of a cycle. Runs of the same cycle
    /// wait for each other from here to the commit: two at once (a late
    /// import and the sweep) would otherwise both finalise, or both bill
    /// the same correction.
    async fn begin(
        &self,
        customer_id: i64,
        cycle: NaiveDate,
    ) -> Result<Box<dyn CycleInvoices>, StoreError>;
    /// The draft main invoices of cycles whose next cycle starts on or
    /// before `latest_next_start`, with their customer's time zone as
    /// stored, ordered by customer and cycle.
    async fn drafts_starting_next_by(
        &self,
        latest_next_start: NaiveDate,
    ) -> Result<Vec<(i64, NaiveDate, String)>, StoreError>;
}

/// One GenerateInvoice run of one cycle: what it writes commits together,
/// or not at all when it is dropped.
#[async_trait]
pub trait CycleInvoices: Send {
    /// The cycle's totals and their lines, of the same version; `None`
    /// when the cycle has no totals.
    async fn usage(&mut self) -> Result<Option<CycleUsage>, StoreError>;
    /// Per subscription identifier, how many of the customer's
    /// subscriptions were active at the cycle start.
    async fn fee_counts(&mut self) -> Result<BTreeMap<String, i64>, StoreError>;
    /// The cycle's invoice (sequence 0): its id and status as stored.
    async fn main_invoice(&mut self) -> Result<Option<(i64, String)>, StoreError>;
    /// What the final invoices (the invoice and its corrections) billed,
    /// summed per line.
    async fn billed_lines(&mut self) -> Result<BTreeMap<LineKey, i64>, StoreError>;
    /// How many corrections were billed, and the final invoices' total.
    async fn billed_totals(&mut self) -> Result<(i32, i64), StoreError>;
    /// Creates the cycle's invoice as a draft, without lines; its id.
    async fn create_draft(&mut self, figures: &InvoiceFigures) -> Result<i64, StoreError>;
    /// Sets a draft's figures and removes its lines.
    async fn rewrite_draft(
        &mut self,
        invoice_id: i64,
        figures: &InvoiceFigures,
    ) -> Result<(), StoreError>;
    /// Creates correction `sequence` as a draft, without lines; its id.
    async fn create_correction(
        &mut self,
        sequence: i32,
        figures: &InvoiceFigures,
    ) -> Result<i64, StoreError>;
    /// Adds `lines` to an invoice, numbered from 1 in their order.
    async fn insert_lines(
        &mut self,
        invoice_id: i64,
        lines: &[InvoiceLine],
    ) -> Result<(), StoreError>;
    /// The customer's billing details valid on `on` (the latest
    /// `valid_from` on or before it), as stored.
    async fn buyer_details(&mut self, on: NaiveDate) -> Result<Option<StoredBuyer>, StoreError>;
    /// The details of seller `seller` valid on `on`.
    async fn seller_details(
        &mut self,
        seller: &str,
        on: NaiveDate,
    ) -> Result<Option<SellerDetails>, StoreError>;
    /// The VAT rate `code` (`standard`, `reverse_charge`, ...) of
    /// `country` valid on `on`: its category as stored and its rate.
    async fn vat_rate(
        &mut self,
        country: &str,
        code: &str,
        on: NaiveDate,
    ) -> Result<Option<(String, RateBp)>, StoreError>;
    /// Records why a closed cycle's draft cannot become final.
    async fn block(
        &mut self,
        invoice_id: i64,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Takes the next number of `seller`'s series for `year` (0 for a
    /// series without years). It is consumed only if this run commits.
    async fn take_number(&mut self, seller: &str, year: i32) -> Result<i64, StoreError>;
    /// Makes a draft final with everything it was issued with: its lines'
    /// VAT (in line order), parties, number and amounts.
    async fn finalise(&mut self, invoice_id: i64, issue: &Issue) -> Result<(), StoreError>;
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

pub use crate::billing::issue::Issue;

fn plural(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn kind_label(kind: &str) -> &str {
    match kind {
        "voice" => "Calls",
        "sms" => "SMS",
        "mms" => "MMS",
        "data" => "Data",
        "service" => "Services",
        "fee" => "Monthly fee",
        other => other,
    }
}

fn zone_label(zone: &str) -> &str {
    match zone {
        "home" => "home",
        "eu" => "EU roaming",
        "world" => "world roaming",
        other => other,
    }
}

fn quantity(line: &UsageLine) -> String {
    match line.kind.as_str() {
        "voice" => format!(
            "{}, {} s",
            plural(line.cdr_count, "call", "calls"),
            line.voice_seconds
        ),
        "data" => format!(
            "{}, {} bytes",
            plural(line.cdr_count, "session", "sessions"),
            line.data_bytes
        ),
        "sms" | "mms" => plural(line.messages, "message", "messages"),
        _ => plural(line.cdr_count, "charge", "charges"),
    }
}

/// Usage first, in this order, then the fee: the order lines are printed in.
fn line_order(line: &InvoiceLine) -> (String, usize, String) {
    let rank = ["voice", "sms", "mms", "data", "service", "fee"]
        .iter()
        .position(|k| *k == line.kind)
        .unwrap_or(usize::MAX);
    (line.subscription.clone(), rank, line.zone.clone())
}

fn checked_sum<'a>(amounts: impl IntoIterator<Item = &'a i64>) -> Option<i64> {
    amounts
        .into_iter()
        .try_fold(0i64, |sum, amount| sum.checked_add(*amount))
}

/// The lines of a cycle: one per totals line, then a monthly fee per
/// subscription identifier active at the cycle start (`fee_counts`: how
/// many subscriptions of that identifier were).
pub fn billable(
    usage: &[UsageLine],
    plan: Option<&RatePlan>,
    fee_counts: &BTreeMap<String, i64>,
) -> Option<Billable> {
    let mut lines: Vec<InvoiceLine> = usage
        .iter()
        .map(|u| InvoiceLine {
            description: format!(
                "{}, {}: {}",
                kind_label(&u.kind),
                zone_label(&u.zone),
                u.subscription
            ),
            subscription: u.subscription.clone(),
            kind: u.kind.clone(),
            zone: u.zone.clone(),
            quantity: quantity(u),
            amount_micros: u.rated_cost_micros,
        })
        .collect();
    if let Some(plan) = plan.filter(|p| p.monthly_fee_micros != 0) {
        for (identifier, count) in fee_counts.iter().filter(|(_, n)| **n > 0) {
            let count_usize = usize::try_from(*count).unwrap_or(usize::MAX);
            lines.push(InvoiceLine {
                description: format!("Monthly fee {}: {identifier}", plan.name),
                subscription: identifier.clone(),
                kind: "fee".into(),
                zone: String::new(),
                quantity: if *count == 1 {
                    "1 month".into()
                } else {
                    format!("{count} subscriptions x 1 month")
                },
                amount_micros: monthly_fees(plan, count_usize),
            });
        }
    }
    lines.sort_by_key(line_order);
    let rated_cost_micros = checked_sum(usage.iter().map(|u| &u.rated_cost_micros))?;
    let fees_micros = checked_sum(
        lines
            .iter()
            .filter(|l| l.kind == "fee")
            .map(|l| &l.amount_micros),
    )?;
    Some(Billable {
        total_micros: rated_cost_micros.checked_add(fees_micros)?,
        lines,
        rated_cost_micros,
        fees_micros,
    })
}

/// The correction for a final cycle: per line, what it is worth now minus
/// what was billed for it so far (`billed`: sums over the final invoice and
/// earlier corrections). Lines that did not change are left out.
pub fn correction_lines(billed: &BTreeMap<LineKey, i64>, now: &Billable) -> Vec<InvoiceLine> {
    let current: BTreeMap<LineKey, &InvoiceLine> = now.lines.iter().map(|l| (l.key(), l)).collect();
    let mut lines = Vec::new();
    for (key, line) in &current {
        let before = billed.get(key).copied().unwrap_or(0);
        let difference = line.amount_micros.saturating_sub(before);
        if difference != 0 {
            lines.push(InvoiceLine {
                description: format!("Correction of {}", line.description),
                quantity: format!("now {}", line.quantity),
                amount_micros: difference,
                ..(*line).clone()
            });
        }
    }
    for ((subscription, kind, zone), before) in billed {
        let key = (subscription.clone(), kind.clone(), zone.clone());
        if *before != 0 && !current.contains_key(&key) {
            let what = if kind == "fee" {
                format!("{}: {subscription}", kind_label(kind))
            } else {
                format!("{}, {}: {subscription}", kind_label(kind), zone_label(zone))
            };
            lines.push(InvoiceLine {
                description: format!("Correction of {what}"),
                subscription: subscription.clone(),
                kind: kind.clone(),
                zone: zone.clone(),
                quantity: "now none".into(),
                amount_micros: before.saturating_neg(),
            });
        }
    }
    lines.sort_by_key(line_order);
    lines
}

/// The cycle's current worth and the totals version it was taken from.
async fn current_billable(
    run: &mut dyn CycleInvoices,
    customer_id: i64,
    cycle: NaiveDate,
    plan: Option<&RatePlan>,
) -> Result<(Billable, DateTime<Utc>), InvoiceError> {
    let usage = run.usage().await?.ok_or(InvoiceError::NoTotals {
        customer: customer_id,
        cycle,
    })?;
    let fee_counts = if plan.is_some() {
        run.fee_counts().await?
    } else {
        BTreeMap::new()
    };
    let inconsistent = |reason: String| InvoiceError::Inconsistent {
        customer: customer_id,
        cycle,
        reason,
    };
    let billable = billable(&usage.lines, plan, &fee_counts)
        .ok_or_else(|| inconsistent("its amounts overflow 64 bits".into()))?;
    if billable.rated_cost_micros != usage.rated_cost_micros {
        return Err(inconsistent(format!(
            "the totals lines sum to {} but the totals say {}",
            billable.rated_cost_micros, usage.rated_cost_micros
        )));
    }
    Ok((billable, usage.calculated_at))
}

/// Checks total = sum of lines = rated cost + fees before anything is written.
fn check(
    customer_id: i64,
    cycle: NaiveDate,
    lines: &[InvoiceLine],
    rated: i64,
    fees: i64,
    total: i64,
) -> Result<(), InvoiceError> {
    let lines_sum = checked_sum(lines.iter().map(|l| &l.amount_micros));
    if lines_sum != Some(total) || rated.checked_add(fees) != Some(total) {
        return Err(InvoiceError::Inconsistent {
            customer: customer_id,
            cycle,
            reason: format!("total {total}, lines sum {lines_sum:?}, rated {rated} + fees {fees}"),
        });
    }
    Ok(())
}

/// When a cycle closes: its end in the customer's time zone plus `grace`.
fn closing_time(cycle: NaiveDate, zone: Tz, grace: Duration) -> Option<DateTime<Utc>> {
    cycle_bounds(cycle, zone).1.checked_add_signed(grace)
}

/// Writes the cycle's draft, finalises it, or bills late changes as a
/// correction, depending on `now` and what exists (see the module docs).
pub async fn generate_invoice(
    invoices: &dyn InvoiceStore,
    customers: &dyn CustomerSettings,
    customer_id: i64,
    cycle: NaiveDate,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<InvoiceOutcome, InvoiceError> {
    let customer = customers.load(customer_id, cycle).await?;
    let closes_at =
        closing_time(cycle, customer.zone, grace).ok_or(InvoiceError::BadGrace(grace, cycle))?;
    let open = now < closes_at;

    let mut run = invoices.begin(customer_id, cycle).await?;
    let (now_worth, calculated_at) =
        current_billable(run.as_mut(), customer_id, cycle, customer.rate_plan()).await?;
    let main = match run.main_invoice().await? {
        Some((invoice_id, status)) => Some((invoice_id, InvoiceStatus::from_column(&status)?)),
        None => None,
    };

    let outcome = match main {
        Some((invoice_id, InvoiceStatus::Final)) => {
            bill_late_changes(
                run.as_mut(),
                customer_id,
                cycle,
                customer.zone,
                invoice_id,
                &now_worth,
                calculated_at,
                now,
            )
            .await?
        }
        existing => {
            let Billable {
                lines,
                rated_cost_micros: rated,
                fees_micros: fees,
                total_micros: total,
            } = &now_worth;
            check(customer_id, cycle, lines, *rated, *fees, *total)?;
            let figures = InvoiceFigures {
                rated_cost_micros: *rated,
                fees_micros: *fees,
                total_micros: *total,
                totals_calculated_at: calculated_at,
            };
            let invoice_id = match existing {
                Some((invoice_id, _)) => {
                    run.rewrite_draft(invoice_id, &figures).await?;
                    invoice_id
                }
                None => run.create_draft(&figures).await?,
            };
            run.insert_lines(invoice_id, lines).await?;
            if open {
                InvoiceOutcome::DraftWritten {
                    invoice_id,
                    created: existing.is_none(),
                    rated_cost_micros: *rated,
                    fees_micros: *fees,
                    total_micros: *total,
                    closes_at,
                }
            } else {
                match prepare_issue(run.as_mut(), customer_id, cycle, customer.zone, now, lines)
                    .await?
                {
                    Ok(prepared) => InvoiceOutcome::Finalised {
                        invoice_id,
                        from_draft: existing.is_some(),
                        total_micros: *total,
                        number: issue(run.as_mut(), invoice_id, prepared, now).await?,
                    },
                    Err(missing) => {
                        run.block(invoice_id, &missing.join("; "), now).await?;
                        tracing::warn!(customer_id, %cycle, ?missing, "invoice kept as a draft: billing data missing");
                        InvoiceOutcome::Blocked {
                            invoice_id,
                            correction: false,
                            missing,
                        }
                    }
                }
            }
        }
    };
    run.commit().await?;
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
async fn bill_late_changes(
    run: &mut dyn CycleInvoices,
    customer_id: i64,
    cycle: NaiveDate,
    zone: Tz,
    invoice_id: i64,
    now_worth: &Billable,
    calculated_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<InvoiceOutcome, InvoiceError> {
    let billed = run.billed_lines().await?;
    let (corrections, billed_total) = run.billed_totals().await?;

    let lines = correction_lines(&billed, now_worth);
    if lines.is_empty() {
        return Ok(InvoiceOutcome::Unchanged {
            invoice_id,
            corrections,
        });
    }
    let overflow = || InvoiceError::Inconsistent {
        customer: customer_id,
        cycle,
        reason: "the correction's amounts overflow 64 bits".into(),
    };
    let fees = checked_sum(
        lines
            .iter()
            .filter(|l| l.kind == "fee")
            .map(|l| &l.amount_micros),
    )
    .ok_or_else(overflow)?;
    let rated = checked_sum(
        lines
            .iter()
            .filter(|l| l.kind != "fee")
            .map(|l| &l.amount_micros),
    )
    .ok_or_else(overflow)?;
    let total = rated.checked_add(fees).ok_or_else(overflow)?;
    check(customer_id, cycle, &lines, rated, fees, total)?;
    // Together with everything billed before, the correction must bill
    // exactly what the cycle is worth now.
    if billed_total.checked_add(total) != Some(now_worth.total_micros) {
        return Err(InvoiceError::Inconsistent {
            customer: customer_id,
            cycle,
            reason: format!(
                "billed {billed_total} before plus correction {total} is not the current {}",
                now_worth.total_micros
            ),
        });
    }
    let sequence = corrections + 1;
    // A correction is final at once, so it is issued now or not written:
    // its lines are computed again by the next run.
    let prepared = match prepare_issue(run, customer_id, cycle, zone, now, &lines).await? {
        Ok(prepared) => prepared,
        Err(missing) => {
            tracing::warn!(customer_id, %cycle, ?missing, "correction not issued: billing data missing");
            return Ok(InvoiceOutcome::Blocked {
                invoice_id,
                correction: true,
                missing,
            });
        }
    };
    // Written as a draft and finalised after its lines, because the
    // database refuses lines for an invoice that is already final.
    let correction_id = run
        .create_correction(
            sequence,
            &InvoiceFigures {
                rated_cost_micros: rated,
                fees_micros: fees,
                total_micros: total,
                totals_calculated_at: calculated_at,
            },
        )
        .await?;
    run.insert_lines(correction_id, &lines).await?;
    let number = issue(run, correction_id, prepared, now).await?;
    Ok(InvoiceOutcome::CorrectionCreated {
        invoice_id,
        correction_id,
        sequence,
        total_micros: total,
        number,
    })
}

/// The (customer, cycle) pairs whose invoice is still a draft although the
/// cycle has closed (`now` >= cycle end + `grace`), ordered by customer and
/// cycle: the scheduled sweep sends GenerateInvoice for each. A customer
/// whose time zone does not parse is left out with a warning; its own
/// GenerateInvoice fails with the reason.
pub async fn cycles_due_for_finalisation(
    invoices: &dyn InvoiceStore,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<Vec<(i64, NaiveDate)>, InvoiceError> {
    // A cycle's end is local midnight of its next start, at most 14 hours
    // before UTC midnight of that date, so only drafts whose next start is
    // on or before the day after `now - grace` can have closed.
    let latest_next_start = now
        .checked_sub_signed(grace)
        .and_then(|t| t.date_naive().succ_opt())
        .unwrap_or(NaiveDate::MAX);
    let rows = invoices.drafts_starting_next_by(latest_next_start).await?;
    let mut due = Vec::new();
    for (customer_id, cycle, zone_name) in rows {
        let Ok(zone) = zone_name.parse::<Tz>() else {
            tracing::warn!(
                customer_id,
                %cycle,
                zone = %zone_name,
                "draft invoice left out of the finalisation sweep: the customer's time zone is not an IANA name"
            );
            continue;
        };
        if closing_time(cycle, zone, grace).is_some_and(|closes| now >= closes) {
            due.push((customer_id, cycle));
        }
    }
    Ok(due)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(subscription: &str, kind: &str, zone: &str, count: i64, rated: i64) -> UsageLine {
        UsageLine {
            subscription: subscription.into(),
            kind: kind.into(),
            zone: zone.into(),
            cdr_count: count,
            voice_seconds: if kind == "voice" { 60 * count } else { 0 },
            data_bytes: 0,
            messages: if kind == "sms" { count } else { 0 },
            rated_cost_micros: rated,
        }
    }

    fn plan(fee: i64) -> RatePlan {
        serde_json::from_value(serde_json::json!({
            "id": "p", "name": "Business", "unit_bytes": 1_048_576, "monthly_fee_micros": fee
        }))
        .unwrap()
    }

    #[test]
    fn lines_are_usage_then_the_fee_per_subscription_and_add_up() {
        let fees: BTreeMap<String, i64> = [
            ("+31611111111".to_string(), 1),
            ("+31622222222".to_string(), 2),
        ]
        .into_iter()
        .collect();
        let worth = billable(
            &[
                usage("+31611111111", "sms", "home", 2, 300),
                usage("+31611111111", "voice", "eu", 1, 1_000),
            ],
            Some(&plan(5_000_000)),
            &fees,
        )
        .unwrap();
        let kinds: Vec<(&str, &str)> = worth
            .lines
            .iter()
            .map(|l| (l.subscription.as_str(), l.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("+31611111111", "voice"),
                ("+31611111111", "sms"),
                ("+31611111111", "fee"),
                ("+31622222222", "fee"),
            ]
        );
        // 1,300 usage + 3 x 5,000,000 fees.
        assert_eq!(
            (
                worth.rated_cost_micros,
                worth.fees_micros,
                worth.total_micros
            ),
            (1_300, 15_000_000, 15_001_300)
        );
        assert_eq!(worth.lines[0].quantity, "1 call, 60 s");
        assert_eq!(worth.lines[1].quantity, "2 messages");
        assert_eq!(worth.lines[3].quantity, "2 subscriptions x 1 month");
    }

    #[test]
    fn without_a_plan_or_with_a_zero_fee_there_are_no_fee_lines() {
        let fees: BTreeMap<String, i64> = [("+31611111111".to_string(), 1)].into_iter().collect();
        let u = [usage("+31611111111", "voice", "home", 1, 10)];
        assert_eq!(billable(&u, None, &fees).unwrap().lines.len(), 1);
        assert_eq!(billable(&u, Some(&plan(0)), &fees).unwrap().lines.len(), 1);
    }

    #[test]
    fn a_correction_bills_changed_new_and_vanished_lines_by_their_difference() {
        let now = billable(
            &[
                usage("+31611111111", "voice", "home", 3, 3_000),
                usage("+31611111111", "sms", "home", 1, 100),
                usage("+31622222222", "data", "eu", 1, 500),
            ],
            None,
            &BTreeMap::new(),
        )
        .unwrap();
        let key = |s: &str, k: &str, z: &str| (s.to_string(), k.to_string(), z.to_string());
        let billed: BTreeMap<LineKey, i64> = [
            (key("+31611111111", "voice", "home"), 2_000),
            (key("+31611111111", "sms", "home"), 100),
            (key("+31633333333", "voice", "world"), 700),
        ]
        .into_iter()
        .collect();
        let lines = correction_lines(&billed, &now);
        let got: Vec<(&str, &str, i64)> = lines
            .iter()
            .map(|l| (l.subscription.as_str(), l.kind.as_str(), l.amount_micros))
            .collect();
        // voice 3,000 - 2,000; data new 500; the world line vanished: -700;
        // the SMS line is unchanged and left out.
        assert_eq!(
            got,
            vec![
                ("+31611111111", "voice", 1_000),
                ("+31622222222", "data", 500),
                ("+31633333333", "voice", -700),
            ]
        );
        assert_eq!(lines[2].quantity, "now none");
        assert!(lines[0].description.starts_with("Correction of Calls"));
    }

    #[test]
    fn nothing_to_correct_when_everything_was_billed() {
        let now = billable(
            &[usage("+31611111111", "voice", "home", 3, 3_000)],
            None,
            &BTreeMap::new(),
        )
        .unwrap();
        let billed: BTreeMap<LineKey, i64> = now.lines.iter().map(|l| (l.key(), 3_000)).collect();
        assert!(correction_lines(&billed, &now).is_empty());
    }
}
