//! The findings as operators work them: listed, disputed with the carrier,
//! then resolved as credited (with the amount recovered) or written off;
//! and the dispute report sent to a carrier (CSV). The status rules live
//! here; the store is a narrow trait ([`FindingStore`], PostgreSQL in
//! `adapters::audit`) whose update is conditional on the status read, so
//! two operators working one finding cannot both resolve it.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::FindingKind;
use crate::costs::ChargeClass;
use crate::ports::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Disputed,
    Credited,
    WrittenOff,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Open,
        Status::Disputed,
        Status::Credited,
        Status::WrittenOff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Disputed => "disputed",
            Status::Credited => "credited",
            Status::WrittenOff => "written_off",
        }
    }

    pub fn is_resolved(self) -> bool {
        matches!(self, Status::Credited | Status::WrittenOff)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown status {s:?}; use open, disputed, credited or written_off")
            })
    }
}

/// A finding as stored, with its invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredFinding {
    pub id: i64,
    pub carrier_invoice_id: i64,
    pub provider: String,
    pub account: String,
    pub invoice_number: String,
    pub period_start: NaiveDate,
    /// Exclusive.
    pub period_end: NaiveDate,
    pub kind: FindingKind,
    /// Empty for a finding of the file as a whole.
    pub subscription: String,
    pub class: Option<ChargeClass>,
    pub billed_micros: i64,
    pub expected_micros: i64,
    pub file_key: String,
    pub lines: Vec<u32>,
    pub cdr_count: Option<u64>,
    pub cdr_from: Option<DateTime<Utc>>,
    pub cdr_to: Option<DateTime<Utc>>,
    pub status: Status,
    pub recovered_micros: i64,
    pub note: Option<String>,
    pub superseded_by: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub disputed_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
}

impl StoredFinding {
    /// What a successful dispute recovers: the overcharge, never negative.
    pub fn overcharge_micros(&self) -> i64 {
        (self.billed_micros - self.expected_micros).max(0)
    }

    /// The SQL that lists the CDRs the finding's expected usage was summed
    /// over: the evidence an operator can run (`temctl explain` names a
    /// single CDR).
    pub fn cdr_query(&self) -> Option<String> {
        let (Some(from), Some(to), Some(class)) = (self.cdr_from, self.cdr_to, self.class) else {
            return None;
        };
        if class == ChargeClass::Fee {
            return None;
        }
        Some(format!(
            "SELECT * FROM call_detail_record WHERE provider = '{}' AND subscription = '{}' AND kind = '{}' AND started_at >= '{}' AND started_at < '{}' ORDER BY started_at",
            self.provider.replace('\'', "''"),
            self.subscription.replace('\'', "''"),
            class,
            from.to_rfc3339(),
            to.to_rfc3339()
        ))
    }
}

/// Which findings to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FindingFilter {
    pub provider: Option<String>,
    /// The carrier period starting on this day.
    pub period: Option<NaiveDate>,
    pub status: Option<Status>,
    /// Also those a corrected invoice replaced.
    pub include_superseded: bool,
}

/// What an operator does to a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    /// Claimed with the carrier.
    Dispute { note: Option<String> },
    /// The carrier credited `recovered_micros`.
    Credited {
        recovered_micros: i64,
        note: Option<String>,
    },
    /// Accepted as billed.
    WrittenOff { note: Option<String> },
}

impl StatusChange {
    fn target(&self) -> Status {
        match self {
            StatusChange::Dispute { .. } => Status::Disputed,
            StatusChange::Credited { .. } => Status::Credited,
            StatusChange::WrittenOff { .. } => Status::WrittenOff,
        }
    }
}

/// The update the store makes, if the finding still has `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub from: Status,
    pub to: Status,
    pub recovered_micros: i64,
    pub note: Option<String>,
}

#[async_trait]
pub trait FindingStore: Send + Sync {
    async fn findings(&self, filter: &FindingFilter) -> Result<Vec<StoredFinding>, StoreError>;
    async fn finding(&self, id: i64) -> Result<Option<StoredFinding>, StoreError>;
    /// Applies `update` when the finding's status is still `update.from`;
    /// `None` when it is not (someone else changed it).
    async fn update_status(
        &self,
        id: i64,
        update: &StatusUpdate,
    ) -> Result<Option<StoredFinding>, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum DisputeError {
    #[error("no audit finding {0}; `temctl audit list` shows them")]
    Unknown(i64),
    #[error("finding {id} is {status} already; {hint}")]
    Refused {
        id: i64,
        status: Status,
        hint: &'static str,
    },
    #[error("finding {id} was replaced by the audit of corrected carrier invoice {by}; work that invoice's finding instead (`temctl audit list --provider {provider}`)")]
    Superseded { id: i64, by: i64, provider: String },
    #[error("the recovered amount {recovered} is {reason}")]
    Amount {
        recovered: i64,
        reason: &'static str,
    },
    #[error("finding {0} changed while it was being updated; show it and try again")]
    Changed(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks `change` against the finding's current state: the update to make.
pub fn plan_change(
    finding: &StoredFinding,
    change: &StatusChange,
) -> Result<StatusUpdate, DisputeError> {
    if let Some(by) = finding.superseded_by {
        return Err(DisputeError::Superseded {
            id: finding.id,
            by,
            provider: finding.provider.clone(),
        });
    }
    let refused = |hint| DisputeError::Refused {
        id: finding.id,
        status: finding.status,
        hint,
    };
    if finding.status.is_resolved() {
        return Err(refused("a resolved finding does not change"));
    }
    let (recovered, note) = match change {
        StatusChange::Dispute { note } => {
            if finding.status == Status::Disputed {
                return Err(refused("resolve it once the carrier answers"));
            }
            (0, note)
        }
        StatusChange::Credited {
            recovered_micros,
            note,
        } => {
            if *recovered_micros <= 0 {
                return Err(DisputeError::Amount {
                    recovered: *recovered_micros,
                    reason: "not above 0; a dispute the carrier refused is written off",
                });
            }
            if *recovered_micros > finding.billed_micros.max(0) {
                return Err(DisputeError::Amount {
                    recovered: *recovered_micros,
                    reason: "more than the carrier billed for this finding",
                });
            }
            (*recovered_micros, note)
        }
        StatusChange::WrittenOff { note } => (0, note),
    };
    Ok(StatusUpdate {
        from: finding.status,
        to: change.target(),
        recovered_micros: recovered,
        note: note.clone().or_else(|| finding.note.clone()),
    })
}

/// Changes a finding's status as an operator asked.
pub async fn change_status(
    store: &dyn FindingStore,
    id: i64,
    change: &StatusChange,
) -> Result<StoredFinding, DisputeError> {
    let finding = store.finding(id).await?.ok_or(DisputeError::Unknown(id))?;
    let update = plan_change(&finding, change)?;
    store
        .update_status(id, &update)
        .await?
        .ok_or(DisputeError::Changed(id))
}

/// Micro-units as euros with six decimals (`12.500000`), exact.
pub fn euros(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// The findings to claim from a carrier: current (not superseded), open or
/// disputed, with an overcharge.
pub fn to_claim(findings: &[StoredFinding]) -> Vec<&StoredFinding> {
    findings
        .iter()
        .filter(|f| f.superseded_by.is_none())
        .filter(|f| matches!(f.status, Status::Open | Status::Disputed))
        .filter(|f| f.overcharge_micros() > 0)
        .collect()
}

/// The dispute report for a carrier: one row per finding to claim, amounts
/// in euros with six decimals, the evidence as the file's lines and the
/// number of CDRs tem holds.
pub fn dispute_csv(findings: &[&StoredFinding]) -> String {
    let mut out = String::from(
        "finding,provider,account,invoice_number,period_start,period_end,subscription,kind,class,billed_eur,expected_eur,claimed_eur,status,file,lines,cdrs_held,note\n",
    );
    for f in findings {
        let lines = f
            .lines
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let fields = [
            f.id.to_string(),
            f.provider.clone(),
            f.account.clone(),
            f.invoice_number.clone(),
            f.period_start.to_string(),
            f.period_end.pred_opt().unwrap_or(f.period_end).to_string(),
            f.subscription.clone(),
            f.kind.to_string(),
            f.class.map(|c| c.to_string()).unwrap_or_default(),
            euros(f.billed_micros),
            euros(f.expected_micros),
            euros(f.overcharge_micros()),
            f.status.to_string(),
            f.file_key.clone(),
            lines,
            f.cdr_count.map(|n| n.to_string()).unwrap_or_default(),
            f.note.clone().unwrap_or_default(),
        ];
        out.push_str(
            &fields
                .iter()
                .map(|v| csv_field(v))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(status: Status) -> StoredFinding {
        let t: DateTime<Utc> = "2025-04-02T00:00:00Z".parse().unwrap();
        StoredFinding {
            id: 7,
            carrier_invoice_id: 1,
            provider: "kpn_een".into(),
            account: "K-1".into(),
            invoice_number: "F, 1".into(),
            period_start: "2025-03-01".parse().unwrap(),
            period_end: "2025-04-01".parse().unwrap(),
            kind: FindingKind::RateOvercharged,
            subscription: "+31612345678".into(),
            class: Some(ChargeClass::Fee),
            billed_micros: 17_500_000,
            expected_micros: 15_000_000,
            file_key: "carrier-invoices/kpn_een/K-1/2025-03-01.csv".into(),
            lines: vec![5],
            cdr_count: None,
            cdr_from: None,
            cdr_to: None,
            status,
            recovered_micros: 0,
            note: None,
            superseded_by: None,
            created_at: t,
            updated_at: t,
            disputed_at: None,
            resolved_at: None,
        }
    }

    #[test]
    fn a_finding_is_disputed_once_and_then_credited_or_written_off() {
        let open = finding(Status::Open);
        let update = plan_change(&open, &StatusChange::Dispute { note: None }).unwrap();
        assert_eq!((update.from, update.to), (Status::Open, Status::Disputed));
        let disputed = finding(Status::Disputed);
        assert!(plan_change(&disputed, &StatusChange::Dispute { note: None }).is_err());
        let credit = StatusChange::Credited {
            recovered_micros: 2_500_000,
            note: Some("credit note CN-9".into()),
        };
        let update = plan_change(&disputed, &credit).unwrap();
        assert_eq!(
            (update.to, update.recovered_micros),
            (Status::Credited, 2_500_000)
        );
        let credited = finding(Status::Credited);
        let err = plan_change(&credited, &StatusChange::WrittenOff { note: None }).unwrap_err();
        assert!(err.to_string().contains("credited already"), "{err}");
    }

    #[test]
    fn a_credit_of_nothing_or_more_than_billed_and_a_superseded_finding_are_refused() {
        let open = finding(Status::Open);
        for recovered in [0, 17_500_001] {
            let change = StatusChange::Credited {
                recovered_micros: recovered,
                note: None,
            };
            assert!(matches!(
                plan_change(&open, &change),
                Err(DisputeError::Amount { .. })
            ));
        }
        let mut replaced = finding(Status::Open);
        replaced.superseded_by = Some(2);
        let err = plan_change(&replaced, &StatusChange::Dispute { note: None }).unwrap_err();
        assert!(
            err.to_string().contains("corrected carrier invoice 2"),
            "{err}"
        );
    }

    #[test]
    fn the_dispute_report_claims_the_overcharge_of_open_and_disputed_findings_only() {
        let mut under = finding(Status::Open);
        under.billed_micros = 10_000_000;
        let list = [
            finding(Status::Open),
            finding(Status::WrittenOff),
            under,
            finding(Status::Disputed),
        ];
        let claim = to_claim(&list);
        assert_eq!(claim.len(), 2);
        let csv = dispute_csv(&claim);
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[1],
            "7,kpn_een,K-1,\"F, 1\",2025-03-01,2025-03-31,+31612345678,rate_overcharged,fee,17.500000,15.000000,2.500000,open,carrier-invoices/kpn_een/K-1/2025-03-01.csv,5,,"
        );
    }
}
