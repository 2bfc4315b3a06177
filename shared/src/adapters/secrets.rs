//! Secrets Manager, with a short per-process cache: a warm function does not
//! fetch the same secret on every message, and a rotated secret is picked up
//! within minutes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_secretsmanager::error::DisplayErrorContext;
use aws_sdk_secretsmanager::Client;
use tokio::sync::Mutex;

use crate::ports::{PortError, SecretGet};

const CACHE_FOR: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct SecretsManager {
    client: Client,
    cache: Mutex<HashMap<String, (Instant, String)>>,
}

impl SecretsManager {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl SecretGet for SecretsManager {
    async fn secret_string(&self, secret_id: &str) -> Result<String, PortError> {
        if let Some((at, value)) = self.cache.lock().await.get(secret_id) {
            if at.elapsed() < CACHE_FOR {
                return Ok(value.clone());
            }
        }
        let output = self
            .client
            .get_secret_value()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| PortError::new("secretsmanager GetSecretValue", DisplayErrorContext(e)))?;
        let value = output.secret_string().map(str::to_string).ok_or_else(|| {
            PortError::new(
                "secretsmanager GetSecretValue",
                format!("secret {secret_id} has no string value"),
            )
        })?;
        self.cache
            .lock()
            .await
            .insert(secret_id.to_string(), (Instant::now(), value.clone()));
        Ok(value)
    }
}
