//! The job state machine.
//!
//! Rules: `completed` is final; `in_progress` never goes back to `queued`/`waiting`; `queued` and
//! `waiting` follow arrival order (GitHub sends queued -> waiting -> queued for jobs behind an
//! environment approval). Descriptive fields come from the most advanced action that carries
//! them, so any permutation or duplication of a job's deliveries (one per action) ends in the
//! same state. (Every action's raw payload is kept beside the state, by the job store.)

use std::sync::Arc;

/// The job's status and state are the `job` table's own types (`schema::models`): one field
/// list for the table, the API and these rules.
pub use schema::models::{JobState, Status, UnknownStatus};

/// One `workflow_job` delivery, reduced to what the planner keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    /// What the delivery says of the job. Its status is the delivery's action; `runner_name`
    /// and `started_at` only from `in_progress` and `completed` (GitHub fills them oddly on
    /// `queued`), `conclusion` and `completed_at` only from `completed`; labels normalised
    /// (lowercased).
    pub job: JobState,
    /// The raw webhook body (JSON text), kept as it came.
    pub payload: Arc<str>,
}

impl JobEvent {
    /// The action, which is the status the job moves to.
    pub fn action(&self) -> Status {
        self.job.status
    }
}

/// The state machine's step: what a job's state becomes when a later delivery of the same job
/// arrives.
pub trait Apply {
    /// Applies a later delivery of the same job.
    fn apply(&mut self, event: &JobEvent);
}

impl Apply for JobState {
    fn apply(&mut self, event: &JobEvent) {
        let event = &event.job;
        let current = self.status.rank();
        let incoming = event.status.rank();
        // An event at least as advanced as the job speaks for it; a less advanced one only
        // fills gaps.
        let dominant = incoming >= current;
        if incoming > current || (incoming == current && incoming == 0) {
            self.status = event.status;
        }

        fn pick<T: Clone>(field: &mut Option<T>, incoming: &Option<T>, dominant: bool) {
            if incoming.is_some() && (dominant || field.is_none()) {
                field.clone_from(incoming);
            }
        }
        pick(&mut self.conclusion, &event.conclusion, dominant);
        pick(&mut self.run_id, &event.run_id, dominant);
        pick(&mut self.run_attempt, &event.run_attempt, dominant);
        pick(&mut self.workflow_name, &event.workflow_name, dominant);
        pick(&mut self.job_name, &event.job_name, dominant);
        pick(&mut self.runner_name, &event.runner_name, dominant);
        pick(&mut self.started_at, &event.started_at, dominant);
        pick(&mut self.completed_at, &event.completed_at, dominant);
        if dominant {
            self.labels.clone_from(&event.labels);
            self.repository.clone_from(&event.repository);
            self.created_at = event.created_at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn event(action: Status) -> JobEvent {
        let started = action.rank() >= 1;
        let completed = action == Status::Completed;
        JobEvent {
            job: JobState {
                platform: "github".into(),
                id: 7,
                status: action,
                labels: vec!["self-hosted".into(), "x64".into()],
                repository: "octo/repo".into(),
                run_id: Some(70),
                run_attempt: Some(1),
                workflow_name: Some("CI".into()),
                job_name: Some("build".into()),
                runner_name: started.then(|| "runner-1".into()),
                conclusion: completed.then(|| "success".into()),
                created_at: at(0),
                started_at: started.then(|| at(10)),
                completed_at: completed.then(|| at(20)),
            },
            payload: format!(r#"{{"action":"{}"}}"#, action.as_str()).into(),
        }
    }

    fn replay(events: &[JobEvent]) -> JobState {
        let mut state = events[0].job.clone();
        for event in &events[1..] {
            state.apply(event);
        }
        state
    }

    #[test]
    fn status_round_trips_and_rejects_unknown() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse(), Ok(status));
        }
        assert_eq!("requested".parse::<Status>(), Err(UnknownStatus));
    }

    #[test]
    fn completed_is_final() {
        let state = replay(&[
            event(Status::Completed),
            event(Status::Queued),
            event(Status::InProgress),
        ]);
        assert_eq!(state.status, Status::Completed);
        assert_eq!(state.conclusion.as_deref(), Some("success"));
        assert_eq!(state.started_at, Some(at(10)));
    }

    #[test]
    fn in_progress_never_goes_back() {
        let state = replay(&[
            event(Status::Queued),
            event(Status::InProgress),
            event(Status::Waiting),
        ]);
        assert_eq!(state.status, Status::InProgress);
        assert_eq!(state.runner_name.as_deref(), Some("runner-1"));
    }

    #[test]
    fn queued_and_waiting_follow_arrival_order() {
        let state = replay(&[event(Status::Queued), event(Status::Waiting)]);
        assert_eq!(state.status, Status::Waiting);
        let state = replay(&[
            event(Status::Queued),
            event(Status::Waiting),
            event(Status::Queued),
        ]);
        assert_eq!(state.status, Status::Queued);
    }

    #[test]
    fn queued_does_not_claim_a_start_time() {
        let state = replay(&[event(Status::Queued)]);
        assert_eq!(state.started_at, None);
        assert_eq!(state.runner_name, None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any order of one delivery per action, with any duplicates, ends in the same state
        /// as the order GitHub sends them in.
        #[test]
        fn permutations_and_duplicates_converge(
            order in Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
            duplicates in proptest::collection::vec(0usize..4, 0..4),
        ) {
            let lifecycle = [Status::Queued, Status::Waiting, Status::InProgress, Status::Completed];
            let expected = replay(&lifecycle.map(event));
            let mut events: Vec<JobEvent> = order.iter().map(|&i| event(lifecycle[i])).collect();
            for (n, i) in duplicates.into_iter().enumerate() {
                events.insert(n % (events.len() + 1), event(lifecycle[i]));
            }
            prop_assert_eq!(replay(&events), expected);
        }
    }
}
