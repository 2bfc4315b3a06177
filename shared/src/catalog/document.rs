//! Reading an apply file: placeholders, YAML, the entries of each section
//! and every rule an entry must follow on its own. What needs the database
//! (references to customers and plans that are not in the file, periods
//! that overlap subscriptions already stored) is checked by
//! [`super::store`] with [`Parsed::reference_problems`] and
//! [`stored_overlap_problems`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::NaiveDate;
use chrono_tz::Tz;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value as Yaml;
use sha2::{Digest, Sha256};

use super::budgets::{self, AlertRuleEntry, BudgetEntry};
use super::buy_rates::{self, BuyRateEntry};
use super::cost_centres::{self, CostAssignmentEntry, CostNodeEntry};
use super::interpolate::interpolate;
use super::parties::{self, BillingDetailsEntry, SellerEntry};
use super::{Problem, Section};
use crate::billing::rating::{Bundle, Rate, RatePlan};
use crate::cdr::Kind;
use crate::import::normalize::subscription_id;
use crate::routing::Provider;

/// What the database uses when a customer has no time zone; the file's
/// default too, so leaving it out means the same in both.
pub const DEFAULT_TIME_ZONE: &str = "Europe/Amsterdam";

/// A subscription without `active_from` has always been active (the
/// database's default).
pub fn default_active_from() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or(NaiveDate::MIN)
}

/// A rate plan and where it is in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct RatePlanEntry {
    pub at: usize,
    pub plan: RatePlan,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub at: usize,
    pub code: String,
    pub name: String,
    pub billing_cycle_start_day: u32,
    pub time_zone: Tz,
    pub rate_plan: Option<String>,
    /// Months the customer's CDRs are kept before the daily maintenance
    /// archives them; `None`: the stack's default (CDR_RETENTION_MONTHS).
    pub cdr_retention_months: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub at: usize,
    pub identifier: String,
    /// The customer's code.
    pub customer: String,
    pub provider: Provider,
    pub active_from: NaiveDate,
    pub active_to: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncProfile {
    pub at: usize,
    pub name: String,
    pub provider: Provider,
    pub base_url: String,
    pub credentials_secret: String,
    pub active: bool,
    pub first_period: NaiveDate,
}

/// The valid entries of a file, in file order per section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Document {
    pub rate_plans: Vec<RatePlanEntry>,
    pub sellers: Vec<SellerEntry>,
    pub customers: Vec<Customer>,
    pub billing_details: Vec<BillingDetailsEntry>,
    pub subscriptions: Vec<Subscription>,
    pub sync_profiles: Vec<SyncProfile>,
    pub cost_centres: Vec<CostNodeEntry>,
    pub cost_assignments: Vec<CostAssignmentEntry>,
    pub budgets: Vec<BudgetEntry>,
    pub alert_rules: Vec<AlertRuleEntry>,
    pub buy_rates: Vec<BuyRateEntry>,
}

/// A file read as far as it could be: its valid entries, every problem found
/// without the database, and the references the database must resolve.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub document: Document,
    pub problems: Vec<Problem>,
    /// sha256 of the text after placeholders were replaced: what was applied.
    pub sha256: String,
    /// Customer codes and plan ids the file declares, also those of entries
    /// with problems, so a reference to one is not reported a second time.
    pub declared_customers: BTreeSet<String>,
    pub declared_plans: BTreeSet<String>,
    pub declared_sellers: BTreeSet<String>,
    /// `customers[i].rate_plan` values.
    plan_references: Vec<(usize, String)>,
    /// `subscriptions[i].customer` values.
    customer_references: Vec<(usize, String)>,
    /// `billing_details[i].customer` values.
    billing_customer_references: Vec<(usize, String)>,
    /// `billing_details[i].seller` values.
    seller_references: Vec<(usize, String)>,
    /// `cost_centres[i].customer` values.
    cost_node_customer_references: Vec<(usize, String)>,
    /// `cost_assignments[i].customer` values.
    cost_assignment_customer_references: Vec<(usize, String)>,
    /// `budgets[i].customer` values.
    budget_customer_references: Vec<(usize, String)>,
    /// `alert_rules[i].customer` values.
    rule_customer_references: Vec<(usize, String)>,
    /// The line each entry starts on, by section and index.
    entry_lines: BTreeMap<(Section, usize), usize>,
}

impl Parsed {
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// Customer codes the file refers to but does not declare.
    pub fn customers_needed_from_database(&self) -> BTreeSet<String> {
        self.customer_references
            .iter()
            .chain(&self.billing_customer_references)
            .chain(&self.cost_node_customer_references)
            .chain(&self.cost_assignment_customer_references)
            .chain(&self.budget_customer_references)
            .chain(&self.rule_customer_references)
            .map(|(_, code)| code.clone())
            .filter(|code| !self.declared_customers.contains(code))
            .collect()
    }

    /// Rate plan ids the file refers to but does not declare.
    pub fn plans_needed_from_database(&self) -> BTreeSet<String> {
        self.plan_references
            .iter()
            .map(|(_, id)| id.clone())
            .filter(|id| !self.declared_plans.contains(id))
            .collect()
    }

    /// Gives each problem of an entry the line that entry starts on.
    pub fn locate(&self, problems: &mut [Problem]) {
        for problem in problems {
            if let Some(entry) = problem.entry() {
                problem.line = self.entry_lines.get(&entry).copied();
            }
        }
    }

    /// Seller codes the file refers to but does not declare.
    pub fn sellers_needed_from_database(&self) -> BTreeSet<String> {
        self.seller_references
            .iter()
            .map(|(_, code)| code.clone())
            .filter(|code| !self.declared_sellers.contains(code))
            .collect()
    }

    /// References to sellers that neither this file nor the database
    /// (`stored_sellers`) has.
    pub fn seller_reference_problems(&self, stored_sellers: &BTreeSet<String>) -> Vec<Problem> {
        super::parties::seller_reference_problems(
            &self.seller_references,
            &self.declared_sellers,
            stored_sellers,
        )
    }

    /// References to customers and plans that neither this file nor the
    /// database (`stored_customers`, `stored_plans`) has.
    pub fn reference_problems(
        &self,
        stored_customers: &BTreeSet<String>,
        stored_plans: &BTreeSet<String>,
    ) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (at, id) in &self.plan_references {
            if !self.declared_plans.contains(id) && !stored_plans.contains(id) {
                problems.push(Problem::at(
                    Section::Customers,
                    *at,
                    ".rate_plan",
                    format!("no rate plan {id:?} in this file or the database"),
                ));
            }
        }
        let references = self
            .billing_customer_references
            .iter()
            .map(|r| (Section::BillingDetails, r))
            .chain(
                self.customer_references
                    .iter()
                    .map(|r| (Section::Subscriptions, r)),
            )
            .chain(
                self.cost_node_customer_references
                    .iter()
                    .map(|r| (Section::CostCentres, r)),
            )
            .chain(
                self.cost_assignment_customer_references
                    .iter()
                    .map(|r| (Section::CostAssignments, r)),
            )
            .chain(
                self.budget_customer_references
                    .iter()
                    .map(|r| (Section::Budgets, r)),
            )
            .chain(
                self.rule_customer_references
                    .iter()
                    .map(|r| (Section::AlertRules, r)),
            );
        for (section, (at, code)) in references {
            if !self.declared_customers.contains(code) && !stored_customers.contains(code) {
                problems.push(Problem::at(
                    section,
                    *at,
                    ".customer",
                    format!("no customer {code:?} in this file or the database"),
                ));
            }
        }
        problems
    }
}

/// Reads an apply file: `${NAME}` placeholders from `lookup`, then the YAML,
/// then every entry. Collects every problem rather than stopping at the first.
pub fn parse(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Parsed {
    let mut parsed = Parsed::default();
    let text = match interpolate(text, lookup) {
        Ok(text) => text,
        Err(problems) => {
            parsed.problems = problems;
            return parsed;
        }
    };
    parsed.sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    // Placeholders never span lines, so these are the lines of the file.
    parsed.entry_lines = entry_lines(&text);
    let mut root: Yaml = match serde_yaml::from_str(&text) {
        Ok(root) => root,
        Err(e) => {
            let (path, line) = match e.location() {
                Some(at) => (
                    format!("line {}, column {}", at.line(), at.column()),
                    at.line(),
                ),
                None => ("file".to_string(), 0),
            };
            parsed
                .problems
                .push(Problem::file(path, line, format!("not valid YAML: {e}")));
            return parsed;
        }
    };
    if let Err(e) = root.apply_merge() {
        parsed.problems.push(Problem::file(
            "file",
            0,
            format!("a YAML merge key (<<) is invalid: {e}"),
        ));
        return parsed;
    }
    let sections = match root {
        Yaml::Null => return parsed,
        Yaml::Mapping(sections) => sections,
        _ => {
            parsed.problems.push(Problem::file(
                "file",
                0,
                format!("must be a mapping with the sections {}", section_names()),
            ));
            return parsed;
        }
    };
    let mut entries: BTreeMap<Section, Vec<Yaml>> = BTreeMap::new();
    for (key, value) in sections {
        let name = key.as_str().unwrap_or_default();
        let Some(section) = Section::ALL.into_iter().find(|s| s.as_str() == name) else {
            parsed.problems.push(Problem::file(
                describe_key(&key),
                0,
                format!("unknown section; expected one of {}", section_names()),
            ));
            continue;
        };
        match value {
            Yaml::Null => {}
            Yaml::Sequence(items) => {
                entries.insert(section, items);
            }
            _ => parsed.problems.push(Problem::file(
                name,
                0,
                "must be a list of entries (each starting with `- `)",
            )),
        }
    }
    let mut reader = Reader {
        problems: Vec::new(),
    };
    for (section, items) in entries {
        for (at, item) in items.into_iter().enumerate() {
            reader.entry(&mut parsed, section, at, item);
        }
    }
    parsed.problems.extend(reader.problems);
    parsed
        .problems
        .extend(overlap_problems(&parsed.document.subscriptions));
    parsed.problems.extend(duplicate_keys(&parsed.document));
    Problem::sort(&mut parsed.problems);
    let mut problems = std::mem::take(&mut parsed.problems);
    parsed.locate(&mut problems);
    parsed.problems = problems;
    parsed
}

/// The line (from 1) on which each entry of a block list starts: the
/// lines starting with `- ` at the indentation of a section's first entry,
/// counted from its top-level key. Entries written as a flow list
/// (`[...]`) get no line; their problems keep their path alone.
fn entry_lines(text: &str) -> BTreeMap<(Section, usize), usize> {
    let mut lines = BTreeMap::new();
    let mut section: Option<Section> = None;
    let mut entry_indent: Option<usize> = None;
    let mut index = 0;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let is_entry = trimmed == "-" || trimmed.starts_with("- ");
        if indent == 0 && !is_entry {
            let key = trimmed.split(':').next().unwrap_or_default().trim();
            section = Section::ALL.into_iter().find(|s| s.as_str() == key);
            entry_indent = None;
            index = 0;
            continue;
        }
        let Some(current) = section else {
            continue;
        };
        if !is_entry || *entry_indent.get_or_insert(indent) != indent {
            continue;
        }
        lines.insert((current, index), n + 1);
        index += 1;
    }
    lines
}

fn section_names() -> String {
    Section::ALL.map(Section::as_str).join(", ")
}

fn describe_key(key: &Yaml) -> String {
    match key {
        Yaml::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerSpec {
    code: String,
    name: String,
    // Wide, so 31 or -1 is reported as out of range rather than as a type error.
    billing_cycle_start_day: i64,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    rate_plan: Option<String>,
    // Wide, like the start day, so 0 or 1000 is reported as out of range.
    #[serde(default)]
    cdr_retention_months: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionSpec {
    identifier: String,
    customer: String,
    provider: String,
    #[serde(default)]
    active_from: Option<NaiveDate>,
    #[serde(default)]
    active_to: Option<NaiveDate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncProfileSpec {
    name: String,
    provider: String,
    base_url: String,
    credentials_secret: String,
    #[serde(default = "active_by_default")]
    active: bool,
    first_period: NaiveDate,
}

fn active_by_default() -> bool {
    true
}

/// Collects the problems of one entry at a time.
struct Reader {
    problems: Vec<Problem>,
}

impl Reader {
    fn entry(&mut self, parsed: &mut Parsed, section: Section, at: usize, item: Yaml) {
        let before = self.problems.len();
        match section {
            Section::RatePlans => {
                if let Some(id) = item.get("id").and_then(Yaml::as_str) {
                    parsed.declared_plans.insert(id.to_string());
                }
                if let Some(plan) = self.rate_plan(at, item) {
                    if self.problems.len() == before {
                        parsed.document.rate_plans.push(RatePlanEntry { at, plan });
                    }
                }
            }
            Section::Customers => {
                if let Some(code) = item.get("code").and_then(Yaml::as_str) {
                    parsed.declared_customers.insert(code.to_string());
                }
                let Some(spec) = self.spec::<CustomerSpec>(section, at, item) else {
                    return;
                };
                if let Some(plan) = &spec.rate_plan {
                    parsed.plan_references.push((at, plan.clone()));
                }
                if let Some(customer) = self.customer(at, spec) {
                    if self.problems.len() == before {
                        parsed.document.customers.push(customer);
                    }
                }
            }
            Section::Subscriptions => {
                let Some(spec) = self.spec::<SubscriptionSpec>(section, at, item) else {
                    return;
                };
                parsed.customer_references.push((at, spec.customer.clone()));
                if let Some(subscription) = self.subscription(at, spec) {
                    if self.problems.len() == before {
                        parsed.document.subscriptions.push(subscription);
                    }
                }
            }
            Section::Sellers => {
                if let Some(code) = item.get("code").and_then(Yaml::as_str) {
                    parsed.declared_sellers.insert(code.to_string());
                }
                if !self.required(section, at, &item, parties::SELLER_REQUIRED) {
                    return;
                }
                let Some(spec) = self.spec::<parties::SellerSpec>(section, at, item) else {
                    return;
                };
                let (details, found) = parties::seller(spec);
                for (field, message) in found {
                    self.problem(section, at, &field, message);
                }
                if self.problems.len() == before {
                    parsed.document.sellers.push(SellerEntry { at, details });
                }
            }
            Section::BillingDetails => {
                if !self.required(section, at, &item, parties::BILLING_REQUIRED) {
                    return;
                }
                let Some(spec) = self.spec::<parties::BillingDetailsSpec>(section, at, item) else {
                    return;
                };
                parsed
                    .billing_customer_references
                    .push((at, spec.customer.clone()));
                parsed.seller_references.push((at, spec.seller.clone()));
                let (mut entry, found) = parties::billing_details(spec);
                for (field, message) in found {
                    self.problem(section, at, &field, message);
                }
                if self.problems.len() == before {
                    entry.at = at;
                    parsed.document.billing_details.push(entry);
                }
            }
            Section::CostCentres => {
                if !self.required(section, at, &item, cost_centres::NODE_REQUIRED) {
                    return;
                }
                let Some(spec) = self.spec::<cost_centres::NodeSpec>(section, at, item) else {
                    return;
                };
                parsed
                    .cost_node_customer_references
                    .push((at, spec.customer.clone()));
                let (mut entry, found) = cost_centres::node(spec);
                for (field, message) in found {
                    self.problem(section, at, &field, message);
                }
                if self.problems.len() == before {
                    entry.at = at;
                    parsed.document.cost_centres.push(entry);
                }
            }
            Section::CostAssignments => {
                if !self.required(section, at, &item, cost_centres::ASSIGNMENT_REQUIRED) {
                    return;
                }
                let Some(spec) = self.spec::<cost_centres::AssignmentSpec>(section, at, item)
                else {
                    return;
                };
                parsed
                    .cost_assignment_customer_references
                    .push((at, spec.customer.clone()));
                let (mut entry, found) = cost_centres::assignment(spec);
                for (field, message) in found {
                    self.problem(section, at, &field, message);
                }
                if self.problems.len() == before {
                    entry.at = at;
                    parsed.document.cost_assignments.push(entry);
                }
            }
            Section::Budgets => {
                if !self.required(section, at, &item, budgets::BUDGET_REQUIRED) {
                    return;
                }
                let Some(spec) = self.spec::<budgets::BudgetSpec>(section, at, item) else {
                    return;
                };
                parsed
                    .budget_customer_references
                    .push((at, spec.customer.clone()));
                let (entry, found) = budgets::budget(spec);
                for (field, message) in found {
                    self.problem(section, at, &field, message);
                }
                if let Some(mut entry) = entry.filter(|_| self.problems.len() == before) {
                    entry.at = at;
                    parsed.document.budgets.push(entry);
                }
            }
            Section::AlertRules => {
                if !self.required(section, at, &item, budgets::RULE_REQUIRED) {
                    return;
                }
                let Some(spec) = self.spec::<budgets::RuleSpec>(section, at, item) else {
                    return;
                };
                parsed
                    .rule_customer_references
                    .push((at, spec.customer.clone()));
                let (entry, found) = budgets::rules(spec);
                for (field, message) in found {
                    self.problem(section, at, &field, message);
                }
                if let Some(mut entry) = entry.filter(|_| self.problems.len() == before) {
                    entry.at = at;
                    parsed.document.alert_rules.push(entry);
                }
            }
            Section::BuyRates => {
                if !self.required(section, at, &item, buy_rates::REQUIRED) {
                    return;
                }
                let Some(spec) = self.spec::<buy_rates::BuyRateSpec>(section, at, item) else {
                    return;
                };
                let (entry, found) = buy_rates::buy_rate(spec);
                for (field, message) in found {
                    self.problem(section, at, &field, message);
                }
                if let Some(mut entry) = entry.filter(|_| self.problems.len() == before) {
                    entry.at = at;
                    parsed.document.buy_rates.push(entry);
                }
            }
            Section::SyncProfiles => {
                let Some(spec) = self.spec::<SyncProfileSpec>(section, at, item) else {
                    return;
                };
                if let Some(profile) = self.sync_profile(at, spec) {
                    if self.problems.len() == before {
                        parsed.document.sync_profiles.push(profile);
                    }
                }
            }
        }
    }

    fn problem(&mut self, section: Section, at: usize, field: &str, message: impl Into<String>) {
        self.problems.push(Problem::at(section, at, field, message));
    }

    /// Reports every required field the entry lacks (serde would stop at
    /// the first); false when any is missing.
    fn required(&mut self, section: Section, at: usize, item: &Yaml, fields: &[&str]) -> bool {
        let missing = parties::missing_required(item, fields);
        let complete = missing.is_empty();
        for (field, message) in missing {
            self.problem(section, at, &field, message);
        }
        complete
    }

    /// The entry as `T`, or its shape problems (missing or unknown field,
    /// wrong type) at their field paths. Unknown fields are dropped and the
    /// entry read again, so its other problems are found too.
    fn spec<T: DeserializeOwned>(
        &mut self,
        section: Section,
        at: usize,
        mut item: Yaml,
    ) -> Option<T> {
        loop {
            let e = match serde_path_to_error::deserialize::<_, T>(item.clone()) {
                Ok(spec) => return Some(spec),
                Err(e) => e,
            };
            let (field, message) = shape_problem(&e.path().to_string(), &e.inner().to_string());
            let unknown = message
                .starts_with("unknown field")
                .then(|| field.strip_prefix('.'))
                .flatten()
                .filter(|name| !name.contains(['.', '[']))
                .map(str::to_string);
            self.problem(section, at, &field, message);
            let removed = match (unknown, item.as_mapping_mut()) {
                (Some(name), Some(map)) => map.remove(name.as_str()).is_some(),
                _ => false,
            };
            if !removed {
                return None;
            }
        }
    }

    fn rate_plan(&mut self, at: usize, item: Yaml) -> Option<RatePlan> {
        let section = Section::RatePlans;
        let plan: RatePlan = self.spec(section, at, item.clone())?;
        // RatePlan is the rating core's type and accepts unknown fields; a
        // field it does not know is a typo here, so compare with what it
        // kept (it serialises every field it has).
        match serde_json::to_value(&plan) {
            Ok(known) => {
                for (field, expected) in unknown_fields(&item, &known) {
                    self.problem(
                        section,
                        at,
                        &field,
                        format!("unknown field; expected one of {expected}"),
                    );
                }
            }
            Err(e) => self.problem(section, at, "", format!("cannot be represented: {e}")),
        }
        for (field, message) in plan_problems(&plan) {
            self.problem(section, at, &field, message);
        }
        Some(plan)
    }

    fn customer(&mut self, at: usize, spec: CustomerSpec) -> Option<Customer> {
        let s = Section::Customers;
        if let Err(message) = check_key(&spec.code) {
            self.problem(s, at, ".code", message);
        }
        if spec.name.trim().is_empty() {
            self.problem(s, at, ".name", "must not be empty");
        }
        let day = spec.billing_cycle_start_day;
        if !(1..=28).contains(&day) {
            self.problem(
                s,
                at,
                ".billing_cycle_start_day",
                format!("{day} is not between 1 and 28"),
            );
        }
        let zone_name = spec
            .time_zone
            .clone()
            .unwrap_or_else(|| DEFAULT_TIME_ZONE.to_string());
        let zone = zone_name.parse::<Tz>();
        if zone.is_err() {
            self.problem(
                s,
                at,
                ".time_zone",
                format!("{zone_name:?} is not an IANA time zone name (e.g. Europe/Amsterdam)"),
            );
        }
        if let Some(plan) = &spec.rate_plan {
            if plan.trim().is_empty() {
                self.problem(
                    s,
                    at,
                    ".rate_plan",
                    "must not be empty; leave it out for no rate plan (standard calculation)",
                );
            }
        }
        if let Some(months) = spec.cdr_retention_months {
            if !(1..=240).contains(&months) {
                self.problem(
                    s,
                    at,
                    ".cdr_retention_months",
                    format!("{months} is not between 1 and 240 months; leave it out for the stack's default"),
                );
            }
        }
        Some(Customer {
            at,
            code: spec.code,
            name: spec.name,
            billing_cycle_start_day: u32::try_from(day).ok()?,
            time_zone: zone.ok()?,
            rate_plan: spec.rate_plan,
            cdr_retention_months: match spec.cdr_retention_months {
                Some(m) => Some(u16::try_from(m).ok().filter(|m| (1..=240).contains(m))?),
                None => None,
            },
        })
    }

    fn subscription(&mut self, at: usize, spec: SubscriptionSpec) -> Option<Subscription> {
        let s = Section::Subscriptions;
        if let Err(message) = check_identifier(&spec.identifier) {
            self.problem(s, at, ".identifier", message);
        }
        if let Err(message) = check_key(&spec.customer) {
            self.problem(s, at, ".customer", message);
        }
        let provider = self.provider(s, at, &spec.provider);
        let active_from = spec.active_from.unwrap_or_else(default_active_from);
        if let Some(to) = spec.active_to {
            if to < active_from {
                self.problem(
                    s,
                    at,
                    ".active_to",
                    format!("{to} is before active_from {active_from}"),
                );
            }
        }
        Some(Subscription {
            at,
            identifier: spec.identifier,
            customer: spec.customer,
            provider: provider?,
            active_from,
            active_to: spec.active_to,
        })
    }

    fn sync_profile(&mut self, at: usize, spec: SyncProfileSpec) -> Option<SyncProfile> {
        let s = Section::SyncProfiles;
        if spec.name.trim().is_empty() || spec.name.trim() != spec.name {
            self.problem(
                s,
                at,
                ".name",
                "must not be empty nor start or end with a space",
            );
        }
        let provider = self.provider(s, at, &spec.provider);
        match reqwest::Url::parse(&spec.base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => self.problem(
                s,
                at,
                ".base_url",
                format!("must be an http or https URL, not {}:", url.scheme()),
            ),
            Err(e) => self.problem(
                s,
                at,
                ".base_url",
                format!("{:?} is not a URL ({e})", spec.base_url),
            ),
        }
        if let Err(message) = check_secret_id(&spec.credentials_secret) {
            self.problem(s, at, ".credentials_secret", message);
        }
        Some(SyncProfile {
            at,
            name: spec.name,
            provider: provider?,
            base_url: spec.base_url,
            credentials_secret: spec.credentials_secret,
            active: spec.active,
            first_period: spec.first_period,
        })
    }

    fn provider(&mut self, section: Section, at: usize, name: &str) -> Option<Provider> {
        match name.parse::<Provider>() {
            Ok(provider) => Some(provider),
            Err(_) => {
                self.problem(
                    section,
                    at,
                    ".provider",
                    format!(
                        "{name:?} is not a known provider; known providers: {}",
                        Provider::ALL.map(Provider::as_str).join(", ")
                    ),
                );
                None
            }
        }
    }
}

/// The field path and message of a serde error at `path` (as
/// serde_path_to_error prints it: `.` for the entry itself).
fn shape_problem(path: &str, message: &str) -> (String, String) {
    let mut field = match path {
        "." | "" => String::new(),
        p if p.starts_with('[') => p.to_string(),
        p => format!(".{p}"),
    };
    // "unknown field `colour`, expected one of `code`, `name`": name the
    // field in the path, where the other problems put it.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once('`') {
            if !field.ends_with(&format!(".{name}")) {
                field.push('.');
                field.push_str(name);
            }
            let expected = expected
                .trim_start_matches(", ")
                .replace('`', "")
                .replace("expected one of ", "")
                .replace("expected ", "");
            return (field, format!("unknown field; expected one of {expected}"));
        }
    }
    let mut message = message.to_string();
    if message.starts_with("invalid type: integer") && message.contains("expected a string")
        || message.starts_with("invalid type: floating point") && message.contains("a string")
    {
        // YAML reads +31612345678, 1001 or 31 as numbers.
        message.push_str("; put the value in quotes");
    }
    (field, message)
}

/// Fields of `given` (the YAML as written) that `known` (the same entry as
/// its type serialises it) does not have, with the fields it does have.
fn unknown_fields(given: &Yaml, known: &serde_json::Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    walk_unknown(given, known, String::new(), &mut found);
    found
}

fn walk_unknown(
    given: &Yaml,
    known: &serde_json::Value,
    path: String,
    found: &mut Vec<(String, String)>,
) {
    match (given, known) {
        (Yaml::Mapping(given), serde_json::Value::Object(known)) => {
            for (key, value) in given {
                let name = describe_key(key);
                match known.get(&name) {
                    Some(inner) => walk_unknown(value, inner, format!("{path}.{name}"), found),
                    None => found.push((
                        format!("{path}.{name}"),
                        known.keys().cloned().collect::<Vec<_>>().join(", "),
                    )),
                }
            }
        }
        (Yaml::Sequence(given), serde_json::Value::Array(known)) => {
            for (index, (value, inner)) in given.iter().zip(known).enumerate() {
                walk_unknown(value, inner, format!("{path}[{index}]"), found);
            }
        }
        _ => {}
    }
}

/// A code or id: something to type, compare and put in a URL.
fn check_key(key: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if key.trim() != key {
        return Err(format!("{key:?} starts or ends with a space"));
    }
    Ok(())
}

/// An identifier that looks like a phone number must be E.164, the form
/// imported CDRs carry; anything else is a carrier's line id.
pub fn check_identifier(identifier: &str) -> Result<(), String> {
    check_key(identifier)?;
    let looks_like_a_number = identifier.starts_with('+')
        || identifier.chars().any(|c| c.is_ascii_digit())
            && identifier
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')' | '.'));
    if !looks_like_a_number {
        return Ok(());
    }
    let digits = identifier.strip_prefix('+').unwrap_or_default();
    let e164 = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if e164 {
        return Ok(());
    }
    let mut message = format!(
        "{identifier:?} looks like a phone number but is not E.164 (+, country code and number, 8 to 15 digits, e.g. +31612345678)"
    );
    if let Ok(suggestion) = subscription_id(identifier) {
        if suggestion != identifier && suggestion.starts_with('+') {
            message.push_str(&format!("; write {suggestion:?}"));
        }
    }
    Err(message)
}

/// A Secrets Manager name or ARN. Whitespace, quotes and braces mean
/// someone pasted the credentials themselves.
fn check_secret_id(id: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "/_+=.@-:".contains(c);
    if id.is_empty() || id.len() > 2048 || !id.chars().all(allowed) {
        return Err(
            "must be the Secrets Manager id of the credentials (letters, digits and /_+=.@-, e.g. tem/routit/main), never the credentials themselves"
                .into(),
        );
    }
    Ok(())
}

/// The unit a bundle's allowance counts for a kind.
fn allowance_unit(kind: Kind) -> &'static str {
    match kind {
        Kind::Voice => "seconds",
        Kind::Data => "bytes",
        Kind::Sms | Kind::Mms => "messages",
        Kind::Service => "none",
    }
}

/// The rules a rate plan must follow (see billing/rating.rs for what each
/// field means), as (field path within the plan, message).
pub fn plan_problems(plan: &RatePlan) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut add = |field: String, message: String| problems.push((field, message));
    if let Err(message) = check_key(&plan.id) {
        add(".id".into(), message);
    }
    if plan.name.trim().is_empty() {
        add(".name".into(), "must not be empty".into());
    }
    if plan.unit_bytes == 0 {
        add(
            ".unit_bytes".into(),
            "must be > 0 (the bytes a data price is quoted for, e.g. 1048576 for a price per MiB)"
                .into(),
        );
    }
    if plan.monthly_fee_micros < 0 {
        add(
            ".monthly_fee_micros".into(),
            format!("{} must not be negative", plan.monthly_fee_micros),
        );
    }
    let mut rate_ids: BTreeMap<&str, usize> = BTreeMap::new();
    let mut matches: BTreeMap<(&str, Option<&str>, &str), usize> = BTreeMap::new();
    for (i, rate) in plan.rates.iter().enumerate() {
        let at = |field: &str| format!(".rates[{i}]{field}");
        if let Err(message) = check_key(&rate.id) {
            add(at(".id"), message);
        } else if let Some(first) = rate_ids.insert(&rate.id, i) {
            rate_ids.insert(&rate.id, first);
            add(
                at(".id"),
                format!("{:?} is also rates[{first}].id", rate.id),
            );
        }
        if !rate.prefix.bytes().all(|b| b.is_ascii_digit()) {
            add(
                at(".prefix"),
                format!(
                    "{:?} must be digits only (the destination's leading digits without +, e.g. \"31\")",
                    rate.prefix
                ),
            );
        }
        let key = (
            rate.kind.as_str(),
            rate.zone.map(|z| z.as_str()),
            rate.prefix.as_str(),
        );
        if let Some(first) = matches.get(&key) {
            add(
                at(""),
                format!("has the same kind, zone and prefix as rates[{first}]; only the first would ever match"),
            );
        } else {
            matches.insert(key, i);
        }
        for (field, message) in rate_problems(rate) {
            add(at(&field), message);
        }
    }
    let mut bundle_ids: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, bundle) in plan.bundles.iter().enumerate() {
        let at = |field: &str| format!(".bundles[{i}]{field}");
        if let Err(message) = check_key(&bundle.id) {
            add(at(".id"), message);
        } else if let Some(first) = bundle_ids.insert(&bundle.id, i) {
            bundle_ids.insert(&bundle.id, first);
            add(
                at(".id"),
                format!("{:?} is also bundles[{first}].id", bundle.id),
            );
        }
        for (field, message) in bundle_problems(bundle) {
            add(at(&field), message);
        }
    }
    problems
}

fn rate_problems(rate: &Rate) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let kind = rate.kind.as_str();
    let prices = [
        ("connect_fee_micros", rate.connect_fee_micros),
        ("price_per_minute_micros", rate.price_per_minute_micros),
        ("price_per_unit_micros", rate.price_per_unit_micros),
        ("price_per_message_micros", rate.price_per_message_micros),
    ];
    for (field, price) in prices {
        if price < 0 {
            problems.push((format!(".{field}"), format!("{price} must not be negative")));
        }
    }
    let used: &[&str] = match rate.kind {
        Kind::Voice => &[
            "connect_fee_micros",
            "price_per_minute_micros",
            "first_increment_s",
            "increment_s",
        ],
        Kind::Data => &["increment_bytes", "price_per_unit_micros"],
        Kind::Sms | Kind::Mms => &["price_per_message_micros"],
        Kind::Service => &[],
    };
    let set = [
        ("connect_fee_micros", rate.connect_fee_micros != 0),
        ("price_per_minute_micros", rate.price_per_minute_micros != 0),
        ("first_increment_s", rate.first_increment_s != 0),
        ("increment_s", rate.increment_s != 0),
        ("increment_bytes", rate.increment_bytes != 0),
        ("price_per_unit_micros", rate.price_per_unit_micros != 0),
        (
            "price_per_message_micros",
            rate.price_per_message_micros != 0,
        ),
    ];
    for (field, is_set) in set {
        if is_set && !used.contains(&field) {
            let why = if rate.kind == Kind::Service {
                " (service CDRs are always charged at the provider cost)"
            } else {
                ""
            };
            problems.push((
                format!(".{field}"),
                format!("is not used by {kind} rates; remove it{why}"),
            ));
        }
    }
    if rate.kind == Kind::Voice {
        if rate.first_increment_s == 0 {
            problems.push((".first_increment_s".into(), "must be > 0 for voice".into()));
        }
        if rate.increment_s == 0 {
            problems.push((".increment_s".into(), "must be > 0 for voice".into()));
        }
    }
    if rate.kind == Kind::Data && rate.increment_bytes == 0 {
        problems.push((".increment_bytes".into(), "must be > 0 for data".into()));
    }
    problems
}

fn bundle_problems(bundle: &Bundle) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if bundle.kinds.is_empty() {
        problems.push((
            ".kinds".into(),
            "must name at least one kind (voice, data, sms, mms)".into(),
        ));
    }
    if bundle.kinds.contains(&Kind::Service) {
        problems.push((
            ".kinds".into(),
            "service CDRs are never covered by bundles; remove service".into(),
        ));
    }
    let units: BTreeSet<&str> = bundle
        .kinds
        .iter()
        .filter(|k| **k != Kind::Service)
        .map(|k| allowance_unit(*k))
        .collect();
    if units.len() > 1 {
        problems.push((
            ".kinds".into(),
            format!(
                "one allowance cannot count {}; split the bundle by kind",
                units.into_iter().collect::<Vec<_>>().join(" and ")
            ),
        ));
    }
    if bundle.allowance == 0 {
        problems.push((".allowance".into(), "must be > 0".into()));
    }
    problems
}

/// Entries that share a natural key with an earlier entry of the file.
fn duplicate_keys(document: &Document) -> Vec<Problem> {
    let mut keys: Vec<(Section, usize, &str, String)> = Vec::new();
    for p in &document.rate_plans {
        keys.push((Section::RatePlans, p.at, ".id", p.plan.id.clone()));
    }
    for c in &document.customers {
        keys.push((Section::Customers, c.at, ".code", c.code.clone()));
    }
    for s in &document.sellers {
        let key = parties::version_label(&s.details.code, s.details.valid_from);
        keys.push((Section::Sellers, s.at, "", key));
    }
    for b in &document.billing_details {
        let from = b.details.valid_from.unwrap_or_default();
        keys.push((
            Section::BillingDetails,
            b.at,
            "",
            parties::version_label(&b.customer, from),
        ));
    }
    for s in &document.subscriptions {
        let key = subscription_label(s.provider.as_str(), &s.identifier, s.active_from);
        keys.push((Section::Subscriptions, s.at, "", key));
    }
    for p in &document.sync_profiles {
        keys.push((Section::SyncProfiles, p.at, ".name", p.name.clone()));
    }
    for n in &document.cost_centres {
        let key = cost_centres::node_label(&n.customer, &n.node.code);
        keys.push((Section::CostCentres, n.at, ".code", key));
    }
    for a in &document.cost_assignments {
        let key = cost_centres::assignment_label(
            &a.customer,
            &a.assignment.subscription,
            a.assignment.valid_from,
        );
        keys.push((Section::CostAssignments, a.at, "", key));
    }
    for b in &document.budgets {
        let key = budgets::budget_label(&b.customer, &b.budget.scope, b.valid_from);
        keys.push((Section::Budgets, b.at, "", key));
    }
    for r in &document.alert_rules {
        let key = budgets::rules_label(&r.customer, r.valid_from);
        keys.push((Section::AlertRules, r.at, "", key));
    }
    for r in &document.buy_rates {
        keys.push((Section::BuyRates, r.at, "", buy_rates::label(&r.rate)));
    }
    let mut problems = Vec::new();
    let mut seen: BTreeMap<(Section, String), usize> = BTreeMap::new();
    for (section, at, field, key) in keys {
        match seen.get(&(section, key.clone())) {
            Some(first) => problems.push(Problem::at(
                section,
                at,
                field,
                format!(
                    "{key:?} is also {}[{first}]; each may appear once",
                    section.as_str()
                ),
            )),
            None => {
                seen.insert((section, key), at);
            }
        }
    }
    problems
}

/// How a subscription is named in messages: `routit +31612345678`, with
/// `from DATE` when it does not start at the beginning of time.
pub fn subscription_label(provider: &str, identifier: &str, active_from: NaiveDate) -> String {
    if active_from == default_active_from() {
        format!("{provider} {identifier}")
    } else {
        format!("{provider} {identifier} from {active_from}")
    }
}

/// A subscription already in the database, for the overlap check.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPeriod {
    pub provider: String,
    pub identifier: String,
    pub active_from: NaiveDate,
    pub active_to: Option<NaiveDate>,
    /// Who it belongs to, for the message.
    pub customer: String,
}

fn period(from: NaiveDate, to: Option<NaiveDate>) -> String {
    match to {
        Some(to) => format!("{from} to {to}"),
        None => format!("{from}, open-ended"),
    }
}

/// A period's last day, `NaiveDate::MAX` for an open-ended one: periods
/// are inclusive at both ends (`active_to` is the last active day), so two
/// periods overlap when each starts on or before the other's last day.
fn last_day(to: Option<NaiveDate>) -> NaiveDate {
    to.unwrap_or(NaiveDate::MAX)
}

/// Indices of `items` grouped by the number (or line) they are for, in
/// `items` order within each group. Only groups of two or more can
/// overlap; hashing keeps this linear for the common one period per number.
fn by_number<'a, T>(
    items: &'a [T],
    key: impl Fn(&'a T) -> (&'a str, &'a str),
) -> HashMap<(&'a str, &'a str), Vec<usize>> {
    let mut groups: HashMap<(&str, &str), Vec<usize>> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        groups.entry(key(item)).or_default().push(i);
    }
    groups
}

/// A number (or line) belongs to one customer at a time: subscriptions of
/// the same provider and identifier must not overlap within the file.
///
/// Each later entry is reported against every earlier one it overlaps
/// (entries with the same `active_from` are duplicates, reported by
/// [`duplicate_keys`] instead). O(n log n + problems): entries are grouped
/// by number, each group swept in order of `active_from` with the periods
/// seen so far kept ordered by their last day, so the ones still running
/// when a period starts are a range, not a scan.
pub fn overlap_problems(subscriptions: &[Subscription]) -> Vec<Problem> {
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for (_, mut group) in by_number(subscriptions, |s| (s.provider.as_str(), &s.identifier)) {
        if group.len() < 2 {
            continue;
        }
        group.sort_by_key(|&i| (subscriptions[i].active_from, i));
        // (last day, index) of the periods that start before the current one.
        let mut running: BTreeSet<(NaiveDate, usize)> = BTreeSet::new();
        let mut start = 0;
        while start < group.len() {
            let from = subscriptions[group[start]].active_from;
            let same_from = group[start..]
                .iter()
                .take_while(|&&i| subscriptions[i].active_from == from)
                .count();
            let batch = &group[start..start + same_from];
            // Every period in `running` starts before `from`, so it overlaps
            // this one exactly when it is still running on `from` (and,
            // for an entry whose active_to is before its active_from, a
            // problem of its own, when it starts by that active_to).
            for &i in batch {
                let last = last_day(subscriptions[i].active_to);
                for &(_, j) in running.range((from, 0)..) {
                    if subscriptions[j].active_from <= last {
                        pairs.push((i.max(j), i.min(j)));
                    }
                }
            }
            for &i in batch {
                running.insert((last_day(subscriptions[i].active_to), i));
            }
            start += same_from;
        }
    }
    pairs.sort_unstable();
    pairs
        .into_iter()
        .map(|(later, earlier)| {
            let s = &subscriptions[later];
            let earlier = &subscriptions[earlier];
            Problem::at(
                Section::Subscriptions,
                s.at,
                "",
                format!(
                    "{} {} overlaps subscriptions[{}] ({}); a number belongs to one customer at a time, so end the earlier one with active_to",
                    s.provider, s.identifier, earlier.at, period(earlier.active_from, earlier.active_to)
                ),
            )
        })
        .collect()
}

/// Nor with `stored` subscriptions the file leaves alone (a stored one with
/// the same key as a file entry is replaced by it, so it does not count).
///
/// Problems come by file entry, then in `stored` order, as a nested loop
/// over both would give them, in O((n + m) log m + problems): the stored
/// periods are grouped by number and sorted by `active_from`, so those that
/// start on or before an entry's last day are a prefix found by binary
/// search, and a running maximum of their last days says where in that
/// prefix the search back for overlaps can stop.
pub fn stored_overlap_problems(
    subscriptions: &[Subscription],
    stored: &[StoredPeriod],
) -> Vec<Problem> {
    let in_file: HashSet<(&str, &str, NaiveDate)> = subscriptions
        .iter()
        .map(|f| (f.provider.as_str(), f.identifier.as_str(), f.active_from))
        .collect();
    let left_alone: Vec<usize> = (0..stored.len())
        .filter(|&i| {
            let row = &stored[i];
            !in_file.contains(&(
                row.provider.as_str(),
                row.identifier.as_str(),
                row.active_from,
            ))
        })
        .collect();
    // Per number: (active_from, last day, index in `stored`), by active_from,
    // and the running maximum of the last days.
    struct Periods {
        sorted: Vec<(NaiveDate, NaiveDate, usize)>,
        max_last: Vec<NaiveDate>,
    }
    let mut groups: HashMap<(&str, &str), Periods> = HashMap::new();
    for &i in &left_alone {
        let row = &stored[i];
        groups
            .entry((row.provider.as_str(), row.identifier.as_str()))
            .or_insert_with(|| Periods {
                sorted: Vec::new(),
                max_last: Vec::new(),
            })
            .sorted
            .push((row.active_from, last_day(row.active_to), i));
    }
    for periods in groups.values_mut() {
        periods.sorted.sort_unstable();
        let mut max = NaiveDate::MIN;
        periods.max_last = periods
            .sorted
            .iter()
            .map(|&(_, last, _)| {
                max = max.max(last);
                max
            })
            .collect();
    }

    let mut problems = Vec::new();
    let mut found: Vec<usize> = Vec::new();
    for s in subscriptions {
        let Some(periods) = groups.get(&(s.provider.as_str(), s.identifier.as_str())) else {
            continue;
        };
        let last = last_day(s.active_to);
        // Stored periods that start on or before this entry's last day ...
        let starts_in_time = periods.sorted.partition_point(|&(from, _, _)| from <= last);
        // ... overlap it when they last until its first day.
        found.clear();
        for k in (0..starts_in_time).rev() {
            if periods.max_last[k] < s.active_from {
                break;
            }
            let (_, row_last, i) = periods.sorted[k];
            if row_last >= s.active_from {
                found.push(i);
            }
        }
        found.sort_unstable();
        for &i in &found {
            let row = &stored[i];
            problems.push(Problem::at(
                Section::Subscriptions,
                s.at,
                "",
                format!(
                    "{} {} overlaps the database's subscription of customer {} ({}); add that one to this file with active_from: {} and an active_to to end it",
                    s.provider, s.identifier, row.customer, period(row.active_from, row.active_to), row.active_from
                ),
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn problems(text: &str) -> Vec<String> {
        parse(text, no_env)
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_customer_s_retention_is_read_and_one_out_of_range_is_named_with_its_entry() {
        let parsed = parse(
            "customers:\n  - {code: acme, name: Acme, billing_cycle_start_day: 1, cdr_retention_months: 84}\n  - {code: brief, name: Brief, billing_cycle_start_day: 1}\n",
            no_env,
        );
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let months: Vec<Option<u16>> = parsed
            .document
            .customers
            .iter()
            .map(|c| c.cdr_retention_months)
            .collect();
        assert_eq!(months, vec![Some(84), None]);
        let found = problems(
            "customers:\n  - {code: acme, name: Acme, billing_cycle_start_day: 1, cdr_retention_months: 0}\n",
        );
        assert_eq!(
            found,
            vec!["customers[0].cdr_retention_months: 0 is not between 1 and 240 months; leave it out for the stack's default".to_string()]
        );
    }

    const VALID: &str = r#"
rate_plans:
  - id: business
    name: Business
    unit_bytes: 1048576
    monthly_fee_micros: 12500000
    rates:
      - {id: voice-nl, kind: voice, zone: home, prefix: "31", price_per_minute_micros: 100000, first_increment_s: 60, increment_s: 1, connect_fee_micros: 5000}
      - {id: data, kind: data, increment_bytes: 1024, price_per_unit_micros: 2000}
      - {id: sms, kind: sms, price_per_message_micros: 90000}
    bundles:
      - {id: minutes, kinds: [voice], zones: [home], allowance: 6000, scope: per_subscription}
      - {id: texts, kinds: [sms, mms], allowance: 100, scope: pooled}
customers:
  - code: acme
    name: Acme Logistics
    billing_cycle_start_day: 1
    rate_plan: business
  - {code: bakker, name: Bakkerij, billing_cycle_start_day: 15, time_zone: Europe/Brussels}
subscriptions:
  - {identifier: "+31612345678", customer: acme, provider: routit}
  - {identifier: LINE-0042, customer: bakker, provider: kpn_een, active_from: 2025-01-01, active_to: 2025-06-30}
  - {identifier: LINE-0042, customer: acme, provider: kpn_een, active_from: 2025-07-01}
sync_profiles:
  - name: routit main
    provider: routit
    base_url: https://api.example.net/routit
    credentials_secret: tem/routit/main
    first_period: 2025-01-01
"#;

    #[test]
    fn a_valid_file_gives_every_entry_typed_with_defaults_filled_in() {
        let parsed = parse(VALID, no_env);
        assert_eq!(parsed.problems, vec![]);
        let doc = &parsed.document;
        assert_eq!(doc.rate_plans.len(), 1);
        assert_eq!(doc.rate_plans[0].plan.rates.len(), 3);
        assert_eq!(doc.customers[0].time_zone, chrono_tz::Europe::Amsterdam);
        assert_eq!(doc.customers[1].time_zone, chrono_tz::Europe::Brussels);
        assert_eq!(doc.customers[1].rate_plan, None);
        assert_eq!(doc.subscriptions[0].active_from, default_active_from());
        assert_eq!(doc.subscriptions[1].provider, Provider::KpnEen);
        assert!(doc.sync_profiles[0].active, "active by default");
        assert_eq!(parsed.sha256.len(), 64);
    }

    #[test]
    fn an_empty_file_is_an_empty_document() {
        let parsed = parse("# nothing yet\n", no_env);
        assert!(parsed.is_valid());
        assert_eq!(parsed.document, Document::default());
    }

    #[test]
    fn every_problem_is_reported_with_its_field_path_in_file_order() {
        let text = r#"
customers:
  - {code: a, name: A, billing_cycle_start_day: 1}
  - {code: b, name: B, billing_cycle_start_day: 1, time_zone: Mars/Olympus}
  - {code: c, name: C, billing_cycle_start_day: 31}
rate_plans:
  - id: p
    name: P
    unit_bytes: 0
    rates:
      - {id: v1, kind: voice, first_increment_s: 60, increment_s: 1}
      - {id: v2, kind: voice, prefix: "32", first_increment_s: 0, increment_s: 1}
      - {id: d, kind: data}
      - {id: v4, kind: voice, prefix: "33", first_increment_s: 1, increment_s: 0, price_per_minute_micros: -5}
    bundles:
      - {id: b, kinds: [], allowance: 10, scope: pooled}
subscriptions:
  - {identifier: "0612345678", customer: a, provider: routit}
  - {identifier: "+31612345679", customer: a, provider: kpn}
"#;
        assert_eq!(
            problems(text),
            vec![
                "rate_plans[0].unit_bytes: must be > 0 (the bytes a data price is quoted for, e.g. 1048576 for a price per MiB)",
                "rate_plans[0].rates[1].first_increment_s: must be > 0 for voice",
                "rate_plans[0].rates[2].increment_bytes: must be > 0 for data",
                "rate_plans[0].rates[3].price_per_minute_micros: -5 must not be negative",
                "rate_plans[0].rates[3].increment_s: must be > 0 for voice",
                "rate_plans[0].bundles[0].kinds: must name at least one kind (voice, data, sms, mms)",
                "customers[1].time_zone: \"Mars/Olympus\" is not an IANA time zone name (e.g. Europe/Amsterdam)",
                "customers[2].billing_cycle_start_day: 31 is not between 1 and 28",
                "subscriptions[0].identifier: \"0612345678\" looks like a phone number but is not E.164 (+, country code and number, 8 to 15 digits, e.g. +31612345678); write \"+31612345678\"",
                "subscriptions[1].provider: \"kpn\" is not a known provider; known providers: kpn_sp16, kpn_een, vodafone, t_mobile, routit, yielder, telfort",
            ]
        );
    }

    #[test]
    fn entries_with_problems_are_left_out_of_the_document_but_still_declare_their_keys() {
        let parsed = parse(
            "customers:\n  - {code: a, name: A, billing_cycle_start_day: 40}\n  - {code: b, name: B, billing_cycle_start_day: 2}\n",
            no_env,
        );
        assert_eq!(parsed.document.customers.len(), 1);
        assert_eq!(parsed.document.customers[0].code, "b");
        assert!(parsed.declared_customers.contains("a"));
    }

    #[test]
    fn an_unknown_field_names_its_path_in_every_section_including_rate_plans() {
        let text = r#"
customers:
  - {code: a, name: A, billing_cycle_start_day: 0, colour: blue, size: 3}
rate_plans:
  - id: p
    name: P
    unit_bytes: 1
    rates:
      - {id: s, kind: sms, price_per_message_micros: 1, price_per_sms: 2}
sync_profiles:
  - {name: x, provider: routit, base_url: "http://x", credentials_secret: s, first_period: 2025-01-01, watermark: 2025-01-02}
"#;
        let found = problems(text);
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(
            found[0].starts_with(
                "rate_plans[0].rates[0].price_per_sms: unknown field; expected one of "
            ),
            "{found:?}"
        );
        assert!(found[0].contains("price_per_message_micros"), "{found:?}");
        assert!(
            found[1].starts_with("customers[0].colour: unknown field; expected one of code, name"),
            "{found:?}"
        );
        assert!(
            found[2].starts_with("customers[0].size: unknown field"),
            "{found:?}"
        );
        assert_eq!(
            found[3], "customers[0].billing_cycle_start_day: 0 is not between 1 and 28",
            "the entry's other problems are found too"
        );
        assert!(
            found[4].starts_with("sync_profiles[0].watermark: unknown field"),
            "{found:?}"
        );
    }

    #[test]
    fn every_field_of_a_full_rate_plan_is_known() {
        // Catches a RatePlan field that stops being serialised: the unknown
        // field check would then reject it in every file.
        let text = r#"
rate_plans:
  - id: p
    name: P
    unit_bytes: 1
    monthly_fee_micros: 1
    rates:
      - {id: v, kind: voice, zone: eu, prefix: "3", connect_fee_micros: 1, price_per_minute_micros: 1, first_increment_s: 1, increment_s: 1}
      - {id: d, kind: data, zone: null, prefix: "", increment_bytes: 1, price_per_unit_micros: 1}
    bundles:
      - {id: b, kinds: [data], zones: [eu, world], allowance: 1, scope: per_subscription}
"#;
        assert_eq!(problems(text), Vec::<String>::new());
    }

    #[test]
    fn wrong_types_missing_fields_and_numbers_that_should_be_quoted_are_shape_problems() {
        let text = r#"
customers:
  - {code: 1001, name: A, billing_cycle_start_day: 1}
  - {code: b, billing_cycle_start_day: 1}
subscriptions:
  - {identifier: +31612345678, customer: b, provider: routit}
  - {identifier: "+31612345678", customer: b, provider: routit, active_from: 2025-02-30}
"#;
        let found = problems(text);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].starts_with("customers[0].code: invalid type: integer `1001`, expected a string; put the value in quotes"), "{found:?}");
        assert!(
            found[1].starts_with("customers[1]: missing field `name`"),
            "{found:?}"
        );
        assert!(
            found[2].starts_with("subscriptions[0].identifier: invalid type: integer"),
            "{found:?}"
        );
        assert!(
            found[3].starts_with("subscriptions[1].active_from: "),
            "{found:?}"
        );
    }

    #[test]
    fn unknown_sections_non_lists_and_bad_yaml_are_file_problems() {
        assert_eq!(
            problems("customer:\n  - {}\nrate_plans: 3\n"),
            vec![
                "customer: unknown section; expected one of rate_plans, sellers, customers, billing_details, subscriptions, sync_profiles, cost_centres, cost_assignments, budgets, alert_rules, buy_rates",
                "rate_plans: must be a list of entries (each starting with `- `)",
            ]
        );
        let bad = problems("customers:\n  - {code: a\n");
        assert_eq!(bad.len(), 1);
        assert!(bad[0].starts_with("line "), "{bad:?}");
        assert!(bad[0].contains("not valid YAML"), "{bad:?}");
    }

    #[test]
    fn placeholders_are_read_before_the_yaml_and_unset_ones_are_problems() {
        let text = "sync_profiles:\n  - {name: x, provider: routit, base_url: \"${BASE}/r\", credentials_secret: s, first_period: \"${DAY}\"}\n";
        let env = |name: &str| (name == "BASE").then(|| "http://sim:9".to_string());
        let parsed = parse(text, env);
        assert_eq!(
            parsed.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["line 2: ${DAY} is not set; set the environment variable DAY (or write the value into the file)"]
        );
        let env = |name: &str| match name {
            "BASE" => Some("http://sim:9".to_string()),
            _ => Some("2025-01-14".to_string()),
        };
        let parsed = parse(text, env);
        assert!(parsed.is_valid(), "{:?}", parsed.problems);
        assert_eq!(parsed.document.sync_profiles[0].base_url, "http://sim:9/r");
    }

    #[test]
    fn rate_plan_rules_cover_unused_prices_duplicates_and_mixed_bundles() {
        let text = r#"
rate_plans:
  - id: p
    name: P
    unit_bytes: 1024
    monthly_fee_micros: -1
    rates:
      - {id: a, kind: sms, price_per_message_micros: 1, price_per_minute_micros: 5}
      - {id: a, kind: sms, prefix: "31", price_per_message_micros: 1}
      - {id: c, kind: sms, price_per_message_micros: 2}
      - {id: d, kind: service, connect_fee_micros: 1}
      - {id: e, kind: voice, prefix: "+31", first_increment_s: 1, increment_s: 1}
    bundles:
      - {id: x, kinds: [voice, data, service], allowance: 0, scope: pooled}
      - {id: x, kinds: [sms], allowance: 1, scope: pooled}
"#;
        let found = problems(text);
        let expected = [
            "rate_plans[0].monthly_fee_micros: -1 must not be negative",
            "rate_plans[0].rates[0].price_per_minute_micros: is not used by sms rates; remove it",
            "rate_plans[0].rates[1].id: \"a\" is also rates[0].id",
            "rate_plans[0].rates[2]: has the same kind, zone and prefix as rates[0]; only the first would ever match",
            "rate_plans[0].rates[3].connect_fee_micros: is not used by service rates; remove it (service CDRs are always charged at the provider cost)",
            "rate_plans[0].rates[4].prefix: \"+31\" must be digits only",
            "rate_plans[0].bundles[0].kinds: service CDRs are never covered by bundles; remove service",
            "rate_plans[0].bundles[0].kinds: one allowance cannot count bytes and seconds; split the bundle by kind",
            "rate_plans[0].bundles[0].allowance: must be > 0",
            "rate_plans[0].bundles[1].id: \"x\" is also bundles[0].id",
        ];
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        for (found, expected) in found.iter().zip(expected) {
            assert!(
                found.starts_with(expected),
                "{found:?} should start with {expected:?}"
            );
        }
    }

    #[test]
    fn duplicate_keys_within_the_file_name_the_first_entry() {
        let text = r#"
customers:
  - {code: a, name: A, billing_cycle_start_day: 1}
  - {code: a, name: A2, billing_cycle_start_day: 1}
subscriptions:
  - {identifier: "+31612345678", customer: a, provider: routit}
  - {identifier: "+31612345678", customer: a, provider: routit}
  - {identifier: "+31612345678", customer: a, provider: t_mobile}
"#;
        assert_eq!(
            problems(text),
            vec![
                "customers[1].code: \"a\" is also customers[0]; each may appear once",
                "subscriptions[1]: \"routit +31612345678\" is also subscriptions[0]; each may appear once",
            ]
        );
    }

    #[test]
    fn overlapping_periods_of_one_number_are_refused_in_the_file_and_against_the_database() {
        let text = r#"
subscriptions:
  - {identifier: "+31612345678", customer: a, provider: routit, active_to: 2025-01-31}
  - {identifier: "+31612345678", customer: b, provider: routit, active_from: 2025-01-31}
  - {identifier: "+31612345670", customer: b, provider: routit, active_from: 2025-03-01}
"#;
        let parsed = parse(text, no_env);
        let found: Vec<String> = parsed.problems.iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("subscriptions[1]: routit +31612345678 overlaps subscriptions[0] (1970-01-01 to 2025-01-31)"), "{found:?}");

        let stored = |from: &str, to: Option<&str>| StoredPeriod {
            provider: "routit".into(),
            identifier: "+31612345670".into(),
            active_from: from.parse().unwrap(),
            active_to: to.map(|t| t.parse().unwrap()),
            customer: "acme".into(),
        };
        let subs = &parsed.document.subscriptions;
        let clash = stored_overlap_problems(subs, &[stored("1970-01-01", None)]);
        assert_eq!(clash.len(), 1, "{clash:?}");
        assert!(clash[0].to_string().starts_with("subscriptions[2]: routit +31612345670 overlaps the database's subscription of customer acme (1970-01-01, open-ended); add that one to this file with active_from: 1970-01-01"), "{clash:?}");
        assert_eq!(
            stored_overlap_problems(subs, &[stored("1970-01-01", Some("2025-02-28"))]),
            vec![],
            "ended the day before: no overlap"
        );
        assert_eq!(
            stored_overlap_problems(subs, &[stored("2025-03-01", None)]),
            vec![],
            "the same key is the file's own entry, replaced by it"
        );
    }

    /// The checks as they were before they were made O(n log n): a nested
    /// loop over every pair. The fast ones must give exactly these problems,
    /// in this order.
    mod quadratic {
        use super::super::*;

        fn overlap(a: (NaiveDate, Option<NaiveDate>), b: (NaiveDate, Option<NaiveDate>)) -> bool {
            a.0 <= b.1.unwrap_or(NaiveDate::MAX) && b.0 <= a.1.unwrap_or(NaiveDate::MAX)
        }

        pub fn overlap_problems(subscriptions: &[Subscription]) -> Vec<Problem> {
            let mut problems = Vec::new();
            for (i, s) in subscriptions.iter().enumerate() {
                for earlier in &subscriptions[..i] {
                    if earlier.provider == s.provider
                        && earlier.identifier == s.identifier
                        && earlier.active_from != s.active_from
                        && overlap(
                            (earlier.active_from, earlier.active_to),
                            (s.active_from, s.active_to),
                        )
                    {
                        problems.push(Problem::at(
                            Section::Subscriptions,
                            s.at,
                            "",
                            format!(
                                "{} {} overlaps subscriptions[{}] ({}); a number belongs to one customer at a time, so end the earlier one with active_to",
                                s.provider, s.identifier, earlier.at, period(earlier.active_from, earlier.active_to)
                            ),
                        ));
                    }
                }
            }
            problems
        }

        pub fn stored_overlap_problems(
            subscriptions: &[Subscription],
            stored: &[StoredPeriod],
        ) -> Vec<Problem> {
            let mut problems = Vec::new();
            for s in subscriptions {
                for row in stored {
                    let replaced = subscriptions.iter().any(|f| {
                        f.provider.as_str() == row.provider
                            && f.identifier == row.identifier
                            && f.active_from == row.active_from
                    });
                    if !replaced
                        && row.provider == s.provider.as_str()
                        && row.identifier == s.identifier
                        && overlap(
                            (row.active_from, row.active_to),
                            (s.active_from, s.active_to),
                        )
                    {
                        problems.push(Problem::at(
                            Section::Subscriptions,
                            s.at,
                            "",
                            format!(
                                "{} {} overlaps the database's subscription of customer {} ({}); add that one to this file with active_from: {} and an active_to to end it",
                                s.provider, s.identifier, row.customer, period(row.active_from, row.active_to), row.active_from
                            ),
                        ));
                    }
                }
            }
            problems
        }
    }

    fn day(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn sub(at: usize, identifier: &str, from: &str, to: Option<&str>) -> Subscription {
        Subscription {
            at,
            identifier: identifier.into(),
            customer: format!("c{at}"),
            provider: Provider::Routit,
            active_from: day(from),
            active_to: to.map(day),
        }
    }

    fn kept(identifier: &str, from: &str, to: Option<&str>, customer: &str) -> StoredPeriod {
        StoredPeriod {
            provider: "routit".into(),
            identifier: identifier.into(),
            active_from: day(from),
            active_to: to.map(day),
            customer: customer.into(),
        }
    }

    fn paths_and_periods(problems: &[Problem]) -> Vec<String> {
        problems
            .iter()
            .map(|p| {
                let start = p.message.find('(').unwrap();
                let end = p.message.find(')').unwrap();
                format!("{} {}", p.path, &p.message[start..=end])
            })
            .collect()
    }

    #[test]
    fn adjacent_periods_do_not_overlap_and_overlapping_ones_do_in_the_file_and_against_the_database(
    ) {
        let file = vec![
            // A: three periods back to back (adjacent: no problem) ...
            sub(0, "A", "2025-01-01", Some("2025-01-31")),
            sub(1, "A", "2025-02-01", Some("2025-02-28")),
            sub(2, "A", "2025-03-01", None),
            // ... and one sharing a single day with the first.
            sub(3, "A", "2024-06-01", Some("2025-01-01")),
            // B: open-ended, then one inside it.
            sub(4, "B", "2025-01-01", None),
            sub(5, "B", "2025-05-01", Some("2025-05-31")),
            // C: alone in the file, next to and across stored periods.
            sub(6, "C", "2025-04-01", Some("2025-04-30")),
            // D: replaces its stored period (same key), no problem.
            sub(7, "D", "2025-01-01", Some("2025-12-31")),
        ];
        let within = overlap_problems(&file);
        assert_eq!(
            paths_and_periods(&within),
            vec![
                "subscriptions[3] (2025-01-01 to 2025-01-31)",
                "subscriptions[5] (2025-01-01, open-ended)",
            ]
        );
        let stored = vec![
            kept("C", "2025-01-01", Some("2025-03-31"), "ends-the-day-before"),
            kept("C", "2025-05-01", None, "starts-the-day-after"),
            kept("C", "2025-04-30", Some("2025-06-30"), "shares-the-last-day"),
            kept(
                "C",
                "2024-01-01",
                Some("2025-04-01"),
                "shares-the-first-day",
            ),
            kept("D", "2025-01-01", None, "replaced"),
            kept("D", "2026-01-01", None, "after-the-replacement"),
            kept("D", "2025-12-31", None, "on-the-last-day"),
            kept("B", "2024-01-01", Some("2024-12-31"), "before-b"),
        ];
        let against = stored_overlap_problems(&file, &stored);
        let found: Vec<(String, &str)> = against
            .iter()
            .map(|p| {
                let customer = stored
                    .iter()
                    .find(|k| p.message.contains(&format!("customer {} ", k.customer)))
                    .unwrap();
                (p.path.clone(), customer.customer.as_str())
            })
            .collect();
        assert_eq!(
            found,
            vec![
                ("subscriptions[6]".to_string(), "shares-the-last-day"),
                ("subscriptions[6]".to_string(), "shares-the-first-day"),
                ("subscriptions[7]".to_string(), "on-the-last-day"),
            ]
        );
        assert_eq!(within, quadratic::overlap_problems(&file));
        assert_eq!(against, quadratic::stored_overlap_problems(&file, &stored));
    }

    /// A period of up to 40 days after 2025-01-01: open-ended, reversed (a
    /// problem of its own) or closed.
    fn any_period() -> impl Strategy<Value = (NaiveDate, Option<NaiveDate>)> {
        let base = day("2025-01-01");
        (0..40i64).prop_flat_map(move |offset| {
            let from = base + chrono::Duration::days(offset);
            prop_oneof![
                1 => Just(None),
                1 => (1..=3i64).prop_map(move |back| Some(from - chrono::Duration::days(back))),
                3 => (0..12i64).prop_map(move |length| Some(from + chrono::Duration::days(length))),
            ]
            .prop_map(move |to| (from, to))
        })
    }

    /// A file's subscriptions and the stored periods: a few numbers with
    /// many periods each, so that overlaps, adjacent periods, equal starts,
    /// open ends and reversed periods all occur, in random file order.
    fn any_periods() -> impl Strategy<Value = (Vec<Subscription>, Vec<StoredPeriod>)> {
        (1..=4u32).prop_flat_map(|numbers| {
            let entry = || (any_period(), 0..numbers, prop::bool::weighted(1.0 / 6.0));
            (
                prop::collection::vec(entry(), 0..25),
                prop::collection::vec(entry(), 0..25),
            )
                .prop_map(|(file, stored)| {
                    let file = file
                        .into_iter()
                        .enumerate()
                        .map(|(at, ((from, to), number, kpn))| Subscription {
                            at: at * 2,
                            identifier: format!("N{number}"),
                            customer: "c".into(),
                            provider: if kpn {
                                Provider::KpnEen
                            } else {
                                Provider::Routit
                            },
                            active_from: from,
                            active_to: to,
                        })
                        .collect();
                    let stored = stored
                        .into_iter()
                        .enumerate()
                        .map(|(k, ((from, to), number, kpn))| StoredPeriod {
                            provider: if kpn { "kpn_een" } else { "routit" }.into(),
                            identifier: format!("N{number}"),
                            active_from: from,
                            active_to: to,
                            customer: format!("k{k}"),
                        })
                        .collect();
                    (file, stored)
                })
        })
    }

    proptest! {
        #![proptest_config(crate::proptest_config::fixed(300, 0x9e37_79b9_7f4a_7c15))]

        #[test]
        fn the_fast_overlap_checks_give_exactly_the_nested_loops_problems_in_their_order(
            (file, stored) in any_periods(),
        ) {
            prop_assert_eq!(overlap_problems(&file), quadratic::overlap_problems(&file));
            prop_assert_eq!(
                stored_overlap_problems(&file, &stored),
                quadratic::stored_overlap_problems(&file, &stored)
            );
        }
    }

    #[test]
    fn the_overlap_cases_hold_many_problems_within_the_file_and_against_the_database() {
        // Without this the property above could pass on cases that have no
        // problem at all.
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = any_periods();
        let mut checked = (0, 0);
        for _ in 0..300 {
            let (file, stored) = strategy
                .new_tree(&mut runner)
                .expect("the strategy rejects nothing")
                .current();
            checked.0 += overlap_problems(&file).len();
            checked.1 += stored_overlap_problems(&file, &stored).len();
        }
        assert!(checked.0 > 300 && checked.1 > 300, "{checked:?}");
    }

    #[test]
    fn references_must_resolve_in_the_file_or_the_database() {
        let text = r#"
customers:
  - {code: a, name: A, billing_cycle_start_day: 1, rate_plan: stored-plan}
  - {code: b, name: B, billing_cycle_start_day: 1, rate_plan: missing-plan}
subscriptions:
  - {identifier: "+31612345678", customer: a, provider: routit}
  - {identifier: "+31612345679", customer: stored, provider: routit}
  - {identifier: "+31612345670", customer: acme, provider: routit}
"#;
        let parsed = parse(text, no_env);
        assert!(parsed.is_valid());
        assert_eq!(
            parsed.customers_needed_from_database(),
            BTreeSet::from(["acme".to_string(), "stored".to_string()])
        );
        assert_eq!(
            parsed.plans_needed_from_database(),
            BTreeSet::from(["missing-plan".to_string(), "stored-plan".to_string()])
        );
        let found: Vec<String> = parsed
            .reference_problems(
                &BTreeSet::from(["stored".to_string()]),
                &BTreeSet::from(["stored-plan".to_string()]),
            )
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            vec![
                "customers[1].rate_plan: no rate plan \"missing-plan\" in this file or the database",
                "subscriptions[2].customer: no customer \"acme\" in this file or the database",
            ]
        );
    }

    #[test]
    fn identifiers_that_look_like_numbers_must_be_e164_and_line_ids_pass() {
        assert!(check_identifier("+31612345678").is_ok());
        assert!(check_identifier("+4915112345678").is_ok());
        assert!(check_identifier("LINE-0042").is_ok());
        assert!(check_identifier("kpn:abc123").is_ok());
        assert!(check_identifier("+3161").is_err());
        assert!(check_identifier("+031612345678").is_err());
        assert!(check_identifier("+31 6 1234 5678")
            .unwrap_err()
            .contains("write \"+31612345678\""));
        assert!(check_identifier("0031612345678")
            .unwrap_err()
            .contains("write \"+31612345678\""));
        assert!(check_identifier(" +31612345678")
            .unwrap_err()
            .contains("space"));
    }

    #[test]
    fn a_credentials_secret_must_be_an_id_not_the_credentials() {
        assert!(check_secret_id("tem/routit/main").is_ok());
        assert!(check_secret_id(
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:tem/routit-AbCdEf"
        )
        .is_ok());
        assert!(check_secret_id("{\"token\": \"abc\"}").is_err());
        assert!(check_secret_id("user pass").is_err());
        assert!(check_secret_id("").is_err());
    }
}
