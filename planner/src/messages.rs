//! Messages between the planner's actors.

use actix::Message;

use crate::domain::job::JobEvent;

/// Applies deliveries in one transaction, in order (deliveries of one job keep their order).
/// Answers one [`Outcome`] per delivery, in the same order, once the transaction has committed.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<Outcome>, StoreError>")]
pub struct ApplyBatch(pub Vec<(String, JobEvent)>);

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The job row now includes this delivery.
    Applied,
    /// This `X-GitHub-Delivery` had been applied before; counted, not applied again.
    Duplicate,
}

/// Why a batch was not applied (the transaction rolled back; nothing was committed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL cannot be reached: retry later, the delivery is fine.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// PostgreSQL answers but refused the batch (a constraint, a deadlock, ...).
    #[error("database refused the batch: {0}")]
    Refused(String),
}
