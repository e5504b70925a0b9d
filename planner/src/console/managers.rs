//! The runners each configured manager reports (`GET /api/v1/runners` of its status API, with
//! `APP_CONSOLE_MANAGER_TOKEN_VALUE`), asked concurrently, each within the console's timeout.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reqwest::Url;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::Console;

/// The states a runner of the manager's status API is in, in the order of its life: the
/// overview counts them in this order (a state not listed here, from a newer manager, after
/// them).
pub const STATES: [&str; 5] = ["creating", "booting", "idle", "busy", "removing"];

/// One runner, as the manager's status API shows it (its `RunnerView`).
#[derive(Debug, Clone, Deserialize)]
pub struct Runner {
    pub name: String,
    pub flavor: String,
    /// One of [`STATES`].
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
    /// How many runners are in each state they are in: the [`STATES`] in their order, then any
    /// other by name.
    pub fn by_state(&self) -> Vec<(String, usize)> {
        let mut states: BTreeMap<(usize, &str), usize> = BTreeMap::new();
        for runner in self.runners.iter().flatten() {
            let rank = STATES
                .iter()
                .position(|known| *known == runner.state)
                .unwrap_or(STATES.len());
            *states.entry((rank, runner.state.as_str())).or_default() += 1;
        }
        states
            .into_iter()
            .map(|((_, state), count)| (state.to_owned(), count))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(name: &str, state: &str) -> Runner {
        Runner {
            name: name.to_owned(),
            flavor: "small".to_owned(),
            state: state.to_owned(),
            created_at: Utc::now(),
            online_at: None,
            backend_id: None,
        }
    }

    #[test]
    fn states_are_counted_in_the_order_of_a_runners_life() {
        let report = Report {
            url: "http://m1:8080".to_owned(),
            runners: Ok(vec![
                runner("a", "busy"),
                runner("b", "idle"),
                runner("c", "hibernating"),
                runner("d", "busy"),
                runner("e", "creating"),
            ]),
        };
        assert_eq!(
            report.by_state(),
            vec![
                ("creating".to_owned(), 1),
                ("idle".to_owned(), 1),
                ("busy".to_owned(), 2),
                ("hibernating".to_owned(), 1),
            ]
        );
        let down = Report {
            url: "http://m2:8080".to_owned(),
            runners: Err(ManagerError::Unreachable),
        };
        assert!(down.by_state().is_empty());
    }
}
