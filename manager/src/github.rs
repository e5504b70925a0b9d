//! The GitHub side of the manager: where runners register ([`RunnerScope`]), and the
//! [`GitHub`] actor that owns the App client (its installation-token cache and rate-limit
//! state), caches runner-group ids, keeps the newest runner listing for every flavor's passes,
//! and reports whether GitHub answers.
//!
//! The actor never fails a caller's actor: every error comes back as a [`GitHubError`], and a
//! rate limit makes the client answer at once, without a request, until it lifts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures::future::{BoxFuture, FutureExt};

pub use ::actors::github::{
    DeleteOutcome, GitHubError, JitConfig, Runner, RunnerScope, DEFAULT_RUNNER_GROUP_ID,
};

use crate::messages::{DeleteRunner, GenerateJitConfig, JitError, ListRunners, Listed};
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

/// How long a runner listing is fresh: a pass served an older one starts the next listing
/// (one at a time, shared by every flavor) without waiting for it.
pub const LIST_CACHE: Duration = Duration::from_secs(2);

/// The oldest listing a pass is served without waiting for a new one, for reconcile passes
/// every `interval`: two rounds, so that a round is served the listing the round before it
/// started, and a pass waits for GitHub only at start-up or when listings have failed for that
/// long.
pub fn list_max_age(interval: Duration) -> Duration {
    interval.max(LIST_CACHE).saturating_mul(2)
}

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

/// A listing and when it was asked for.
#[derive(Debug)]
struct Snapshot {
    listing: Listing,
    asked: Instant,
    asked_at: DateTime<Utc>,
}

type SharedList = futures::future::Shared<BoxFuture<'static, Result<Arc<Snapshot>, GitHubError>>>;
type SharedGroup = futures::future::Shared<BoxFuture<'static, Result<u64, GitHubError>>>;

/// The GitHub actor: one per process, shared by every reconciler.
///
/// Runner listings: passes are served the newest listing at once while it is younger than
/// [`list_max_age`], so a pass never waits for GitHub's pages behind a hundred other flavors;
/// a listing older than [`LIST_CACHE`], or one that a creation or a deregistration has made
/// out of date, starts the next one in the background. The answers a listing gives add the
/// runners registered (offline) and leave out those deregistered since it was asked for.
pub struct GitHub {
    api: Arc<dyn RunnerApi>,
    scope: Arc<RunnerScope>,
    groups: HashMap<String, SharedGroup>,
    max_age: Duration,
    snapshot: Option<Arc<Snapshot>>,
    listing: Option<SharedList>,
    /// A runner was registered or deregistered since the newest listing was asked for.
    outdated: bool,
    /// Runners deregistered since the newest listing was asked for, and when.
    deregistered: Vec<(Instant, u64)>,
    /// Runners registered (JIT configurations) since the newest listing was asked for, and
    /// when: a listing asked for before shows them offline, so that a runner removed before
    /// the next listing is deregistered with it.
    registered: Vec<(Instant, Runner)>,
    readiness: Arc<Readiness>,
}

impl GitHub {
    /// The actor for `api`, registering runners in `scope`, serving listings up to `max_age`
    /// old ([`list_max_age`]).
    pub fn new(
        api: Arc<dyn RunnerApi>,
        scope: RunnerScope,
        max_age: Duration,
        readiness: Arc<Readiness>,
    ) -> Self {
        Self {
            api,
            scope: Arc::new(scope),
            groups: HashMap::new(),
            max_age,
            snapshot: None,
            listing: None,
            outdated: false,
            deregistered: Vec::new(),
            registered: Vec::new(),
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

    /// The listing under way, or a new one: it runs whether or not anyone waits for it, and
    /// becomes the snapshot when it answers.
    fn refresh(&mut self, ctx: &mut Context<Self>) -> SharedList {
        if let Some(listing) = &self.listing {
            return listing.clone();
        }
        self.outdated = false;
        let api = self.api.clone();
        let scope = self.scope.clone();
        let readiness = self.readiness.clone();
        let listing = async move {
            let asked = Instant::now();
            let asked_at = Utc::now();
            let result = api.list_runners(&scope).await;
            Self::observe(&readiness, &result);
            result.map(|runners| {
                Arc::new(Snapshot {
                    listing: Listing::new(runners),
                    asked,
                    asked_at,
                })
            })
        }
        .boxed()
        .shared();
        self.listing = Some(listing.clone());
        ctx.spawn(listing.clone().into_actor(self).map(|result, actor, _| {
            actor.listing = None;
            match result {
                Ok(snapshot) => {
                    // What happened before the listing was asked for is in it.
                    actor.deregistered.retain(|(at, _)| *at >= snapshot.asked);
                    actor.registered.retain(|(at, _)| *at >= snapshot.asked);
                    actor.snapshot = Some(snapshot);
                }
                Err(err) => log::debug!(
                    event = "github_list_failed",
                    error:% = err;
                    "cannot list GitHub's runners"
                ),
            }
        }));
        listing
    }

    /// The id of runner group `name`: looked up once and kept, the lookup under way shared by
    /// every create that needs it; a failed lookup (an unknown name, GitHub away) is tried
    /// again by the next create.
    fn runner_group(&mut self, name: &str) -> SharedGroup {
        if let Some(lookup) = self.groups.get(name) {
            if !matches!(lookup.peek(), Some(Err(_))) {
                return lookup.clone();
            }
        }
        let api = self.api.clone();
        let scope = self.scope.clone();
        let readiness = self.readiness.clone();
        let group = name.to_owned();
        let lookup = async move {
            let found = api.runner_group_id(&scope, &group).await;
            Self::observe(&readiness, &found);
            found?.ok_or_else(|| GitHubError::Invalid(format!("no runner group named {group:?}")))
        }
        .boxed()
        .shared();
        self.groups.insert(name.to_owned(), lookup.clone());
        lookup
    }

    /// The runners of `prefix` in `snapshot`, with those registered since it was asked for
    /// and less those deregistered since.
    fn answer(&self, snapshot: &Snapshot, prefix: &str) -> Listed {
        let deregistered: HashSet<u64> = self
            .deregistered
            .iter()
            .filter(|(at, _)| *at >= snapshot.asked)
            .map(|(_, gone)| *gone)
            .collect();
        let listed = snapshot.listing.with_prefix(prefix);
        // Only this flavor's registrations are looked up among its listed runners.
        let since = self
            .registered
            .iter()
            .filter(|(at, runner)| {
                *at >= snapshot.asked
                    && is_runner_name(prefix, &runner.name)
                    && !listed.iter().any(|listed| listed.id == runner.id)
            })
            .map(|(_, runner)| runner);
        Listed {
            runners: listed
                .iter()
                .chain(since)
                .filter(|runner| {
                    is_runner_name(prefix, &runner.name) && !deregistered.contains(&runner.id)
                })
                .cloned()
                .collect(),
            asked_at: snapshot.asked_at,
        }
    }
}

impl Actor for GitHub {
    type Context = Context<Self>;
}

impl Handler<GenerateJitConfig> for GitHub {
    type Result = ResponseActFuture<Self, Result<JitConfig, JitError>>;

    fn handle(&mut self, msg: GenerateJitConfig, _: &mut Context<Self>) -> Self::Result {
        let api = self.api.clone();
        let scope = self.scope.clone();
        let readiness = self.readiness.clone();
        let group = msg
            .runner_group
            .as_deref()
            .map(|name| self.runner_group(name));
        self.outdated = true;
        let labels = msg.labels.clone();
        Box::pin(
            async move {
                let group_id = match group {
                    Some(lookup) => lookup.await.map_err(JitError::RunnerGroup)?,
                    None => DEFAULT_RUNNER_GROUP_ID,
                };
                let result = api
                    .generate_jit_config(&scope, &msg.name, group_id, &msg.labels)
                    .await;
                Self::observe(&readiness, &result);
                result.map_err(JitError::Jit)
            }
            .into_actor(self)
            .map(move |result, actor, _| {
                if let Ok(config) = &result {
                    let runner = Runner {
                        id: config.runner_id,
                        name: config.runner_name.clone(),
                        status: "offline".to_owned(),
                        busy: false,
                        labels,
                    };
                    actor.registered.push((Instant::now(), runner));
                }
                result
            }),
        )
    }
}

impl Handler<ListRunners> for GitHub {
    type Result = ResponseActFuture<Self, Result<Listed, GitHubError>>;

    fn handle(&mut self, msg: ListRunners, ctx: &mut Context<Self>) -> Self::Result {
        let servable = self
            .snapshot
            .clone()
            .filter(|snapshot| snapshot.asked.elapsed() < self.max_age);
        match servable {
            Some(snapshot) => {
                if self.outdated || snapshot.asked.elapsed() >= LIST_CACHE {
                    // It runs on its own (spawned); this pass does not wait for it.
                    drop(self.refresh(ctx));
                }
                let answer = self.answer(&snapshot, &msg.prefix);
                Box::pin(fut::ready(Ok(answer)))
            }
            None => Box::pin(
                self.refresh(ctx)
                    .into_actor(self)
                    .map(move |result, actor, _| Ok(actor.answer(result?.as_ref(), &msg.prefix))),
            ),
        }
    }
}

impl Handler<DeleteRunner> for GitHub {
    type Result = ResponseActFuture<Self, Result<DeleteOutcome, GitHubError>>;

    fn handle(&mut self, msg: DeleteRunner, _: &mut Context<Self>) -> Self::Result {
        let api = self.api.clone();
        let scope = self.scope.clone();
        let readiness = self.readiness.clone();
        let runner_id = msg.runner_id;
        Box::pin(
            async move {
                let result = api.delete_runner(&scope, runner_id).await;
                Self::observe(&readiness, &result);
                result
            }
            .into_actor(self)
            .map(move |result, actor, _| {
                if matches!(result, Ok(DeleteOutcome::Deleted | DeleteOutcome::NotFound)) {
                    actor.deregistered.push((Instant::now(), runner_id));
                    actor.outdated = true;
                }
                result
            }),
        )
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
        self.snapshot = None;
        self.deregistered.clear();
        self.registered.clear();
        self.groups.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use tokio::sync::Semaphore;

    use super::*;

    /// GitHub whose listings each wait for a permit; it counts them.
    struct GatedListing {
        runners: Mutex<Vec<Runner>>,
        permits: Semaphore,
        listings: AtomicUsize,
    }

    impl RunnerApi for GatedListing {
        fn generate_jit_config<'a>(
            &'a self,
            _: &'a RunnerScope,
            name: &'a str,
            _: u64,
            _: &'a [String],
        ) -> BoxFuture<'a, Result<JitConfig, GitHubError>> {
            futures::future::ready(Ok(JitConfig {
                runner_id: 3,
                runner_name: name.to_owned(),
                encoded_jit_config: secrecy::SecretString::from("jit"),
            }))
            .boxed()
        }

        fn list_runners<'a>(
            &'a self,
            _: &'a RunnerScope,
        ) -> BoxFuture<'a, Result<Vec<Runner>, GitHubError>> {
            async move {
                self.listings.fetch_add(1, Ordering::SeqCst);
                self.permits.acquire().await.expect("permits").forget();
                Ok(self.runners.lock().unwrap().clone())
            }
            .boxed()
        }

        fn delete_runner<'a>(
            &'a self,
            _: &'a RunnerScope,
            id: u64,
        ) -> BoxFuture<'a, Result<DeleteOutcome, GitHubError>> {
            self.runners.lock().unwrap().retain(|r| r.id != id);
            futures::future::ready(Ok(DeleteOutcome::Deleted)).boxed()
        }

        fn runner_group_id<'a>(
            &'a self,
            _: &'a RunnerScope,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<u64>, GitHubError>> {
            futures::future::ready(Ok(None)).boxed()
        }
    }

    #[actix_rt::test]
    async fn passes_are_served_the_newest_listing_without_waiting_for_the_next() {
        let api = Arc::new(GatedListing {
            runners: Mutex::new(vec![
                Runner {
                    id: 1,
                    ..runner("m1-small-00000001")
                },
                Runner {
                    id: 2,
                    ..runner("m1-small-00000002")
                },
            ]),
            permits: Semaphore::new(0),
            listings: AtomicUsize::new(0),
        });
        let github = GitHub::new(
            api.clone(),
            RunnerScope::Org("org".into()),
            Duration::from_secs(3600),
            Arc::new(Readiness::new()),
        )
        .start();
        let list = || {
            github.send(ListRunners {
                prefix: "m1-small-".into(),
            })
        };
        let ids = |listed: Listed| -> Vec<u64> { listed.runners.iter().map(|r| r.id).collect() };
        // No listing yet: the first pass waits for one, and only one is made for two passes.
        let (first, second) = (list(), list());
        api.permits.add_permits(1);
        assert_eq!(ids(first.await.unwrap().unwrap()), [1, 2]);
        assert_eq!(ids(second.await.unwrap().unwrap()), [1, 2]);
        assert_eq!(api.listings.load(Ordering::SeqCst), 1);

        // A deregistration and a registration make the listing out of date: the next pass is
        // answered at once (the new listing waits for a permit), without the runner
        // deregistered since and with the one registered since (offline).
        let deleted = github.send(DeleteRunner { runner_id: 1 }).await.unwrap();
        assert_eq!(deleted.unwrap(), DeleteOutcome::Deleted);
        github
            .send(GenerateJitConfig {
                name: "m1-small-00000003".into(),
                runner_group: None,
                labels: vec!["self-hosted".into()],
            })
            .await
            .unwrap()
            .unwrap();
        let served = tokio::time::timeout(Duration::from_secs(5), list())
            .await
            .expect("a pass waited for GitHub")
            .unwrap()
            .unwrap();
        assert_eq!(served.runners[1].status, "offline");
        assert_eq!(ids(served), [2, 3]);
        assert_eq!(api.listings.load(Ordering::SeqCst), 2, "no new listing");
        // While it is under way, passes share it rather than start more.
        list().await.unwrap().unwrap();
        assert_eq!(api.listings.load(Ordering::SeqCst), 2);
        api.permits.add_permits(1);
    }

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
