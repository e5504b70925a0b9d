//! The reconcile rules as one pure function: from what the backend lists, what GitHub lists and
//! the desired count, [`decide`] returns what to do. No I/O, no clock: everything it needs is
//! in [`Observed`], so every rule is unit-tested here.
//!
//! The rules, in order, for each runner the backend lists:
//! 1. its process or machine has ended -> removed (and deregistered if GitHub still has it);
//! 2. older than `max_lifetime` -> removed, busy or not;
//! 3. never seen online in GitHub and older than `boot_timeout` -> deregistered and removed;
//!    (only when GitHub's list is known: while GitHub cannot be reached nothing is judged; and
//!    only by a listing asked for after the runner's deadline);
//! 4. then, counting the runners left and those being created: below desired -> create the
//!    shortfall; above desired -> remove idle runners only, oldest first (deregistered first, so
//!    GitHub refuses, with 422, one that has just taken a job). Busy and booting runners are
//!    never removed for scale-down.
//!
//! And for each GitHub runner of this manager and flavor that no backend runner has and no
//! creation is under way for: an orphan, deregistered.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backend::Instance;
use crate::github::Runner;

/// Why a runner is removed (the `reason` label of the metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Its process or machine ended.
    Ended,
    /// Not online in GitHub within `boot_timeout`.
    BootTimeout,
    /// More runners than desired; it was idle.
    ScaleDown,
    /// Older than `max_lifetime`.
    MaxLifetime,
    /// Registered in GitHub with this manager's prefix, with no runner behind it.
    Orphan,
}

impl Reason {
    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ended => "ended",
            Self::BootTimeout => "boot_timeout",
            Self::ScaleDown => "scale_down",
            Self::MaxLifetime => "max_lifetime",
            Self::Orphan => "orphan",
        }
    }
}

/// What a runner is doing, as the status API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerState {
    /// Its JIT configuration or backend start is under way.
    Creating,
    /// Started, not online in GitHub yet.
    Booting,
    /// Online and waiting for a job.
    Idle,
    /// Running a job.
    Busy,
    /// Being deregistered or stopped.
    Removing,
}

impl RunnerState {
    /// Every state, for the metrics.
    pub const ALL: [Self; 5] = [
        Self::Creating,
        Self::Booting,
        Self::Idle,
        Self::Busy,
        Self::Removing,
    ];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Booting => "booting",
            Self::Idle => "idle",
            Self::Busy => "busy",
            Self::Removing => "removing",
        }
    }
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create this many runners.
    Create(u32),
    /// Remove a backend runner; `runner_id` is its GitHub registration, if there is one.
    Remove {
        /// Its name.
        name: String,
        /// Its GitHub id.
        runner_id: Option<u64>,
        /// Why.
        reason: Reason,
    },
    /// Deregister a GitHub runner that has no backend runner.
    Deregister {
        /// Its name.
        name: String,
        /// Its GitHub id.
        runner_id: u64,
    },
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// Now.
    pub now: DateTime<Utc>,
    /// Desired runners ([`desired`]).
    pub desired: u32,
    /// Whether runners may be removed for being more than desired: not before the planner's
    /// pressure has been heard (a restarted manager must not remove the runners it adopts
    /// only because the stream has not answered yet).
    pub scale_down: bool,
    /// What the backend lists (this manager and flavor).
    pub instances: &'a [Instance],
    /// What GitHub lists with this manager's and flavor's name prefix; `None` when GitHub could
    /// not be asked.
    pub github: Option<&'a [Runner]>,
    /// When GitHub's listing was asked for (it may be older than `now`): a runner is judged
    /// never online within `boot_timeout` only by a listing asked for after its deadline.
    pub listed_at: DateTime<Utc>,
    /// Names of runners being created.
    pub creating: &'a HashSet<String>,
    /// Names of runners being removed.
    pub removing: &'a HashSet<String>,
    /// Names of runners seen online in GitHub at least once.
    pub seen_online: &'a HashSet<String>,
    /// The flavor's `boot_timeout`.
    pub boot_timeout: Duration,
    /// The flavor's `max_lifetime`.
    pub max_lifetime: Duration,
}

/// What to do, and the state of every runner (for the status API and the metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The actions.
    pub actions: Vec<Action>,
    /// Each backend runner's state after the plan (runners being removed: `Removing`).
    pub states: Vec<(String, RunnerState)>,
}

/// Desired runners: the planner's pressure clamped to `[min, max]`; `min` while the pressure
/// is unknown (the planner unreachable for longer than the grace).
pub fn desired(pressure: Option<u64>, min: u32, max: u32) -> u32 {
    match pressure {
        None => min,
        Some(pressure) => u32::try_from(pressure).unwrap_or(u32::MAX).clamp(min, max),
    }
}

/// Decides what to do; see the module documentation for the rules.
pub fn decide(observed: &Observed<'_>) -> Plan {
    let mut plan = Plan::default();
    let registration = |name: &str| {
        observed
            .github
            .and_then(|runners| runners.iter().find(|runner| runner.name == name))
    };
    let age = |instance: &Instance| {
        (observed.now - instance.created_at)
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    let mut live = 0u32;
    let mut idle: Vec<&Instance> = Vec::new();
    for instance in observed.instances {
        let name = instance.name.as_str();
        if observed.removing.contains(name) {
            plan.states.push((name.to_owned(), RunnerState::Removing));
            continue;
        }
        let runner = registration(name);
        let online = runner.is_some_and(|r| r.status == "online");
        let remove = if instance.ended {
            Some(Reason::Ended)
        } else if age(instance) > observed.max_lifetime {
            Some(Reason::MaxLifetime)
        } else if observed.github.is_some()
            && !online
            && !observed.seen_online.contains(name)
            && (observed.listed_at - instance.created_at)
                .to_std()
                .is_ok_and(|waited| waited > observed.boot_timeout)
        {
            Some(Reason::BootTimeout)
        } else {
            None
        };
        if let Some(reason) = remove {
            plan.actions.push(Action::Remove {
                name: name.to_owned(),
                runner_id: runner.map(|r| r.id),
                reason,
            });
            plan.states.push((name.to_owned(), RunnerState::Removing));
            continue;
        }
        live += 1;
        let state = match runner {
            Some(r) if r.busy => RunnerState::Busy,
            Some(_) if online => RunnerState::Idle,
            _ => RunnerState::Booting,
        };
        if state == RunnerState::Idle {
            idle.push(instance);
        }
        plan.states.push((name.to_owned(), state));
    }
    let listed: HashSet<&str> = observed.instances.iter().map(|i| i.name.as_str()).collect();
    let creating = observed
        .creating
        .iter()
        .filter(|name| !listed.contains(name.as_str()))
        .count();
    live += u32::try_from(creating).unwrap_or(u32::MAX);

    if live < observed.desired {
        plan.actions.push(Action::Create(observed.desired - live));
    } else if live > observed.desired && observed.scale_down && observed.github.is_some() {
        let excess = (live - observed.desired) as usize;
        idle.sort_by_key(|instance| instance.created_at);
        for instance in idle.into_iter().take(excess) {
            plan.actions.push(Action::Remove {
                name: instance.name.clone(),
                runner_id: registration(&instance.name).map(|r| r.id),
                reason: Reason::ScaleDown,
            });
            if let Some(entry) = plan.states.iter_mut().find(|(n, _)| *n == instance.name) {
                entry.1 = RunnerState::Removing;
            }
        }
    }

    for runner in observed.github.unwrap_or_default() {
        let known = listed.contains(runner.name.as_str())
            || observed.creating.contains(&runner.name)
            || observed.removing.contains(&runner.name);
        if !known {
            plan.actions.push(Action::Deregister {
                name: runner.name.clone(),
                runner_id: runner.id,
            });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: Duration = Duration::from_secs(600);
    const LIFETIME: Duration = Duration::from_secs(86400);

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn instance(name: &str, age_secs: i64) -> Instance {
        Instance {
            name: name.into(),
            backend_id: "1".into(),
            created_at: now() - chrono::Duration::seconds(age_secs),
            ended: false,
        }
    }

    fn ended(name: &str) -> Instance {
        Instance {
            ended: true,
            ..instance(name, 60)
        }
    }

    fn runner(id: u64, name: &str, status: &str, busy: bool) -> Runner {
        Runner {
            id,
            name: name.into(),
            status: status.into(),
            busy,
            labels: vec![],
        }
    }

    struct Case {
        desired: u32,
        scale_down: bool,
        instances: Vec<Instance>,
        github: Option<Vec<Runner>>,
        creating: HashSet<String>,
        removing: HashSet<String>,
        seen_online: HashSet<String>,
        listed_at: DateTime<Utc>,
    }

    impl Case {
        fn new(desired: u32) -> Self {
            Self {
                desired,
                scale_down: true,
                instances: vec![],
                github: Some(vec![]),
                creating: HashSet::new(),
                removing: HashSet::new(),
                seen_online: HashSet::new(),
                listed_at: now(),
            }
        }

        fn plan(&self) -> Plan {
            decide(&Observed {
                now: now(),
                desired: self.desired,
                scale_down: self.scale_down,
                instances: &self.instances,
                github: self.github.as_deref(),
                listed_at: self.listed_at,
                creating: &self.creating,
                removing: &self.removing,
                seen_online: &self.seen_online,
                boot_timeout: BOOT,
                max_lifetime: LIFETIME,
            })
        }
    }

    fn removed(plan: &Plan) -> Vec<(String, Reason)> {
        plan.actions
            .iter()
            .filter_map(|action| match action {
                Action::Remove { name, reason, .. } => Some((name.clone(), *reason)),
                _ => None,
            })
            .collect()
    }

    fn state(plan: &Plan, name: &str) -> RunnerState {
        plan.states.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn desired_is_the_pressure_clamped() {
        assert_eq!(desired(Some(5), 1, 10), 5);
        assert_eq!(desired(Some(50), 1, 10), 10);
        assert_eq!(desired(Some(0), 2, 10), 2);
        assert_eq!(desired(None, 2, 10), 2);
        assert_eq!(desired(Some(u64::MAX), 0, 7), 7);
    }

    #[test]
    fn creates_the_shortfall_counting_runners_being_created() {
        let mut case = Case::new(5);
        case.instances = vec![instance("a", 10)];
        case.creating = ["b".to_string(), "a".to_string()].into();
        // `a` is both listed and still in `creating` (its create just finished): counted once.
        assert_eq!(case.plan().actions, vec![Action::Create(3)]);
        case.desired = 2;
        assert!(case.plan().actions.is_empty());
    }

    #[test]
    fn scale_down_removes_idle_runners_only_oldest_first() {
        let mut case = Case::new(1);
        case.instances = vec![
            instance("busy", 500),
            instance("idle-new", 100),
            instance("idle-old", 300),
            instance("booting", 50),
        ];
        case.github = Some(vec![
            runner(1, "busy", "online", true),
            runner(2, "idle-new", "online", false),
            runner(3, "idle-old", "online", false),
        ]);
        let plan = case.plan();
        assert_eq!(
            plan.actions,
            vec![
                Action::Remove {
                    name: "idle-old".into(),
                    runner_id: Some(3),
                    reason: Reason::ScaleDown
                },
                Action::Remove {
                    name: "idle-new".into(),
                    runner_id: Some(2),
                    reason: Reason::ScaleDown
                },
            ]
        );
        assert_eq!(state(&plan, "busy"), RunnerState::Busy);
        assert_eq!(state(&plan, "booting"), RunnerState::Booting);
        assert_eq!(state(&plan, "idle-old"), RunnerState::Removing);
        // Desired 0: still no busy or booting runner is touched.
        case.desired = 0;
        let names: Vec<String> = removed(&case.plan()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["idle-old", "idle-new"]);
        // Before the planner's pressure is first heard, nothing is scaled down.
        case.scale_down = false;
        assert!(case.plan().actions.is_empty());
    }

    #[test]
    fn nothing_is_scaled_down_or_judged_while_github_is_unknown() {
        let mut case = Case::new(0);
        case.instances = vec![instance("a", 5000), instance("b", 10)];
        case.github = None;
        assert!(case.plan().actions.is_empty());
        assert_eq!(state(&case.plan(), "a"), RunnerState::Booting);
    }

    #[test]
    fn ended_runners_are_removed_and_deregistered_if_registered() {
        let mut case = Case::new(2);
        case.instances = vec![ended("done"), ended("gone"), instance("up", 10)];
        case.github = Some(vec![
            runner(7, "done", "offline", false),
            runner(8, "up", "online", false),
        ]);
        let plan = case.plan();
        assert!(plan.actions.contains(&Action::Remove {
            name: "done".into(),
            runner_id: Some(7),
            reason: Reason::Ended
        }));
        assert!(plan.actions.contains(&Action::Remove {
            name: "gone".into(),
            runner_id: None,
            reason: Reason::Ended
        }));
        // Two ended, one up, desired two: one more.
        assert!(plan.actions.contains(&Action::Create(1)));
        // Ended runners are removed even while GitHub is unknown.
        case.github = None;
        assert_eq!(removed(&case.plan()).len(), 2);
    }

    #[test]
    fn boot_timeout_removes_runners_never_seen_online() {
        let mut case = Case::new(3);
        case.instances = vec![
            instance("slow", 700),
            instance("fresh", 100),
            instance("offline-registered", 700),
            instance("was-online", 700),
        ];
        case.github = Some(vec![
            runner(4, "offline-registered", "offline", false),
            runner(5, "was-online", "offline", false),
        ]);
        case.seen_online = ["was-online".to_string()].into();
        let plan = case.plan();
        assert_eq!(
            removed(&plan),
            vec![
                ("slow".into(), Reason::BootTimeout),
                ("offline-registered".into(), Reason::BootTimeout)
            ]
        );
        assert!(plan.actions.contains(&Action::Remove {
            name: "offline-registered".into(),
            runner_id: Some(4),
            reason: Reason::BootTimeout
        }));
        assert!(plan.actions.contains(&Action::Create(1)));
    }

    #[test]
    fn boot_timeout_is_judged_only_by_a_listing_asked_for_after_the_deadline() {
        let mut case = Case::new(1);
        // 700 s old, booting for 600 s: its deadline was 100 s ago.
        case.instances = vec![instance("slow", 700)];
        case.listed_at = now() - chrono::Duration::seconds(150);
        // A listing from before the deadline says nothing of whether it came online in time.
        assert!(removed(&case.plan()).is_empty());
        assert_eq!(state(&case.plan(), "slow"), RunnerState::Booting);
        case.listed_at = now() - chrono::Duration::seconds(50);
        assert_eq!(
            removed(&case.plan()),
            vec![("slow".into(), Reason::BootTimeout)]
        );
    }

    #[test]
    fn max_lifetime_removes_even_busy_runners() {
        let mut case = Case::new(1);
        case.instances = vec![instance("old", 90000)];
        case.github = Some(vec![runner(9, "old", "online", true)]);
        assert_eq!(
            removed(&case.plan()),
            vec![("old".into(), Reason::MaxLifetime)]
        );
        case.github = None;
        assert_eq!(
            removed(&case.plan()),
            vec![("old".into(), Reason::MaxLifetime)]
        );
    }

    #[test]
    fn orphans_are_deregistered_unless_being_created_or_removed() {
        let mut case = Case::new(2);
        case.instances = vec![instance("a", 10)];
        case.creating = ["new".to_string()].into();
        case.removing = ["leaving".to_string()].into();
        case.github = Some(vec![
            runner(1, "a", "online", false),
            runner(2, "new", "offline", false),
            runner(3, "leaving", "online", false),
            runner(4, "orphan", "offline", false),
        ]);
        let plan = case.plan();
        assert_eq!(
            plan.actions,
            vec![Action::Deregister {
                name: "orphan".into(),
                runner_id: 4
            }]
        );
    }

    #[test]
    fn runners_being_removed_are_neither_counted_nor_acted_on() {
        let mut case = Case::new(1);
        case.instances = vec![ended("x"), instance("y", 10)];
        case.removing = ["x".to_string()].into();
        let plan = case.plan();
        assert_eq!(plan.actions, Vec::<Action>::new());
        assert_eq!(state(&plan, "x"), RunnerState::Removing);
    }
}
