//! A simulator of the carriers' usage-export endpoints, for tests and the
//! local run (no carrier is reachable from here).
//!
//! - `GET  /{provider}/exports/{period}`: a period's export as a ZIP of CSV
//!   (every provider except Routit), with an `X-Export-Id` header.
//! - `POST /routit/exports` `{"period", "reference"}` -> `{"export_id"}`; the
//!   same reference returns the same export.
//! - `GET  /routit/exports/{id}` -> `{"status": "pending"|"ready"}`.
//! - `GET  /routit/exports/{id}/file`: the ZIP.
//! - `GET  /{provider}/carrier-invoices/{period}`: the carrier's own invoice
//!   for the month starting on `period` (YYYY-MM-01), in that carrier's
//!   invoice format (`formats/carrier_invoices/`): per subscriber the
//!   usage of that month's daily exports and a recurring charge.
//! - `PUT  /_control/{provider}` with a [`Behaviour`]: make a provider fail,
//!   answer slowly, or keep Routit exports pending for some polls.
//! - `GET  /_stats`: how often each endpoint was called, per provider.
//!
//! Every export endpoint wants `Authorization: Bearer {token}` (or Basic with
//! the token as password).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const PROVIDERS: [&str; 7] = [
    "kpn_sp16", "kpn_een", "vodafone", "t_mobile", "routit", "yielder", "telfort",
];

/// How one provider behaves until told otherwise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Behaviour {
    /// Answer every export call with this HTTP status (e.g. 503) instead.
    pub fail_with: Option<u16>,
    /// Wait this long before answering.
    pub delay_ms: u64,
    /// Routit: answer "pending" this many times before "ready".
    pub not_ready_polls: u32,
    /// CDR rows per export.
    pub rows: usize,
    /// Subscriber numbers the rows cycle through: row `i` belongs to
    /// subscriber `i % subscribers` ([`subscriber_number`]); at most
    /// [`MAX_SUBSCRIBERS`].
    pub subscribers: usize,
    /// The recurring charge each subscriber is billed on the carrier
    /// invoice, in cents.
    pub recurring_cents: u32,
}

/// The most subscribers an export can name: the other carriers' numbers
/// have four digits after their prefix.
pub const MAX_SUBSCRIBERS: usize = 10_000;

/// The E.164 number of subscriber `index` (below [`MAX_SUBSCRIBERS`]) in a
/// provider's exports: `+3161230xxxx` for Routit (written `06123xxxxx` in
/// its CSV), `+3161234xxxx` for the others.
pub fn subscriber_number(provider: &str, index: usize) -> String {
    if provider == "routit" {
        format!("+316123{index:05}")
    } else {
        format!("+3161234{index:04}")
    }
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            fail_with: None,
            delay_ms: 0,
            not_ready_polls: 0,
            rows: 20,
            subscribers: 50,
            recurring_cents: 1500,
        }
    }
}

#[derive(Debug, Clone)]
struct RoutitExport {
    period: NaiveDate,
    polls_left: u32,
}

struct Inner {
    token: String,
    behaviours: Mutex<HashMap<String, Behaviour>>,
    exports: Mutex<HashMap<String, RoutitExport>>,
    references: Mutex<HashMap<String, String>>,
    hits: Mutex<BTreeMap<String, u64>>,
}

#[derive(Clone)]
struct Sim(Arc<Inner>);

impl Sim {
    fn behaviour(&self, provider: &str) -> Behaviour {
        self.0
            .behaviours
            .lock()
            .unwrap()
            .get(provider)
            .cloned()
            .unwrap_or_default()
    }

    fn hit(&self, provider: &str, endpoint: &str) {
        *self
            .0
            .hits
            .lock()
            .unwrap()
            .entry(format!("{provider}:{endpoint}"))
            .or_default() += 1;
    }

    /// Auth, delay and injected failure, common to every export endpoint.
    async fn gate(&self, provider: &str, headers: &HeaderMap) -> Result<Behaviour, Response> {
        if !self.authorised(headers) {
            return Err((StatusCode::UNAUTHORIZED, "missing or wrong credentials").into_response());
        }
        let behaviour = self.behaviour(provider);
        if behaviour.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(behaviour.delay_ms)).await;
        }
        if let Some(status) = behaviour.fail_with {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Err((status, "simulated carrier failure").into_response());
        }
        Ok(behaviour)
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        if let Some(token) = value.strip_prefix("Bearer ") {
            return token == self.0.token;
        }
        if let Some(encoded) = value.strip_prefix("Basic ") {
            return decode_basic_password(encoded).as_deref() == Some(self.0.token.as_str());
        }
        false
    }
}

/// A running simulator; stops when dropped.
pub struct SimHandle {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    /// The base URL of a provider, as stored in a sync profile.
    pub fn base_url(&self, provider: &str) -> String {
        format!("http://{}/{provider}", self.addr)
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start(addr: SocketAddr, token: &str) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = router(token);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(SimHandle { addr, task })
}

pub fn router(token: &str) -> Router {
    let sim = Sim(Arc::new(Inner {
        token: token.to_string(),
        behaviours: Mutex::new(HashMap::new()),
        exports: Mutex::new(HashMap::new()),
        references: Mutex::new(HashMap::new()),
        hits: Mutex::new(BTreeMap::new()),
    }));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/_stats", get(stats))
        .route("/_control/{provider}", put(control))
        .route("/routit/exports", post(routit_request))
        .route("/routit/exports/{id}", get(routit_status))
        .route("/routit/exports/{id}/file", get(routit_file))
        .route("/{provider}/exports/{period}", get(direct_export))
        .route(
            "/{provider}/carrier-invoices/{period}",
            get(carrier_invoice),
        )
        .with_state(sim)
}

async fn stats(State(sim): State<Sim>) -> Json<Value> {
    Json(json!(sim.0.hits.lock().unwrap().clone()))
}

async fn control(
    State(sim): State<Sim>,
    Path(provider): Path<String>,
    Json(behaviour): Json<Behaviour>,
) -> Response {
    if !PROVIDERS.contains(&provider.as_str()) {
        return (
            StatusCode::NOT_FOUND,
            format!("unknown provider {provider}"),
        )
            .into_response();
    }
    sim.0
        .behaviours
        .lock()
        .unwrap()
        .insert(provider, behaviour.clone());
    Json(json!(behaviour)).into_response()
}

async fn direct_export(
    State(sim): State<Sim>,
    Path((provider, period)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !PROVIDERS.contains(&provider.as_str()) || provider == "routit" {
        return (StatusCode::NOT_FOUND, "no such provider endpoint").into_response();
    }
    sim.hit(&provider, "export");
    let behaviour = match sim.gate(&provider, &headers).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let Ok(period) = period.parse::<NaiveDate>() else {
        return (StatusCode::BAD_REQUEST, "period must be YYYY-MM-DD").into_response();
    };
    let export_id = format!("{provider}-{period}");
    zip_response(&provider, period, &behaviour, &export_id)
}

async fn carrier_invoice(
    State(sim): State<Sim>,
    Path((provider, period)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !PROVIDERS.contains(&provider.as_str()) {
        return (StatusCode::NOT_FOUND, "no such provider endpoint").into_response();
    }
    sim.hit(&provider, "carrier-invoice");
    let behaviour = match sim.gate(&provider, &headers).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let Some(month) = period.parse::<NaiveDate>().ok().filter(|d| d.day0() == 0) else {
        return (
            StatusCode::BAD_REQUEST,
            "period must be the first day of a month, YYYY-MM-01",
        )
            .into_response();
    };
    if behaviour.subscribers == 0 || behaviour.subscribers > MAX_SUBSCRIBERS {
        return (StatusCode::BAD_REQUEST, "subscribers out of range").into_response();
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "text/csv")
        .body(Body::from(carrier_invoice_csv(
            &provider, month, &behaviour,
        )))
        .expect("static headers are valid")
}

/// The micro-euros of CDR row `i` of a day's export, as [`csv`] writes it.
fn row_cost_micros(provider: &str, i: usize) -> i64 {
    if provider == "routit" {
        (125 + i as i64) * 100
    } else {
        (i % 10) as i64 * 10_000 + (i % 100) as i64 * 100
    }
}

/// `micros` in units of `unit` micro-euros, exactly, with `separator`.
fn amount(micros: i64, unit: i64, separator: char) -> String {
    let whole = micros / unit;
    let rest = micros % unit;
    if rest == 0 {
        return whole.to_string();
    }
    let digits = unit.to_string().len() - 1;
    let fraction = format!("{rest:0digits$}");
    format!("{whole}{separator}{}", fraction.trim_end_matches('0'))
}

/// A month's carrier invoice, deterministic: per subscriber the usage of
/// every day's export of the month (one voice line with its number of
/// records) and the recurring charge, then the total.
pub fn carrier_invoice_csv(provider: &str, month: NaiveDate, behaviour: &Behaviour) -> String {
    let subscribers = behaviour.subscribers.max(1);
    let next = month
        .checked_add_months(chrono::Months::new(1))
        .unwrap_or(month);
    let days = (next - month).num_days();
    let mut usage = vec![(0i64, 0u64); subscribers];
    for i in 0..behaviour.rows {
        let entry = &mut usage[i % subscribers];
        entry.0 += row_cost_micros(provider, i) * days;
        entry.1 += days as u64;
    }
    let recurring = i64::from(behaviour.recurring_cents) * 10_000;
    let account = format!("SIM-{provider}");
    let number = format!("{provider}-{}", month.format("%Y%m"));
    let dutch = matches!(provider, "routit" | "yielder");
    let (d, sep, unit) = if dutch {
        (';', ',', 1_000_000)
    } else if provider == "vodafone" {
        (',', '.', 1_000_000)
    } else {
        (',', '.', 10_000)
    };
    let (hdr, usg, rec, tot, voice) = if dutch {
        ("Kop", "Verbruik", "Abonnement", "Totaal", "Bellen")
    } else if provider == "vodafone" {
        ("H", "U", "R", "T", "voice")
    } else {
        ("HDR", "USG", "REC", "TOT", "VOICE")
    };
    let mut out = if dutch {
        "Recordsoort;Klantnummer;Factuurnummer;Periode van;Periode tot en met;Nummer;Soort;Aantal;Bedrag\r\n".to_string()
    } else {
        let amount_column = if provider == "vodafone" {
            "amount"
        } else {
            "amount_cents"
        };
        format!("record_type,account,invoice_number,period_start,period_end,msisdn,charge_type,record_count,{amount_column}\n")
    };
    let eol = if dutch { "\r\n" } else { "\n" };
    let (start, end) = if dutch {
        (
            month.format("%d-%m-%Y").to_string(),
            next.pred_opt()
                .unwrap_or(next)
                .format("%d-%m-%Y")
                .to_string(),
        )
    } else {
        (month.to_string(), next.to_string())
    };
    out.push_str(&format!(
        "{hdr}{d}{account}{d}{number}{d}{start}{d}{end}{d}{d}{d}{d}{eol}"
    ));
    let mut total = 0i64;
    for (s, (cost, count)) in usage.iter().enumerate() {
        let number = subscriber_number(provider, s);
        if *count > 0 {
            out.push_str(&format!(
                "{usg}{d}{d}{d}{d}{d}{number}{d}{voice}{d}{count}{d}{}{eol}",
                amount(*cost, unit, sep)
            ));
            total += cost;
        }
        out.push_str(&format!(
            "{rec}{d}{d}{d}{d}{d}{number}{d}{d}{d}{}{eol}",
            amount(recurring, unit, sep)
        ));
        total += recurring;
    }
    out.push_str(&format!(
        "{tot}{d}{d}{d}{d}{d}{d}{d}{d}{}{eol}",
        amount(total, unit, sep)
    ));
    out
}

#[derive(Deserialize)]
struct RoutitRequest {
    period: NaiveDate,
    reference: Option<String>,
}

async fn routit_request(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Json(request): Json<RoutitRequest>,
) -> Response {
    sim.hit("routit", "request");
    let behaviour = match sim.gate("routit", &headers).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let reference = request.reference.unwrap_or_default();
    if let Some(existing) = sim.0.references.lock().unwrap().get(&reference) {
        return (StatusCode::ACCEPTED, Json(json!({ "export_id": existing }))).into_response();
    }
    let mut exports = sim.0.exports.lock().unwrap();
    let export_id = format!(
        "rt-{}-{}",
        request.period.format("%Y%m%d"),
        exports.len() + 1
    );
    exports.insert(
        export_id.clone(),
        RoutitExport {
            period: request.period,
            polls_left: behaviour.not_ready_polls,
        },
    );
    if !reference.is_empty() {
        sim.0
            .references
            .lock()
            .unwrap()
            .insert(reference, export_id.clone());
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({ "export_id": export_id })),
    )
        .into_response()
}

async fn routit_status(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    sim.hit("routit", "status");
    if let Err(response) = sim.gate("routit", &headers).await {
        return response;
    }
    let mut exports = sim.0.exports.lock().unwrap();
    let Some(export) = exports.get_mut(&id) else {
        return (StatusCode::NOT_FOUND, "no such export").into_response();
    };
    if export.polls_left > 0 {
        export.polls_left -= 1;
        return Json(json!({ "export_id": id, "status": "pending" })).into_response();
    }
    Json(json!({ "export_id": id, "status": "ready" })).into_response()
}

async fn routit_file(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    sim.hit("routit", "download");
    let behaviour = match sim.gate("routit", &headers).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let export = sim.0.exports.lock().unwrap().get(&id).cloned();
    match export {
        Some(export) if export.polls_left == 0 => {
            zip_response("routit", export.period, &behaviour, &id)
        }
        Some(_) => (StatusCode::CONFLICT, "export not ready").into_response(),
        None => (StatusCode::NOT_FOUND, "no such export").into_response(),
    }
}

fn zip_response(
    provider: &str,
    period: NaiveDate,
    behaviour: &Behaviour,
    export_id: &str,
) -> Response {
    if behaviour.subscribers == 0 || behaviour.subscribers > MAX_SUBSCRIBERS {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "subscribers must be 1 to {MAX_SUBSCRIBERS}, not {}",
                behaviour.subscribers
            ),
        )
            .into_response();
    }
    match export_zip_of(provider, period, behaviour.rows, behaviour.subscribers) {
        Ok(bytes) => Response::builder()
            .header(header::CONTENT_TYPE, "application/zip")
            .header("x-export-id", export_id)
            .body(Body::from(bytes))
            .expect("static headers are valid"),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A deterministic export: the same provider and period always give the
/// same bytes, as a real carrier's re-download would.
pub fn export_zip(provider: &str, period: NaiveDate, rows: usize) -> std::io::Result<Vec<u8>> {
    export_zip_of(provider, period, rows, Behaviour::default().subscribers)
}

/// [`export_zip`] whose rows cycle through `subscribers` numbers.
pub fn export_zip_of(
    provider: &str,
    period: NaiveDate,
    rows: usize,
    subscribers: usize,
) -> std::io::Result<Vec<u8>> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut cursor);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default());
        zip.start_file(format!("{provider}_{period}.csv"), options)?;
        zip.write_all(csv(provider, period, rows, subscribers).as_bytes())?;
        zip.finish()?;
    }
    Ok(cursor.into_inner())
}

fn csv(provider: &str, period: NaiveDate, rows: usize, subscribers: usize) -> String {
    let subscribers = subscribers.max(1);
    let mut out = String::new();
    let day = period.format("%d-%m-%Y");
    let compact = period.format("%Y%m%d");
    if provider == "routit" {
        out.push_str(
            "Datum;Tijd;Abonnee;Bestemming;Type;Richting;Duur;Volume;Kosten;Zone;Referentie\r\n",
        );
        for i in 0..rows {
            let (h, m, s) = ((i / 60) % 24, i % 60, (i * 7) % 60);
            out.push_str(&format!(
                "{day};{h:02}:{m:02}:{s:02};06123{:05};0201234567;Spraak;Uitgaand;00:01:{:02};;0,{:04};NL;RT{compact}{i:06}\r\n",
                i % subscribers,
                i % 60,
                125 + i
            ));
        }
    } else {
        out.push_str("record_id,msisdn,start_time,event_type,direction,called_number,duration_seconds,data_bytes,units,charge_cents,roaming_zone\n");
        for i in 0..rows {
            out.push_str(&format!(
                "{provider}-{compact}-{i:06},{},{period}T{:02}:{:02}:00+01:00,VOICE,MO,+31201234567,{},0,1,{}.{:02},HOME\n",
                subscriber_number(provider, i % subscribers),
                (i / 60) % 24,
                i % 60,
                30 + i,
                i % 10,
                i % 100
            ));
        }
    }
    out
}

fn decode_basic_password(encoded: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut bytes = Vec::new();
    for c in encoded.trim().bytes().filter(|c| *c != b'=') {
        bits = (bits << 6) | ALPHABET.iter().position(|a| *a == c)? as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    let text = String::from_utf8(bytes).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_deterministic_zips_with_the_requested_rows() {
        let day: NaiveDate = "2025-03-30".parse().unwrap();
        let a = export_zip("routit", day, 5).unwrap();
        assert_eq!(a, export_zip("routit", day, 5).unwrap());
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(a)).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut archive.by_index(0).unwrap(), &mut text).unwrap();
        assert_eq!(text.lines().count(), 6);
        assert!(text.starts_with("Datum;Tijd;Abonnee"));
        assert!(text.contains("30-03-2025"));
    }

    fn csv_of(zip: Vec<u8>) -> String {
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut archive.by_index(0).unwrap(), &mut text).unwrap();
        text
    }

    #[test]
    fn rows_cycle_through_fifty_subscribers_unless_told_otherwise() {
        let day: NaiveDate = "2025-03-30".parse().unwrap();
        assert_eq!(Behaviour::default().subscribers, 50);
        assert_eq!(
            export_zip("t_mobile", day, 120).unwrap(),
            export_zip_of("t_mobile", day, 120, 50).unwrap()
        );
        let text = csv_of(export_zip_of("t_mobile", day, 3_000, 1_400).unwrap());
        let numbers: std::collections::BTreeSet<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(1).unwrap())
            .collect();
        assert_eq!(numbers.len(), 1_400);
        assert!(numbers.contains(subscriber_number("t_mobile", 1_399).as_str()));
        assert_eq!(subscriber_number("t_mobile", 1_399), "+31612341399");

        let routit = csv_of(export_zip_of("routit", day, 3_000, 1_400).unwrap());
        let line = routit.lines().nth(1_400).unwrap();
        assert!(line.contains(";0612301399;"), "{line}");
        assert_eq!(subscriber_number("routit", 1_399), "+31612301399");
    }

    #[test]
    fn basic_auth_passwords_decode() {
        // "user:sim-token"
        assert_eq!(
            decode_basic_password("dXNlcjpzaW0tdG9rZW4=").as_deref(),
            Some("sim-token")
        );
        assert_eq!(decode_basic_password("!!!"), None);
    }
}
