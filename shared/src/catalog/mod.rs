//! Configuration as data: customers, subscriptions, rate plans and sync
//! profiles declared in one YAML file and upserted idempotently
//! (`temctl apply -f FILE.yaml`, and the local run's demo data).
//!
//! # The file
//!
//! ```yaml
//! rate_plans:                    # a RatePlan (billing/rating.rs) per entry
//!   - id: business-2025
//!     name: Business 2025
//!     unit_bytes: 1048576        # data prices are per MiB
//!     monthly_fee_micros: 12500000
//!     rates:
//!       - {id: voice-nl, kind: voice, zone: home, prefix: "31",
//!          price_per_minute_micros: 100000, first_increment_s: 60, increment_s: 1}
//!     bundles:
//!       - {id: minutes, kinds: [voice], zones: [home], allowance: 6000, scope: per_subscription}
//! customers:
//!   - code: acme                 # the natural key: files name customers by code
//!     name: Acme Logistics
//!     billing_cycle_start_day: 1 # 1..28
//!     time_zone: Europe/Amsterdam  # IANA name; this is the default
//!     rate_plan: business-2025   # omitted: standard calculation (no plan)
//! subscriptions:
//!   - identifier: "+31612345678" # E.164 (quoted: YAML reads +316... as a number), or a line id
//!     customer: acme
//!     provider: routit
//!     active_from: 2025-01-01    # default 1970-01-01
//!     active_to: 2025-12-31      # optional, inclusive
//! sync_profiles:
//!   - name: routit main          # the natural key
//!     provider: routit
//!     base_url: https://api.example.net
//!     credentials_secret: tem/routit/main  # a Secrets Manager id, never the secret
//!     active: true               # the default
//!     first_period: 2025-01-01
//! ```
//!
//! The invoice parties, `sellers` and `billing_details`, are described in
//! [`parties`]; the cost tree and assignments, `cost_centres` and
//! `cost_assignments` (each customer's tree applied whole), in
//! [`cost_centres`]; `budgets` and `alert_rules` (bill shock, anomaly) in
//! [`budgets`].
//! The carriers' contracted recurring charges, `buy_rates`, in
//! [`buy_rates`].
//!
//! Natural keys: rate plans by `id`, customers by `code`, subscriptions by
//! (`provider`, `identifier`, `active_from`), sync profiles by `name`,
//! sellers by (`code`, `valid_from`), billing details by (`customer`,
//! `valid_from`), cost nodes by (`customer`, `code`), cost assignments by
//! (`customer`, `subscription`, `valid_from`), budgets by (`customer`,
//! scope, `valid_from`), alert rules by (`customer`, `valid_from`), buy rates by (`provider`,
//! `account`, `subscription`, `valid_from`). An
//! object in the file is created or updated to match it exactly (a field
//! left out takes its default, e.g. no `rate_plan` removes the customer's
//! plan); objects in the database but not in the file are left alone,
//! except a customer's cost nodes: its `cost_centres` entries are its
//! whole tree, and its stored nodes the file leaves out are removed.
//! Applying the same file twice changes nothing the second time.
//!
//! `${NAME}` is replaced by the environment variable `NAME` before the YAML
//! is read (an unset or empty variable is an error naming it and its line;
//! `$${` is a literal `${`; full-line comments are left as they are). Quote
//! a placeholder whose value may contain YAML characters:
//! `base_url: "${SIM_BASE_URL}/routit"`.
//!
//! Everything is validated before anything is written, and every problem is
//! reported with its field path and the line its entry starts on
//! (`customers[2].billing_cycle_start_day: 31 is not between 1 and 28 (line
//! 17)`; entries written as a flow list `[...]` get the path alone).
//!
//! # Follow-up work
//!
//! A rate plan whose pricing changed re-rates the open cycles of every
//! customer on it, and so does a customer whose plan, cycle start day or
//! time zone changed ([`follow_up`]); added or changed subscriptions send
//! `AttachUnassignedCdrs`, so CDRs that arrived before them get their
//! customer.

pub mod budgets;
pub mod buy_rates;
pub mod changes;
pub mod cost_centres;
pub mod document;
pub mod follow_up;
pub mod interpolate;
pub mod parties;
pub mod store;

use std::fmt;

use serde::Serialize;

pub use changes::{Action, Change, FieldChange, ObjectKind};
pub use document::{parse, Document, Parsed};
pub use follow_up::{Delivery, DeliveryOutcome, FollowUp};
pub use store::{apply, Applied, ApplyOptions, CatalogError};

/// The sections of a file, in the order they are applied (plans before the
/// customers that use them, sellers and customers before the billing
/// details that name them, customers before their subscriptions, a
/// customer's cost tree before the assignments to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    RatePlans,
    Sellers,
    Customers,
    BillingDetails,
    Subscriptions,
    SyncProfiles,
    CostCentres,
    CostAssignments,
    Budgets,
    AlertRules,
    BuyRates,
}

impl Section {
    pub const ALL: [Section; 11] = [
        Section::RatePlans,
        Section::Sellers,
        Section::Customers,
        Section::BillingDetails,
        Section::Subscriptions,
        Section::SyncProfiles,
        Section::CostCentres,
        Section::CostAssignments,
        Section::Budgets,
        Section::AlertRules,
        Section::BuyRates,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Section::RatePlans => "rate_plans",
            Section::Sellers => "sellers",
            Section::Customers => "customers",
            Section::BillingDetails => "billing_details",
            Section::Subscriptions => "subscriptions",
            Section::SyncProfiles => "sync_profiles",
            Section::CostCentres => "cost_centres",
            Section::CostAssignments => "cost_assignments",
            Section::Budgets => "budgets",
            Section::AlertRules => "alert_rules",
            Section::BuyRates => "buy_rates",
        }
    }
}

/// One thing wrong with a file, at a field path such as
/// `rate_plans[0].rates[3].increment_s`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
    /// Where in the file: problems are reported by section (in the order
    /// they are applied) and entry, whichever check found them.
    #[serde(skip)]
    order: (Option<Section>, usize, usize),
    /// The line of the file where the entry starts, when the file writes
    /// its entries as a block list (`- ` per entry); set by
    /// [`document::Parsed::locate`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl Problem {
    /// A problem of the entry `section[index]`, at `field` within it
    /// (`""` for the entry itself, `".rates[3].increment_s"` for a field).
    pub fn at(section: Section, index: usize, field: &str, message: impl Into<String>) -> Self {
        Self {
            path: format!("{}[{index}]{field}", section.as_str()),
            message: message.into(),
            order: (Some(section), index, 0),
            line: None,
        }
    }

    /// A problem of the file as a whole, or of a line before it was read.
    pub fn file(path: impl Into<String>, line: usize, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            order: (None, 0, line),
            line: None,
        }
    }

    /// File-level problems first, then by section and entry; stable, so the
    /// problems of one entry keep the order they were found in.
    pub fn sort(problems: &mut [Problem]) {
        problems.sort_by_key(|p| p.order);
    }

    /// The section and entry index of an entry's problem.
    fn entry(&self) -> Option<(Section, usize)> {
        self.order.0.map(|section| (section, self.order.1))
    }

    /// `path: message (line N)`, as the apply lists its problems.
    pub fn with_line(&self) -> String {
        match self.line {
            Some(line) => format!("{self} (line {line})"),
            None => self.to_string(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}
