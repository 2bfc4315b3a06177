//! Which deployed stack the operations commands (`failed`, `task`,
//! `status`) work on: its queues, DLQs and tables, read once from the
//! stack's CloudFormation outputs. The stack is named by `--stack` or
//! `TEM_STACK`; the AWS account, region and endpoint come from the usual AWS
//! environment (profile, `AWS_REGION`, `AWS_ENDPOINT_URL` for an emulator).

use std::collections::BTreeMap;

use clap::Args;
use tem_shared::ops::settings::{MissingOutput, OpsSettings};

#[derive(Debug, Clone, Args)]
pub struct StackArgs {
    /// The CloudFormation stack tem is deployed as (default: $TEM_STACK).
    #[arg(long, value_name = "NAME", env = "TEM_STACK", global = true)]
    pub stack: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("no stack named: pass --stack NAME or set TEM_STACK to the CloudFormation stack tem is deployed as (scripts/deploy.sh prints it)")]
    NotNamed,
    #[error("cannot read stack {stack}: {reason}; check the stack's name, the region (AWS_REGION) and cloudformation:DescribeStacks permission")]
    Describe { stack: String, reason: String },
    #[error("stack {stack} does not exist in this account and region")]
    NotFound { stack: String },
    #[error("stack {stack}: {source}")]
    Outputs {
        stack: String,
        #[source]
        source: MissingOutput,
    },
}

impl StackError {
    pub fn exit_code(&self) -> u8 {
        match self {
            StackError::NotNamed => 2,
            _ => 1,
        }
    }
}

/// The AWS configuration and the named stack's settings.
pub struct Stack {
    pub name: String,
    pub aws: aws_config::SdkConfig,
    pub settings: OpsSettings,
}

impl StackArgs {
    /// One output of the named stack, e.g. `CdrBucketName`.
    pub async fn output(&self, key: &str) -> Result<String, StackError> {
        let name = self
            .stack
            .clone()
            .filter(|s| !s.trim().is_empty())
            .ok_or(StackError::NotNamed)?;
        let aws = tem_shared::adapters::aws_config().await;
        let outputs = stack_outputs(&aws_sdk_cloudformation::Client::new(&aws), &name).await?;
        outputs
            .get(key)
            .cloned()
            .ok_or_else(|| StackError::Outputs {
                stack: name,
                source: MissingOutput(key.to_string()),
            })
    }

    pub async fn load(&self) -> Result<Stack, StackError> {
        let name = self
            .stack
            .clone()
            .filter(|s| !s.trim().is_empty())
            .ok_or(StackError::NotNamed)?;
        let aws = tem_shared::adapters::aws_config().await;
        let outputs = stack_outputs(&aws_sdk_cloudformation::Client::new(&aws), &name).await?;
        let settings =
            OpsSettings::from_outputs(&outputs).map_err(|source| StackError::Outputs {
                stack: name.clone(),
                source,
            })?;
        Ok(Stack {
            name,
            aws,
            settings,
        })
    }
}

async fn stack_outputs(
    client: &aws_sdk_cloudformation::Client,
    name: &str,
) -> Result<BTreeMap<String, String>, StackError> {
    let described = client
        .describe_stacks()
        .stack_name(name)
        .send()
        .await
        .map_err(|e| {
            let text = aws_sdk_cloudformation::error::DisplayErrorContext(&e).to_string();
            // CloudFormation answers a missing stack with a ValidationError.
            if text.contains("does not exist") {
                StackError::NotFound {
                    stack: name.to_string(),
                }
            } else {
                StackError::Describe {
                    stack: name.to_string(),
                    reason: text,
                }
            }
        })?;
    let stack = described
        .stacks()
        .first()
        .ok_or_else(|| StackError::NotFound {
            stack: name.to_string(),
        })?;
    Ok(stack
        .outputs()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_stack_name_is_a_usage_error_that_says_what_to_set() {
        let err = StackArgs { stack: None }.load().await.err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("TEM_STACK"), "{err}");
        let blank = StackArgs {
            stack: Some("  ".into()),
        };
        assert!(matches!(blank.load().await, Err(StackError::NotNamed)));
    }
}
