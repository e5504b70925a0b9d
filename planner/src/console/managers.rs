//! The runners each configured manager reports (`GET /api/v1/runners` of its status API, with
//! `APP_CONSOLE_MANAGER_TOKEN_VALUE`), asked concurrently, each within the console's timeout.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reqwest::Url;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::Console;

/// One runner, as the manager's status API shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Runner {
    pub name: String,
    pub flavor: String,
    /// `creating`, `idle`, `busy`, ...
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub online_at: Option<DateTime<Utc>>,
    pub backend_id: Option<String>,
}

/// Why a manager's runners are not shown.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("unreachable or too slow")]
    Unreachable,
    #[error("answered {0}")]
    Status(u16),
    #[error("answered something that is not a runner list")]
    Body,
}

/// One manager's answer.
pub struct Report {
    /// Its base URL.
    pub url: String,
    pub runners: Result<Vec<Runner>, ManagerError>,
}

impl Report {
    /// How many runners are in each state, by state.
    pub fn by_state(&self) -> BTreeMap<String, usize> {
        let mut states = BTreeMap::new();
        for runner in self.runners.iter().flatten() {
            *states.entry(runner.state.clone()).or_default() += 1;
        }
        states
    }
}

/// Every configured manager's runners, in configuration order.
pub async fn reports(console: &Console) -> Vec<Report> {
    let asks = console.config.managers.iter().map(|url| async move {
        Report {
            url: url.to_string(),
            runners: runners(console, url).await,
        }
    });
    futures::future::join_all(asks).await
}

async fn runners(console: &Console, base: &Url) -> Result<Vec<Runner>, ManagerError> {
    let token = console
        .config
        .manager_token
        .as_ref()
        .map(|token| token.expose_secret().to_owned())
        .unwrap_or_default();
    let url = format!("{}/api/v1/runners", base.as_str().trim_end_matches('/'));
    let response = console
        .http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|_| ManagerError::Unreachable)?;
    if !response.status().is_success() {
        return Err(ManagerError::Status(response.status().as_u16()));
    }
    response.json().await.map_err(|err| {
        if err.is_timeout() {
            ManagerError::Unreachable
        } else {
            ManagerError::Body
        }
    })
}
