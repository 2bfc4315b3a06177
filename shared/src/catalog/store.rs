//! Applying a parsed file to PostgreSQL: in one transaction, serialised
//! with any other apply, load what the file names, check what needs the
//! database, write what changed, record the apply and work out the
//! follow-up. A dry run does all of it and rolls back.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};

use super::changes::{
    diff, Change, ObjectKind, Stored, StoredCustomer, StoredPlan, StoredProfile,
    StoredSubscription, Summary,
};
use super::document::{stored_overlap_problems, Parsed, StoredPeriod};
use super::follow_up::{rerating, triggers, FollowUp, RerateCandidate};
use super::parties::{billing_fields, seller_fields};
use super::{Problem, Section};
use crate::billing::parties::{Address, PeppolId, SellerDetails, StoredBuyer};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{} problem(s), nothing was written:\n{}", .0.len(), list(.0))]
    Invalid(Vec<Problem>),
    #[error(
        "the database has no catalog_apply table (migration 0007); run `temctl migrate` first"
    )]
    NotMigrated,
    #[error("database error while {doing}: {source}")]
    Database {
        doing: &'static str,
        source: sqlx::Error,
    },
    /// A customer row whose pricing cannot be read, met while finding the
    /// cycles to re-rate: never priced with a guessed zone or day.
    #[error("customer {customer} is stored with {problem}; give it a valid one in the catalog file and apply again")]
    StoredCustomer { customer: String, problem: String },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {}", p.with_line()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> CatalogError {
    move |source| CatalogError::Database { doing, source }
}

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Where the file came from (its path), recorded with the apply.
    pub source: String,
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    /// The invoice grace period: a cycle stays open this long after its end.
    pub grace: Duration,
}

#[derive(Debug, Clone)]
pub struct Applied {
    pub changes: Vec<Change>,
    pub summary: Summary,
    /// The recorded apply (`catalog_apply.id`); `None` when nothing changed
    /// or on a dry run.
    pub revision: Option<i64>,
    pub follow_ups: Vec<FollowUp>,
}

/// Validates `parsed` against the database and upserts it in one
/// transaction (rolled back when `options.dry_run`). Any problem, found
/// while parsing or here, is [`CatalogError::Invalid`] and nothing is
/// written.
pub async fn apply(
    pool: &PgPool,
    parsed: &Parsed,
    options: &ApplyOptions,
) -> Result<Applied, CatalogError> {
    let mut tx = pool.begin().await.map_err(db("starting the transaction"))?;
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('catalog_apply') IS NOT NULL")
        .fetch_one(&mut *tx)
        .await
        .map_err(db("checking the schema"))?;
    if !migrated {
        return Err(CatalogError::NotMigrated);
    }
    // Two applies at once would each see the other's objects as missing.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('tem:catalog-apply', 0))")
        .execute(&mut *tx)
        .await
        .map_err(db("waiting for another apply to finish"))?;

    let stored = load(&mut tx, parsed).await?;
    let mut problems = parsed.problems.clone();
    problems.extend(parsed.reference_problems(
        &stored.customers.keys().cloned().collect(),
        &stored.rate_plans.keys().cloned().collect(),
    ));
    problems.extend(parsed.seller_reference_problems(&stored.seller_codes));
    problems.extend(super::cost_centres::tree_problems(
        &parsed.document,
        &stored,
    ));
    problems.extend(budget_node_problems(&parsed.document, &stored));
    let periods: Vec<StoredPeriod> = stored
        .subscriptions
        .iter()
        .map(|s| StoredPeriod {
            provider: s.provider.clone(),
            identifier: s.identifier.clone(),
            active_from: s.active_from,
            active_to: s.active_to,
            customer: s.customer.clone(),
        })
        .collect();
    problems.extend(stored_overlap_problems(
        &parsed.document.subscriptions,
        &periods,
    ));
    if !problems.is_empty() {
        Problem::sort(&mut problems);
        parsed.locate(&mut problems);
        return Err(CatalogError::Invalid(problems));
    }

    let changes = diff(&parsed.document, &stored);
    write(&mut tx, parsed, &stored, &changes).await?;
    let summary = Summary::of(&changes);
    let revision = if summary.changed > 0 && !options.dry_run {
        let changed: Vec<&Change> = changes.iter().filter(|c| c.is_change()).collect();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO catalog_apply (source, sha256, changed, changes) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&options.source)
        .bind(&parsed.sha256)
        .bind(i32::try_from(summary.changed).unwrap_or(i32::MAX))
        .bind(serde_json::to_value(&changed).unwrap_or(Value::Null))
        .fetch_one(&mut *tx)
        .await
        .map_err(db("recording the apply"))?;
        Some(id)
    } else {
        None
    };
    let follow_ups = follow_ups(&mut tx, &changes, options).await?;
    if options.dry_run {
        tx.rollback()
            .await
            .map_err(db("rolling back the dry run"))?;
    } else {
        tx.commit().await.map_err(db("committing"))?;
    }
    Ok(Applied {
        changes,
        summary,
        revision,
        follow_ups,
    })
}

/// The stored objects the file names or refers to.
async fn load(tx: &mut PgConnection, parsed: &Parsed) -> Result<Stored, CatalogError> {
    let doc = &parsed.document;
    let mut stored = Stored::default();

    let plan_ids: Vec<String> = parsed
        .declared_plans
        .iter()
        .cloned()
        .chain(parsed.plans_needed_from_database())
        .collect();
    let rows = sqlx::query("SELECT id, name, plan FROM rate_plan WHERE id = ANY($1)")
        .bind(&plan_ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("reading rate plans"))?;
    for row in rows {
        stored.rate_plans.insert(
            row.try_get("id").map_err(db("reading rate plans"))?,
            StoredPlan {
                name: row.try_get("name").map_err(db("reading rate plans"))?,
                plan: row.try_get("plan").map_err(db("reading rate plans"))?,
            },
        );
    }

    let codes: Vec<String> = parsed
        .declared_customers
        .iter()
        .cloned()
        .chain(parsed.customers_needed_from_database())
        .collect();
    let rows = sqlx::query(
        "SELECT id, code, name, billing_cycle_start_day, time_zone, rate_plan_id, cdr_retention_months FROM customer WHERE code = ANY($1)",
    )
    .bind(&codes)
    .fetch_all(&mut *tx)
    .await
    .map_err(db("reading customers"))?;
    for row in rows {
        let doing = "reading customers";
        let day: i16 = row.try_get("billing_cycle_start_day").map_err(db(doing))?;
        stored.customers.insert(
            row.try_get("code").map_err(db(doing))?,
            StoredCustomer {
                id: row.try_get("id").map_err(db(doing))?,
                name: row.try_get("name").map_err(db(doing))?,
                billing_cycle_start_day: u32::try_from(day).unwrap_or(0),
                time_zone: row.try_get("time_zone").map_err(db(doing))?,
                rate_plan: row.try_get("rate_plan_id").map_err(db(doing))?,
                cdr_retention_months: row
                    .try_get::<Option<i16>, _>("cdr_retention_months")
                    .map_err(db(doing))?
                    .and_then(|m| u16::try_from(m).ok()),
            },
        );
    }

    let identifiers: Vec<String> = doc
        .subscriptions
        .iter()
        .map(|s| s.identifier.clone())
        .collect();
    let rows = sqlx::query(
        "SELECT s.id, s.customer_id, coalesce(c.code, '#' || c.id) AS customer, s.provider, s.identifier,
                s.active_from, s.active_to
         FROM subscription s JOIN customer c ON c.id = s.customer_id
         WHERE s.identifier = ANY($1) ORDER BY s.id",
    )
    .bind(&identifiers)
    .fetch_all(&mut *tx)
    .await
    .map_err(db("reading subscriptions"))?;
    for row in rows {
        let doing = "reading subscriptions";
        stored.subscriptions.push(StoredSubscription {
            id: row.try_get("id").map_err(db(doing))?,
            customer_id: row.try_get("customer_id").map_err(db(doing))?,
            customer: row.try_get("customer").map_err(db(doing))?,
            provider: row.try_get("provider").map_err(db(doing))?,
            identifier: row.try_get("identifier").map_err(db(doing))?,
            active_from: row.try_get("active_from").map_err(db(doing))?,
            active_to: row.try_get("active_to").map_err(db(doing))?,
        });
    }

    load_parties(tx, parsed, &mut stored).await?;
    load_costs(tx, parsed, &mut stored).await?;
    load_budgets(tx, parsed, &mut stored).await?;
    load_buy_rates(tx, parsed, &mut stored).await?;

    let names: Vec<String> = doc.sync_profiles.iter().map(|p| p.name.clone()).collect();
    let rows = sqlx::query(
        "SELECT id, name, provider, base_url, credentials_secret, active, first_period, watermark_period
         FROM sync_profile WHERE name = ANY($1)",
    )
    .bind(&names)
    .fetch_all(&mut *tx)
    .await
    .map_err(db("reading sync profiles"))?;
    for row in rows {
        let doing = "reading sync profiles";
        stored.sync_profiles.insert(
            row.try_get("name").map_err(db(doing))?,
            StoredProfile {
                id: row.try_get("id").map_err(db(doing))?,
                provider: row.try_get("provider").map_err(db(doing))?,
                base_url: row.try_get("base_url").map_err(db(doing))?,
                credentials_secret: row.try_get("credentials_secret").map_err(db(doing))?,
                active: row.try_get("active").map_err(db(doing))?,
                first_period: row.try_get("first_period").map_err(db(doing))?,
                watermark_period: row.try_get("watermark_period").map_err(db(doing))?,
            },
        );
    }
    Ok(stored)
}

/// The seller and billing details versions the file names, and which of
/// the seller codes it refers to are stored.
async fn load_parties(
    tx: &mut PgConnection,
    parsed: &Parsed,
    stored: &mut Stored,
) -> Result<(), CatalogError> {
    let doing = "reading sellers";
    let codes: Vec<String> = parsed
        .declared_sellers
        .iter()
        .cloned()
        .chain(parsed.sellers_needed_from_database())
        .collect();
    let rows = sqlx::query(
        "SELECT seller_code, valid_from, legal_name, street, city, postcode, country, kvk, vat_number,
                iban, bic, payment_terms_days, peppol_scheme, peppol_id, invoice_number_format
         FROM seller_details WHERE seller_code = ANY($1)",
    )
    .bind(&codes)
    .fetch_all(&mut *tx)
    .await
    .map_err(db(doing))?;
    for row in rows {
        let terms: i32 = row.try_get("payment_terms_days").map_err(db(doing))?;
        let details = SellerDetails {
            code: row.try_get("seller_code").map_err(db(doing))?,
            valid_from: row.try_get("valid_from").map_err(db(doing))?,
            legal_name: row.try_get("legal_name").map_err(db(doing))?,
            address: Address {
                street: row.try_get("street").map_err(db(doing))?,
                city: row.try_get("city").map_err(db(doing))?,
                postcode: row.try_get("postcode").map_err(db(doing))?,
                country: row.try_get("country").map_err(db(doing))?,
            },
            kvk: row.try_get("kvk").map_err(db(doing))?,
            vat_number: row.try_get("vat_number").map_err(db(doing))?,
            iban: row.try_get("iban").map_err(db(doing))?,
            bic: row.try_get("bic").map_err(db(doing))?,
            payment_terms_days: u32::try_from(terms).unwrap_or(0),
            peppol: PeppolId {
                scheme: row.try_get("peppol_scheme").map_err(db(doing))?,
                id: row.try_get("peppol_id").map_err(db(doing))?,
            },
            invoice_number_format: row.try_get("invoice_number_format").map_err(db(doing))?,
        };
        stored.seller_codes.insert(details.code.clone());
        stored.sellers.insert(
            (details.code.clone(), details.valid_from),
            seller_fields(&details),
        );
    }

    let doing = "reading billing details";
    let customers: Vec<String> = parsed
        .document
        .billing_details
        .iter()
        .map(|b| b.customer.clone())
        .collect();
    let rows = sqlx::query(
        "SELECT c.code, b.valid_from, b.seller_code, b.legal_name, b.street, b.city, b.postcode,
                b.country, b.vat_number, b.peppol_scheme, b.peppol_id, b.invoice_email,
                b.buyer_reference, b.purchase_order, b.payment_terms_days, b.vat_category
         FROM customer_billing_details b JOIN customer c ON c.id = b.customer_id
         WHERE c.code = ANY($1)",
    )
    .bind(&customers)
    .fetch_all(&mut *tx)
    .await
    .map_err(db(doing))?;
    for row in rows {
        let code: String = row.try_get("code").map_err(db(doing))?;
        let valid_from: NaiveDate = row.try_get("valid_from").map_err(db(doing))?;
        let terms: Option<i32> = row.try_get("payment_terms_days").map_err(db(doing))?;
        let details = StoredBuyer {
            customer_id: 0,
            valid_from: Some(valid_from),
            seller: row.try_get("seller_code").map_err(db(doing))?,
            legal_name: row.try_get("legal_name").map_err(db(doing))?,
            street: row.try_get("street").map_err(db(doing))?,
            city: row.try_get("city").map_err(db(doing))?,
            postcode: row.try_get("postcode").map_err(db(doing))?,
            country: row.try_get("country").map_err(db(doing))?,
            vat_number: row.try_get("vat_number").map_err(db(doing))?,
            peppol_scheme: row.try_get("peppol_scheme").map_err(db(doing))?,
            peppol_id: row.try_get("peppol_id").map_err(db(doing))?,
            invoice_email: row.try_get("invoice_email").map_err(db(doing))?,
            buyer_reference: row.try_get("buyer_reference").map_err(db(doing))?,
            purchase_order: row.try_get("purchase_order").map_err(db(doing))?,
            payment_terms_days: terms.and_then(|t| u32::try_from(t).ok()),
            vat_category: row.try_get("vat_category").map_err(db(doing))?,
        };
        stored
            .billing_details
            .insert((code, valid_from), billing_fields(&details));
    }
    Ok(())
}

/// Writes the seller versions that changed (before the customers).
async fn write_sellers(
    tx: &mut PgConnection,
    parsed: &Parsed,
    changes: &[Change],
) -> Result<(), CatalogError> {
    for (entry, change) in parsed
        .document
        .sellers
        .iter()
        .zip(changed_in(changes, ObjectKind::Seller))
    {
        if !change.is_change() {
            continue;
        }
        let d = &entry.details;
        sqlx::query(
            "INSERT INTO seller_details (seller_code, valid_from, legal_name, street, city, postcode, country,
                 kvk, vat_number, iban, bic, payment_terms_days, peppol_scheme, peppol_id, invoice_number_format)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (seller_code, valid_from) DO UPDATE SET legal_name = EXCLUDED.legal_name,
                 street = EXCLUDED.street, city = EXCLUDED.city, postcode = EXCLUDED.postcode,
                 country = EXCLUDED.country, kvk = EXCLUDED.kvk, vat_number = EXCLUDED.vat_number,
                 iban = EXCLUDED.iban, bic = EXCLUDED.bic, payment_terms_days = EXCLUDED.payment_terms_days,
                 peppol_scheme = EXCLUDED.peppol_scheme, peppol_id = EXCLUDED.peppol_id,
                 invoice_number_format = EXCLUDED.invoice_number_format, updated_at = now()",
        )
        .bind(&d.code)
        .bind(d.valid_from)
        .bind(&d.legal_name)
        .bind(&d.address.street)
        .bind(&d.address.city)
        .bind(&d.address.postcode)
        .bind(&d.address.country)
        .bind(&d.kvk)
        .bind(&d.vat_number)
        .bind(&d.iban)
        .bind(&d.bic)
        .bind(i32::try_from(d.payment_terms_days).unwrap_or(i32::MAX))
        .bind(&d.peppol.scheme)
        .bind(&d.peppol.id)
        .bind(&d.invoice_number_format)
        .execute(&mut *tx)
        .await
        .map_err(db("writing sellers"))?;
    }
    Ok(())
}

/// Writes the billing details versions that changed (after the customers,
/// whose ids they need). One statement per version: there is one version
/// per customer and change, not per subscription.
async fn write_billing_details(
    tx: &mut PgConnection,
    parsed: &Parsed,
    changes: &[Change],
    customer_ids: &BTreeMap<String, i64>,
) -> Result<(), CatalogError> {
    for (entry, change) in parsed
        .document
        .billing_details
        .iter()
        .zip(changed_in(changes, ObjectKind::BillingDetails))
    {
        if !change.is_change() {
            continue;
        }
        let customer_id = customer_ids.get(&entry.customer).copied().ok_or_else(|| {
            CatalogError::Invalid(vec![Problem::at(
                Section::BillingDetails,
                entry.at,
                ".customer",
                format!(
                    "no customer {:?} in this file or the database",
                    entry.customer
                ),
            )])
        })?;
        let d = &entry.details;
        sqlx::query(
            "INSERT INTO customer_billing_details (customer_id, valid_from, seller_code, legal_name, street,
                 city, postcode, country, vat_number, peppol_scheme, peppol_id, invoice_email,
                 buyer_reference, purchase_order, payment_terms_days, vat_category)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             ON CONFLICT (customer_id, valid_from) DO UPDATE SET seller_code = EXCLUDED.seller_code,
                 legal_name = EXCLUDED.legal_name, street = EXCLUDED.street, city = EXCLUDED.city,
                 postcode = EXCLUDED.postcode, country = EXCLUDED.country, vat_number = EXCLUDED.vat_number,
                 peppol_scheme = EXCLUDED.peppol_scheme, peppol_id = EXCLUDED.peppol_id,
                 invoice_email = EXCLUDED.invoice_email, buyer_reference = EXCLUDED.buyer_reference,
                 purchase_order = EXCLUDED.purchase_order, payment_terms_days = EXCLUDED.payment_terms_days,
                 vat_category = EXCLUDED.vat_category, updated_at = now()",
        )
        .bind(customer_id)
        .bind(d.valid_from)
        .bind(&d.seller)
        .bind(&d.legal_name)
        .bind(&d.street)
        .bind(&d.city)
        .bind(&d.postcode)
        .bind(&d.country)
        .bind(&d.vat_number)
        .bind(&d.peppol_scheme)
        .bind(&d.peppol_id)
        .bind(&d.invoice_email)
        .bind(&d.buyer_reference)
        .bind(&d.purchase_order)
        .bind(d.payment_terms_days.map(|t| i32::try_from(t).unwrap_or(i32::MAX)))
        .bind(&d.vat_category)
        .execute(&mut *tx)
        .await
        .map_err(db("writing billing details"))?;
    }
    Ok(())
}

/// The stored cost trees and assignments of the customers the file's cost
/// sections name.
async fn load_costs(
    tx: &mut PgConnection,
    parsed: &Parsed,
    stored: &mut Stored,
) -> Result<(), CatalogError> {
    let doc = &parsed.document;
    let customers: Vec<String> = doc
        .cost_centres
        .iter()
        .map(|e| e.customer.clone())
        .chain(doc.cost_assignments.iter().map(|e| e.customer.clone()))
        // A cost-centre budget names a node of the customer's tree.
        .chain(
            doc.budgets
                .iter()
                .filter(|b| matches!(b.budget.scope, crate::budgets::Scope::CostCentre(_)))
                .map(|b| b.customer.clone()),
        )
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if customers.is_empty() {
        return Ok(());
    }
    let doing = "reading cost trees";
    let rows = sqlx::query(
        "SELECT c.code AS customer, n.code, n.name, n.kind, n.parent_code, n.gl_codes
         FROM cost_node n JOIN customer c ON c.id = n.customer_id
         WHERE c.code = ANY($1) ORDER BY c.code, n.code",
    )
    .bind(&customers)
    .fetch_all(&mut *tx)
    .await
    .map_err(db(doing))?;
    for row in rows {
        let customer: String = row.try_get("customer").map_err(db(doing))?;
        let node = crate::adapters::costs::node_from_row(&row).map_err(db(doing))?;
        stored.cost_trees.entry(customer).or_default().push(node);
    }
    let doing = "reading cost assignments";
    let rows = sqlx::query(
        "SELECT c.code AS customer, a.subscription, a.valid_from, a.shares, a.by_class
         FROM cost_assignment a JOIN customer c ON c.id = a.customer_id
         WHERE c.code = ANY($1) ORDER BY c.code, a.subscription, a.valid_from",
    )
    .bind(&customers)
    .fetch_all(&mut *tx)
    .await
    .map_err(db(doing))?;
    for row in rows {
        let customer: String = row.try_get("customer").map_err(db(doing))?;
        let assignment = crate::adapters::costs::assignment_from_row(&row).map_err(db(doing))?;
        stored
            .cost_assignments
            .entry(customer)
            .or_default()
            .push(assignment);
    }
    Ok(())
}

/// Writes the cost nodes and assignments that changed and removes the
/// nodes a customer's tree in the file leaves out (after the customers,
/// whose ids they need).
async fn write_costs(
    tx: &mut PgConnection,
    parsed: &Parsed,
    changes: &[Change],
    customer_ids: &BTreeMap<String, i64>,
) -> Result<(), CatalogError> {
    let doc = &parsed.document;
    let id_of = |section: Section, at: usize, customer: &str| {
        customer_ids.get(customer).copied().ok_or_else(|| {
            CatalogError::Invalid(vec![Problem::at(
                section,
                at,
                ".customer",
                format!("no customer {customer:?} in this file or the database"),
            )])
        })
    };
    // A customer's nodes in the file are its whole tree: the others go
    // (the diff lists them as removed). By customer and the file's codes,
    // not by parsing the changes' labels, as codes may hold any character.
    let mut trees: BTreeMap<&str, (usize, Vec<String>)> = BTreeMap::new();
    for entry in &doc.cost_centres {
        trees
            .entry(entry.customer.as_str())
            .or_insert_with(|| (entry.at, Vec::new()))
            .1
            .push(entry.node.code.clone());
    }
    for (customer, (at, codes)) in &trees {
        let customer_id = id_of(Section::CostCentres, *at, customer)?;
        sqlx::query("DELETE FROM cost_node WHERE customer_id = $1 AND NOT (code = ANY($2))")
            .bind(customer_id)
            .bind(codes)
            .execute(&mut *tx)
            .await
            .map_err(db("removing cost nodes"))?;
    }
    let node_changes = changed_in(changes, ObjectKind::CostNode);
    for (entry, change) in doc.cost_centres.iter().zip(node_changes) {
        if !change.is_change() {
            continue;
        }
        let customer_id = id_of(Section::CostCentres, entry.at, &entry.customer)?;
        let n = &entry.node;
        sqlx::query(
            "INSERT INTO cost_node (customer_id, code, name, kind, parent_code, gl_codes)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (customer_id, code) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind,
                 parent_code = EXCLUDED.parent_code, gl_codes = EXCLUDED.gl_codes, updated_at = now()",
        )
        .bind(customer_id)
        .bind(&n.code)
        .bind(&n.name)
        .bind(super::cost_centres::kind_name(n.kind))
        .bind(&n.parent)
        .bind(serde_json::to_value(&n.gl_codes).unwrap_or(Value::Null))
        .execute(&mut *tx)
        .await
        .map_err(db("writing cost nodes"))?;
    }
    for (entry, change) in doc
        .cost_assignments
        .iter()
        .zip(changed_in(changes, ObjectKind::CostAssignment))
    {
        if !change.is_change() {
            continue;
        }
        let customer_id = id_of(Section::CostAssignments, entry.at, &entry.customer)?;
        let a = &entry.assignment;
        sqlx::query(
            "INSERT INTO cost_assignment (customer_id, subscription, valid_from, shares, by_class)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (customer_id, subscription, valid_from) DO UPDATE SET shares = EXCLUDED.shares,
                 by_class = EXCLUDED.by_class, updated_at = now()",
        )
        .bind(customer_id)
        .bind(&a.subscription)
        .bind(a.valid_from)
        .bind(serde_json::to_value(&a.default).unwrap_or(Value::Null))
        .bind(serde_json::to_value(&a.by_class).unwrap_or(Value::Null))
        .execute(&mut *tx)
        .await
        .map_err(db("writing cost assignments"))?;
    }
    Ok(())
}

/// A cost-centre budget names a node of its customer's tree: the file's
/// tree when the file has one for the customer, else the stored one.
fn budget_node_problems(document: &super::Document, stored: &Stored) -> Vec<Problem> {
    let mut problems = Vec::new();
    for b in &document.budgets {
        let crate::budgets::Scope::CostCentre(code) = &b.budget.scope else {
            continue;
        };
        let in_file: Vec<&str> = document
            .cost_centres
            .iter()
            .filter(|n| n.customer == b.customer)
            .map(|n| n.node.code.as_str())
            .collect();
        let known = if in_file.is_empty() {
            stored
                .cost_trees
                .get(&b.customer)
                .is_some_and(|nodes| nodes.iter().any(|n| &n.code == code))
        } else {
            in_file.contains(&code.as_str())
        };
        if !known {
            problems.push(Problem::at(
                Section::Budgets,
                b.at,
                ".cost_centre",
                format!(
                    "customer {:?} has no cost centre {code:?}; add it under cost_centres or budget another node",
                    b.customer
                ),
            ));
        }
    }
    problems
}

/// The stored budget and alert rule versions of the customers the file's
/// `budgets` and `alert_rules` name.
async fn load_budgets(
    tx: &mut PgConnection,
    parsed: &Parsed,
    stored: &mut Stored,
) -> Result<(), CatalogError> {
    let doc = &parsed.document;
    let customers: Vec<String> = doc
        .budgets
        .iter()
        .map(|b| b.customer.clone())
        .chain(doc.alert_rules.iter().map(|r| r.customer.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if customers.is_empty() {
        return Ok(());
    }
    let doing = "reading budgets";
    let rows = sqlx::query(
        "SELECT c.code AS customer, b.scope, b.subject, b.valid_from, b.amount_micros, b.thresholds
         FROM budget b JOIN customer c ON c.id = b.customer_id WHERE c.code = ANY($1)",
    )
    .bind(&customers)
    .fetch_all(&mut *tx)
    .await
    .map_err(db(doing))?;
    for row in rows {
        let customer: String = row.try_get("customer").map_err(db(doing))?;
        let scope: String = row.try_get("scope").map_err(db(doing))?;
        let subject: String = row.try_get("subject").map_err(db(doing))?;
        let valid_from: NaiveDate = row.try_get("valid_from").map_err(db(doing))?;
        let amount: i64 = row.try_get("amount_micros").map_err(db(doing))?;
        let thresholds: Vec<i32> = row.try_get("thresholds").map_err(db(doing))?;
        let Some(scope) = super::budgets::scope_from(&scope, &subject) else {
            continue;
        };
        // Compared as text: a stored row the rules no longer accept shows
        // as updated by the file's version.
        let fields = vec![
            ("amount_micros", amount.to_string()),
            (
                "thresholds",
                thresholds
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ];
        stored.budgets.insert(
            super::budgets::budget_label(&customer, &scope, valid_from),
            fields,
        );
    }
    let doing = "reading alert rules";
    let rows = sqlx::query(
        "SELECT c.code AS customer, r.valid_from, r.bill_shock_limit_micros, r.anomaly_k_percent,
                r.anomaly_floor_micros
         FROM alert_rule r JOIN customer c ON c.id = r.customer_id WHERE c.code = ANY($1)",
    )
    .bind(&customers)
    .fetch_all(&mut *tx)
    .await
    .map_err(db(doing))?;
    for row in rows {
        let customer: String = row.try_get("customer").map_err(db(doing))?;
        let valid_from: NaiveDate = row.try_get("valid_from").map_err(db(doing))?;
        let limit: Option<i64> = row.try_get("bill_shock_limit_micros").map_err(db(doing))?;
        let k: Option<i32> = row.try_get("anomaly_k_percent").map_err(db(doing))?;
        let floor: Option<i64> = row.try_get("anomaly_floor_micros").map_err(db(doing))?;
        let rules = super::budgets::AlertRules {
            bill_shock_limit_micros: limit,
            anomaly: k
                .zip(floor)
                .map(|(k, f)| (u32::try_from(k).unwrap_or(0), f)),
        };
        stored.alert_rules.insert(
            super::budgets::rules_label(&customer, valid_from),
            super::budgets::rules_fields(&rules),
        );
    }
    Ok(())
}

/// Writes the budget and alert rule versions that changed.
async fn write_budgets(
    tx: &mut PgConnection,
    parsed: &Parsed,
    changes: &[Change],
    customer_ids: &BTreeMap<String, i64>,
) -> Result<(), CatalogError> {
    let doc = &parsed.document;
    let id_of = |section: Section, at: usize, customer: &str| {
        customer_ids.get(customer).copied().ok_or_else(|| {
            CatalogError::Invalid(vec![Problem::at(
                section,
                at,
                ".customer",
                format!("no customer {customer:?} in this file or the database"),
            )])
        })
    };
    for (entry, change) in doc
        .budgets
        .iter()
        .zip(changed_in(changes, ObjectKind::Budget))
    {
        if !change.is_change() {
            continue;
        }
        let customer_id = id_of(Section::Budgets, entry.at, &entry.customer)?;
        let (scope, subject) = super::budgets::scope_key(&entry.budget.scope);
        let thresholds: Vec<i32> = entry
            .budget
            .thresholds
            .iter()
            .map(|t| i32::try_from(*t).unwrap_or(i32::MAX))
            .collect();
        sqlx::query(
            "INSERT INTO budget (customer_id, scope, subject, valid_from, amount_micros, thresholds)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (customer_id, scope, subject, valid_from) DO UPDATE
             SET amount_micros = EXCLUDED.amount_micros, thresholds = EXCLUDED.thresholds, updated_at = now()",
        )
        .bind(customer_id)
        .bind(scope)
        .bind(subject)
        .bind(entry.valid_from)
        .bind(entry.budget.amount_micros)
        .bind(&thresholds)
        .execute(&mut *tx)
        .await
        .map_err(db("writing budgets"))?;
    }
    for (entry, change) in doc
        .alert_rules
        .iter()
        .zip(changed_in(changes, ObjectKind::AlertRules))
    {
        if !change.is_change() {
            continue;
        }
        let customer_id = id_of(Section::AlertRules, entry.at, &entry.customer)?;
        let r = &entry.rules;
        sqlx::query(
            "INSERT INTO alert_rule (customer_id, valid_from, bill_shock_limit_micros,
                                     anomaly_k_percent, anomaly_floor_micros)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (customer_id, valid_from) DO UPDATE
             SET bill_shock_limit_micros = EXCLUDED.bill_shock_limit_micros,
                 anomaly_k_percent = EXCLUDED.anomaly_k_percent,
                 anomaly_floor_micros = EXCLUDED.anomaly_floor_micros, updated_at = now()",
        )
        .bind(customer_id)
        .bind(entry.valid_from)
        .bind(r.bill_shock_limit_micros)
        .bind(r.anomaly.map(|(k, _)| i32::try_from(k).unwrap_or(i32::MAX)))
        .bind(r.anomaly.map(|(_, f)| f))
        .execute(&mut *tx)
        .await
        .map_err(db("writing alert rules"))?;
    }
    Ok(())
}

/// The stored versions of the file's buy rates.
async fn load_buy_rates(
    tx: &mut PgConnection,
    parsed: &Parsed,
    stored: &mut Stored,
) -> Result<(), CatalogError> {
    let rates = &parsed.document.buy_rates;
    if rates.is_empty() {
        return Ok(());
    }
    let doing = "reading buy rates";
    let column = |f: fn(&crate::audit::BuyRate) -> String| -> Vec<String> {
        rates.iter().map(|e| f(&e.rate)).collect()
    };
    let rows = sqlx::query(
        "SELECT b.provider, b.account, b.subscription, b.valid_from, b.recurring_micros
         FROM buy_rate b
         JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(provider, account, subscription)
           ON (b.provider, b.account, b.subscription) = (k.provider, k.account, k.subscription)",
    )
    .bind(column(|r| r.provider.clone()))
    .bind(column(|r| r.account.clone()))
    .bind(column(|r| r.subscription.clone()))
    .fetch_all(&mut *tx)
    .await
    .map_err(db(doing))?;
    for row in rows {
        stored.buy_rates.insert(
            (
                row.try_get("provider").map_err(db(doing))?,
                row.try_get("account").map_err(db(doing))?,
                row.try_get("subscription").map_err(db(doing))?,
                row.try_get("valid_from").map_err(db(doing))?,
            ),
            row.try_get("recurring_micros").map_err(db(doing))?,
        );
    }
    Ok(())
}

/// Upserts the buy rates that changed.
async fn write_buy_rates(
    tx: &mut PgConnection,
    parsed: &Parsed,
    changes: &[Change],
) -> Result<(), CatalogError> {
    for (entry, change) in parsed
        .document
        .buy_rates
        .iter()
        .zip(changed_in(changes, ObjectKind::BuyRate))
    {
        if !change.is_change() {
            continue;
        }
        let r = &entry.rate;
        sqlx::query(
            "INSERT INTO buy_rate (provider, account, subscription, valid_from, recurring_micros)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (provider, account, subscription, valid_from)
             DO UPDATE SET recurring_micros = EXCLUDED.recurring_micros, updated_at = now()",
        )
        .bind(&r.provider)
        .bind(&r.account)
        .bind(&r.subscription)
        .bind(r.valid_from)
        .bind(r.recurring_micros)
        .execute(&mut *tx)
        .await
        .map_err(db("writing buy rates"))?;
    }
    Ok(())
}

/// Rows per batched INSERT of customers and subscriptions.
const WRITE_BATCH: usize = 10_000;

fn changed_in(changes: &[Change], object: ObjectKind) -> impl Iterator<Item = &Change> {
    changes.iter().filter(move |c| c.object == object)
}

/// Upserts the entries that changed, in dependency order. The upserts key on
/// the natural keys, so they are right even if a row appeared since it was
/// read (which the advisory lock makes unlikely, but other writers exist).
async fn write(
    tx: &mut PgConnection,
    parsed: &Parsed,
    stored: &Stored,
    changes: &[Change],
) -> Result<(), CatalogError> {
    let doc = &parsed.document;
    for (entry, change) in doc
        .rate_plans
        .iter()
        .zip(changed_in(changes, ObjectKind::RatePlan))
    {
        if !change.is_change() {
            continue;
        }
        let plan = serde_json::to_value(&entry.plan).map_err(|e| {
            CatalogError::Invalid(vec![Problem::at(
                Section::RatePlans,
                entry.at,
                "",
                format!("cannot be stored: {e}"),
            )])
        })?;
        sqlx::query(
            "INSERT INTO rate_plan (id, name, plan, updated_at) VALUES ($1, $2, $3, now())
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, plan = EXCLUDED.plan, updated_at = now()",
        )
        .bind(&entry.plan.id)
        .bind(&entry.plan.name)
        .bind(plan)
        .execute(&mut *tx)
        .await
        .map_err(db("writing rate plans"))?;
    }

    write_sellers(tx, parsed, changes).await?;

    let mut customer_ids: BTreeMap<String, i64> = stored
        .customers
        .iter()
        .map(|(code, c)| (code.clone(), c.id))
        .collect();
    // Customers and subscriptions are written in batches, one statement per
    // WRITE_BATCH rows through UNNEST: a file of 50,000 subscriptions is a
    // handful of round trips, not 50,000. Keys are unique within a file
    // (duplicate_keys), so no statement touches a row twice.
    let customers: Vec<&super::document::Customer> = doc
        .customers
        .iter()
        .zip(changed_in(changes, ObjectKind::Customer))
        .filter(|(_, change)| change.is_change())
        .map(|(customer, _)| customer)
        .collect();
    for batch in customers.chunks(WRITE_BATCH) {
        let rows = sqlx::query(
            "INSERT INTO customer (code, name, billing_cycle_start_day, time_zone, rate_plan_id, cdr_retention_months)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int2[], $4::text[], $5::text[], $6::int2[])
             ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name,
                 billing_cycle_start_day = EXCLUDED.billing_cycle_start_day,
                 time_zone = EXCLUDED.time_zone, rate_plan_id = EXCLUDED.rate_plan_id,
                 cdr_retention_months = EXCLUDED.cdr_retention_months
             RETURNING code, id",
        )
        .bind(batch.iter().map(|c| c.code.clone()).collect::<Vec<_>>())
        .bind(batch.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|c| i16::try_from(c.billing_cycle_start_day).unwrap_or(1))
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|c| c.time_zone.name().to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|c| c.rate_plan.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|c| c.cdr_retention_months.map(|m| m as i16))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db("writing customers"))?;
        for row in rows {
            customer_ids.insert(
                row.try_get("code").map_err(db("writing customers"))?,
                row.try_get("id").map_err(db("writing customers"))?,
            );
        }
    }

    write_billing_details(tx, parsed, changes, &customer_ids).await?;
    write_costs(tx, parsed, changes, &customer_ids).await?;
    write_budgets(tx, parsed, changes, &customer_ids).await?;
    write_buy_rates(tx, parsed, changes).await?;

    let mut subscriptions = Vec::new();
    for (s, change) in doc
        .subscriptions
        .iter()
        .zip(changed_in(changes, ObjectKind::Subscription))
    {
        if !change.is_change() {
            continue;
        }
        let customer_id = customer_ids.get(&s.customer).copied().ok_or_else(|| {
            CatalogError::Invalid(vec![Problem::at(
                Section::Subscriptions,
                s.at,
                ".customer",
                format!("no customer {:?} in this file or the database", s.customer),
            )])
        })?;
        subscriptions.push((customer_id, s));
    }
    for batch in subscriptions.chunks(WRITE_BATCH) {
        sqlx::query(
            "INSERT INTO subscription (customer_id, provider, identifier, active_from, active_to)
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::date[], $5::date[])
             ON CONFLICT (provider, identifier, active_from) DO UPDATE SET
                 customer_id = EXCLUDED.customer_id, active_to = EXCLUDED.active_to",
        )
        .bind(batch.iter().map(|(id, _)| *id).collect::<Vec<i64>>())
        .bind(
            batch
                .iter()
                .map(|(_, s)| s.provider.as_str().to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|(_, s)| s.identifier.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|(_, s)| s.active_from)
                .collect::<Vec<NaiveDate>>(),
        )
        .bind(
            batch
                .iter()
                .map(|(_, s)| s.active_to)
                .collect::<Vec<Option<NaiveDate>>>(),
        )
        .execute(&mut *tx)
        .await
        .map_err(db("writing subscriptions"))?;
    }

    for (p, change) in doc
        .sync_profiles
        .iter()
        .zip(changed_in(changes, ObjectKind::SyncProfile))
    {
        if !change.is_change() {
            continue;
        }
        // The watermark is operational state, not configuration: kept,
        // unless it lies before the new first period (see changes.rs).
        sqlx::query(
            "INSERT INTO sync_profile (name, provider, base_url, credentials_secret, active, first_period)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET provider = EXCLUDED.provider, base_url = EXCLUDED.base_url,
                 credentials_secret = EXCLUDED.credentials_secret, active = EXCLUDED.active,
                 first_period = EXCLUDED.first_period,
                 watermark_period = CASE WHEN sync_profile.watermark_period < EXCLUDED.first_period
                                         THEN NULL ELSE sync_profile.watermark_period END,
                 updated_at = now()",
        )
        .bind(&p.name)
        .bind(p.provider.as_str())
        .bind(&p.base_url)
        .bind(&p.credentials_secret)
        .bind(p.active)
        .bind(p.first_period)
        .execute(&mut *tx)
        .await
        .map_err(db("writing sync profiles"))?;
    }
    Ok(())
}

/// The follow-up of `changes`, from the customers and totals as they are
/// after the writes.
async fn follow_ups(
    tx: &mut PgConnection,
    changes: &[Change],
    options: &ApplyOptions,
) -> Result<Vec<FollowUp>, CatalogError> {
    let triggers = triggers(changes);
    let mut follow_ups = Vec::new();
    if !triggers.plans.is_empty() || !triggers.customers.is_empty() || !triggers.budgets.is_empty()
    {
        let doing = "reading the cycles to re-rate";
        let codes: Vec<String> = triggers
            .customers
            .keys()
            .chain(&triggers.budgets)
            .cloned()
            .collect();
        // Customers named for their budgets alone: only their cycles with
        // totals (a cycle without any has nothing a budget could see).
        let mut budgets_only: BTreeMap<i64, Vec<NaiveDate>> = BTreeMap::new();
        let plans: Vec<String> = triggers.plans.iter().cloned().collect();
        let rows = sqlx::query(
            "SELECT c.id, c.code, c.billing_cycle_start_day, c.time_zone, c.rate_plan_id,
                    coalesce(array_agg(t.cycle ORDER BY t.cycle) FILTER (WHERE t.cycle IS NOT NULL), '{}') AS cycles
             FROM customer c LEFT JOIN totals t ON t.customer_id = c.id
             WHERE c.code = ANY($1) OR c.rate_plan_id = ANY($2)
             GROUP BY c.id ORDER BY c.id",
        )
        .bind(&codes)
        .bind(&plans)
        .fetch_all(&mut *tx)
        .await
        .map_err(db(doing))?;
        let mut candidates = Vec::new();
        for row in rows {
            let id: i64 = row.try_get("id").map_err(db(doing))?;
            let code: Option<String> = row.try_get("code").map_err(db(doing))?;
            let plan: Option<String> = row.try_get("rate_plan_id").map_err(db(doing))?;
            let day: i16 = row.try_get("billing_cycle_start_day").map_err(db(doing))?;
            let zone: String = row.try_get("time_zone").map_err(db(doing))?;
            let repriced = code
                .as_ref()
                .is_some_and(|c| triggers.customers.contains_key(c))
                || plan.as_ref().is_some_and(|p| triggers.plans.contains(p));
            let reason = code
                .as_ref()
                .and_then(|c| triggers.customers.get(c).cloned())
                .or_else(|| {
                    plan.as_ref()
                        .filter(|p| triggers.plans.contains(*p))
                        .map(|p| format!("rate plan {p} changed"))
                })
                .unwrap_or_else(|| "its budgets or alert rules changed".to_string());
            let customer = code.unwrap_or_else(|| format!("#{id}"));
            let time_zone = zone
                .parse::<Tz>()
                .map_err(|_| CatalogError::StoredCustomer {
                    customer: customer.clone(),
                    problem: format!("time zone {zone:?}, which is not an IANA zone name"),
                })?;
            let billing_cycle_start_day = u32::try_from(day)
                .ok()
                .filter(|d| (1..=28).contains(d))
                .ok_or_else(|| CatalogError::StoredCustomer {
                    customer: customer.clone(),
                    problem: format!("billing cycle start day {day}, which is not 1 to 28"),
                })?;
            let cycles_with_totals = row
                .try_get::<Vec<NaiveDate>, _>("cycles")
                .map_err(db(doing))?;
            if !repriced {
                budgets_only.insert(id, cycles_with_totals.clone());
            }
            candidates.push(RerateCandidate {
                customer_id: id,
                customer,
                billing_cycle_start_day,
                time_zone,
                cycles_with_totals,
                reason,
            });
        }
        follow_ups.extend(
            rerating(&candidates, options.now, options.grace)
                .into_iter()
                .filter(|f| match f {
                    FollowUp::Rerate {
                        customer_id, cycle, ..
                    } => budgets_only
                        .get(customer_id)
                        .is_none_or(|with_totals| with_totals.contains(cycle)),
                    _ => true,
                }),
        );
    }
    if triggers.sellers || !triggers.billing_details.is_empty() {
        // The drafts a missing piece of billing data kept from being
        // issued: of the customers whose details changed, or of anyone
        // when a seller's did.
        let doing = "reading the blocked invoices";
        let codes: Vec<String> = triggers.billing_details.iter().cloned().collect();
        let rows: Vec<(i64, Option<String>, NaiveDate)> = sqlx::query_as(
            "SELECT i.customer_id, c.code, i.cycle FROM invoice i JOIN customer c ON c.id = i.customer_id
             WHERE i.status = 'draft' AND i.blocked_reason IS NOT NULL AND ($1 OR c.code = ANY($2))
             ORDER BY i.customer_id, i.cycle",
        )
        .bind(triggers.sellers)
        .bind(&codes)
        .fetch_all(&mut *tx)
        .await
        .map_err(db(doing))?;
        follow_ups.extend(rows.into_iter().map(|(customer_id, code, cycle)| {
            FollowUp::IssueBlocked {
                customer_id,
                customer: code.unwrap_or_else(|| format!("#{customer_id}")),
                cycle,
            }
        }));
    }
    if triggers.subscriptions > 0 {
        follow_ups.push(FollowUp::AttachUnassigned {
            subscriptions: triggers.subscriptions,
        });
    }
    Ok(follow_ups)
}
