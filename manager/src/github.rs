//! The GitHub side of the manager: where runners register ([`RunnerScope`]), and the
//! [`GitHub`] actor that owns the App client (its installation-token cache and rate-limit
//! state), caches runner-group ids and the runner list, and reports whether GitHub answers.
//!
//! The actor never fails a caller's actor: every error comes back as a [`GitHubError`], and a
//! rate limit makes the client answer at once, without a request, until it lifts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::{BoxFuture, FutureExt};

pub use ::actors::github::{
    DeleteOutcome, GitHubError, JitConfig, Runner, RunnerScope, DEFAULT_RUNNER_GROUP_ID,
};

use crate::messages::{DeleteRunner, GenerateJitConfig, ListRunners};
use crate::reconciler::is_runner_name;
use crate::status::Readiness;

/// The runner calls of GitHub's REST API the manager makes; `actors::github::Client` in
/// production.
pub trait RunnerApi: Send + Sync + 'static {
    /// `POST {scope}/actions/runners/generate-jitconfig`.
    fn generate_jit_config<'a>(
        &'a self,
        scope: &'a RunnerScope,
        name: &'a str,
        runner_group_id: u64,
        labels: &'a [String],
    ) -> BoxFuture<'a, Result<JitConfig, GitHubError>>;

    /// `GET {scope}/actions/runners`, every page.
    fn list_runners<'a>(
        &'a self,
        scope: &'a RunnerScope,
    ) -> BoxFuture<'a, Result<Vec<Runner>, GitHubError>>;

    /// `DELETE {scope}/actions/runners/{id}`.
    fn delete_runner<'a>(
        &'a self,
        scope: &'a RunnerScope,
        id: u64,
    ) -> BoxFuture<'a, Result<DeleteOutcome, GitHubError>>;

    /// The id of the runner group `name` (organizations only), if it exists.
    fn runner_group_id<'a>(
        &'a self,
        scope: &'a RunnerScope,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, GitHubError>>;
}

/// How long one runner listing answers every flavor's question: a pressure change wakes every
/// reconciler at once, and they share one request.
pub const LIST_CACHE: Duration = Duration::from_secs(2);

/// The organisation's (or repository's) runners as one listing found them, sorted by name so
/// that the runners of one name prefix (one manager's flavor) are one range of it: each
/// flavor's question costs a binary search, not a walk through every runner.
#[derive(Debug)]
struct Listing(Vec<Runner>);

impl Listing {
    fn new(mut runners: Vec<Runner>) -> Self {
        runners.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Self(runners)
    }

    /// The runners whose names start with `prefix`.
    fn with_prefix(&self, prefix: &str) -> &[Runner] {
        let start = self
            .0
            .partition_point(|runner| runner.name.as_str() < prefix);
        let len = self.0[start..]
            .iter()
            .take_while(|runner| runner.name.starts_with(prefix))
            .count();
        &self.0[start..start + len]
    }
}

type SharedList = futures::future::Shared<BoxFuture<'static, Result<Arc<Listing>, GitHubError>>>;

/// The GitHub actor: one per process, shared by every reconciler.
pub struct GitHub {
    api: Arc<dyn RunnerApi>,
    scope: Arc<RunnerScope>,
    groups: HashMap<String, u64>,
    listed: Option<(Instant, Arc<Listing>)>,
    listing: Option<SharedList>,
    readiness: Arc<Readiness>,
}

impl GitHub {
    /// The actor for `api`, registering runners in `scope`.
    pub fn new(api: Arc<dyn RunnerApi>, scope: RunnerScope, readiness: Arc<Readiness>) -> Self {
        Self {
            api,
            scope: Arc::new(scope),
            groups: HashMap::new(),
            listed: None,
            listing: None,
            readiness,
        }
    }

    fn observe<T>(readiness: &Readiness, result: &Result<T, GitHubError>) {
        let reachable = match result {
            Ok(_) => true,
            Err(err) => !err.is_transient(),
        };
        readiness.set_github(reachable);
    }
}

impl Actor for GitHub {
    type Context = Context<Self>;
}

impl Handler<GenerateJitConfig> for GitHub {
    type Result = ResponseActFuture<Self, Result<JitConfig, GitHubError>>;

    fn handle(&mut self, msg: GenerateJitConfig, _: &mut Context<Self>) -> Self::Result {
        let api = self.api.clone();
        let scope = self.scope.clone();
        let readiness = self.readiness.clone();
        let cached = match &msg.runner_group {
            None => Some(DEFAULT_RUNNER_GROUP_ID),
            Some(group) => self.groups.get(group).copied(),
        };
        self.listed = None;
        Box::pin(
            async move {
                let group_id = match (cached, &msg.runner_group) {
                    (Some(id), _) => id,
                    (None, Some(group)) => {
                        let found = api.runner_group_id(&scope, group).await;
                        Self::observe(&readiness, &found);
                        found?.ok_or_else(|| {
                            GitHubError::Invalid(format!("no runner group named {group:?}"))
                        })?
                    }
                    (None, None) => DEFAULT_RUNNER_GROUP_ID,
                };
                let result = api
                    .generate_jit_config(&scope, &msg.name, group_id, &msg.labels)
                    .await;
                Self::observe(&readiness, &result);
                result.map(|config| (msg.runner_group, group_id, config))
            }
            .into_actor(self)
            .map(|result, actor, _| {
                let (group, group_id, config) = result?;
                if let Some(group) = group {
                    actor.groups.insert(group, group_id);
                }
                Ok(config)
            }),
        )
    }
}

impl Handler<ListRunners> for GitHub {
    type Result = ResponseActFuture<Self, Result<Vec<Runner>, GitHubError>>;

    fn handle(&mut self, msg: ListRunners, _: &mut Context<Self>) -> Self::Result {
        let fresh = self
            .listed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < LIST_CACHE)
            .map(|(_, runners)| runners.clone());
        let listing = match (fresh, &self.listing) {
            (Some(runners), _) => futures::future::ready(Ok(runners)).boxed().shared(),
            (None, Some(listing)) => listing.clone(),
            (None, None) => {
                let api = self.api.clone();
                let scope = self.scope.clone();
                let readiness = self.readiness.clone();
                let listing = async move {
                    let result = api.list_runners(&scope).await;
                    Self::observe(&readiness, &result);
                    result.map(|runners| Arc::new(Listing::new(runners)))
                }
                .boxed()
                .shared();
                self.listing = Some(listing.clone());
                listing
            }
        };
        Box::pin(listing.into_actor(self).map(move |result, actor, _| {
            actor.listing = None;
            let runners = result?;
            if actor
                .listed
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= LIST_CACHE)
            {
                actor.listed = Some((Instant::now(), runners.clone()));
            }
            Ok(runners
                .with_prefix(&msg.prefix)
                .iter()
                .filter(|runner| is_runner_name(&msg.prefix, &runner.name))
                .cloned()
                .collect())
        }))
    }
}

impl Handler<DeleteRunner> for GitHub {
    type Result = ResponseFuture<Result<DeleteOutcome, GitHubError>>;

    fn handle(&mut self, msg: DeleteRunner, _: &mut Context<Self>) -> Self::Result {
        let api = self.api.clone();
        let scope = self.scope.clone();
        let readiness = self.readiness.clone();
        self.listed = None;
        Box::pin(async move {
            let result = api.delete_runner(&scope, msg.runner_id).await;
            Self::observe(&readiness, &result);
            result
        })
    }
}

/// The runner's work folder, relative to its installation (the runner's own default).
pub const WORK_FOLDER: &str = "_work";

impl RunnerApi for ::actors::github::Client {
    fn generate_jit_config<'a>(
        &'a self,
        scope: &'a RunnerScope,
        name: &'a str,
        runner_group_id: u64,
        labels: &'a [String],
    ) -> BoxFuture<'a, Result<JitConfig, GitHubError>> {
        ::actors::github::Client::generate_jit_config(
            self,
            scope,
            name,
            runner_group_id,
            labels,
            WORK_FOLDER,
        )
        .boxed()
    }

    fn list_runners<'a>(
        &'a self,
        scope: &'a RunnerScope,
    ) -> BoxFuture<'a, Result<Vec<Runner>, GitHubError>> {
        ::actors::github::Client::list_runners(self, scope).boxed()
    }

    fn delete_runner<'a>(
        &'a self,
        scope: &'a RunnerScope,
        id: u64,
    ) -> BoxFuture<'a, Result<DeleteOutcome, GitHubError>> {
        ::actors::github::Client::delete_runner(self, scope, id).boxed()
    }

    fn runner_group_id<'a>(
        &'a self,
        scope: &'a RunnerScope,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, GitHubError>> {
        ::actors::github::Client::runner_group_id(self, scope, name).boxed()
    }
}

/// The production API: GitHub's REST API as the App of `APP_GITHUB_*`.
pub fn client(config: &crate::Config) -> Result<Arc<dyn RunnerApi>, GitHubError> {
    let client = ::actors::github::Client::new(config.github.clone(), "github-runner-manager")?;
    Ok(Arc::new(client))
}

impl Supervised for GitHub {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.listing = None;
        self.listed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(name: &str) -> Runner {
        Runner {
            id: 1,
            name: name.to_owned(),
            status: "offline".to_owned(),
            busy: false,
            labels: Vec::new(),
        }
    }

    #[test]
    fn a_listing_answers_exactly_the_runners_of_a_prefix() {
        let listing = Listing::new(
            [
                "m1-small-0002",
                "m2-small-0001",
                "m1-large-0001",
                "m1-small-0001",
                "m1-small",
                "m1-smallx-0001",
            ]
            .map(runner)
            .to_vec(),
        );
        let names = |prefix: &str| -> Vec<&str> {
            listing
                .with_prefix(prefix)
                .iter()
                .map(|r| r.name.as_str())
                .collect()
        };
        assert_eq!(names("m1-small-"), ["m1-small-0001", "m1-small-0002"]);
        assert_eq!(names("m1-large-"), ["m1-large-0001"]);
        assert_eq!(names("m2-small-"), ["m2-small-0001"]);
        assert!(names("m3-small-").is_empty());
        assert!(names("z").is_empty());
        assert_eq!(names("").len(), 6);
    }
}
