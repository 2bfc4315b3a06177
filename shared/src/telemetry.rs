//! Logging: JSON when Lambda's `AWS_LAMBDA_LOG_FORMAT=JSON`, text otherwise.
//! Step spans carry the envelope's trace id, task id, message id, step,
//! provider and attempt, so every line logged inside a step has them as
//! fields, and one sync's lines are found by its trace id.

use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_span_events(FmtSpan::NONE)
        // Lambda adds its own timestamps to every line.
        .without_time();
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            // Every enclosing span, so each line has the step span's trace
            // id, task id, message id, step and provider.
            .with_span_list(true)
            .try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
