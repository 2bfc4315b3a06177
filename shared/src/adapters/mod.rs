//! Implementations of the ports (`crate::ports`) on AWS and PostgreSQL.
//! The only modules that see SDK types.

pub mod audit;
pub mod billing;
pub mod budgets;
pub mod costs;
pub mod dynamodb;
pub mod journal;
pub mod maintenance;
pub mod migrations;
pub mod operations;
pub mod postgres;
pub mod s3;
pub mod secrets;
pub mod sns;
pub mod sqs;
pub mod status;
pub mod task_admin;
pub mod totals;

/// The shared AWS configuration: region, credentials and `AWS_ENDPOINT_URL`
/// (the emulator locally) from the environment.
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// S3 with path-style addressing, which the emulator needs and AWS accepts.
pub fn s3_client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let s3_config = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(s3_config)
}
