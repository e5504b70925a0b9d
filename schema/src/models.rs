//! Rows of the planner's tables.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use diesel::{
    deserialize::{self, FromSql},
    pg::{Pg, PgValue},
    prelude::*,
    serialize::{self, Output, ToSql},
    sql_types::{Array, Nullable, Text},
    AsExpression, FromSqlRow,
};
use serde::{Serialize, Serializer};
use utoipa::ToSchema;

use crate::schema::{auth, flavor, job};

/// A `text[]` column that never holds NULL (a `CHECK` constraint guarantees it), read as
/// `Vec<String>`. `diesel print-schema` types every array as `Array<Nullable<_>>`.
#[derive(Debug, Clone, PartialEq, Eq, diesel::FromSqlRow)]
pub struct TextArray(pub Vec<String>);

impl FromSql<Array<Nullable<Text>>, Pg> for TextArray {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let items = <Vec<Option<String>> as FromSql<Array<Nullable<Text>>, Pg>>::from_sql(value)?;
        items
            .into_iter()
            .map(|item| item.ok_or_else(|| "unexpected NULL in a text[] column".into()))
            .collect::<deserialize::Result<Vec<String>>>()
            .map(TextArray)
    }
}

impl From<TextArray> for Vec<String> {
    fn from(array: TextArray) -> Self {
        array.0
    }
}

/// A runner flavor.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = flavor, check_for_backend(Pg))]
pub struct Flavor {
    pub name: String,
    pub platform: String,
    #[diesel(deserialize_as = TextArray)]
    pub labels: Vec<String>,
    pub priority: i32,
    pub is_disabled: bool,
    pub minimum_pressure: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A flavor to create.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = flavor, check_for_backend(Pg))]
pub struct NewFlavor {
    pub name: String,
    pub platform: String,
    pub labels: Vec<String>,
    pub priority: i32,
    pub is_disabled: bool,
    pub minimum_pressure: i32,
}

/// Changes to a flavor; `None` leaves a column as it is.
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = flavor, check_for_backend(Pg))]
pub struct FlavorChanges {
    pub labels: Option<Vec<String>>,
    pub priority: Option<i32>,
    pub is_disabled: Option<bool>,
    pub minimum_pressure: Option<i32>,
}

/// Status of a job, named as GitHub names the `workflow_job` actions; stored and shown as that
/// name.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    AsExpression,
    FromSqlRow,
    Serialize,
    ToSchema,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Waiting,
    InProgress,
    Completed,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 4] = [
        Status::Queued,
        Status::Waiting,
        Status::InProgress,
        Status::Completed,
    ];

    /// The name used in webhooks, the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Waiting => "waiting",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
        }
    }

    /// How far a job has come: `queued` and `waiting` share the lowest rank.
    pub fn rank(self) -> u8 {
        match self {
            Status::Queued | Status::Waiting => 0,
            Status::InProgress => 1,
            Status::Completed => 2,
        }
    }

    /// Whether a job in this status has not started yet (and may still change flavor).
    pub fn is_not_started(self) -> bool {
        self.rank() == 0
    }

    /// Whether a job in this status needs a runner (counts towards pressure): `queued` or
    /// `in_progress`; a `waiting` job waits for an approval, not for a runner.
    pub fn is_open(self) -> bool {
        matches!(self, Status::Queued | Status::InProgress)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of parsing a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not one of queued, waiting, in_progress, completed")]
pub struct UnknownStatus;

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
            .ok_or(UnknownStatus)
    }
}

impl ToSql<Text, Pg> for Status {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
    }
}

impl FromSql<Text, Pg> for Status {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Pg>>::from_sql(value)?;
        Ok(text.parse()?)
    }
}

/// What the planner knows of a workflow job from GitHub: the `job` table's columns but its
/// bookkeeping (the assigned flavor, the time of the last write). The planner's state machine
/// (`planner::domain::job`) moves it from delivery to delivery.
///
/// Serialized, these are Canonical's fields (`platform`, `id` as a string, `labels`,
/// `created_at`, `started_at`, `completed_at`, the optional ones absent when unset, as there)
/// and ours beside them.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize, ToSchema)]
#[diesel(table_name = job, check_for_backend(Pg))]
pub struct JobState {
    pub platform: String,
    /// GitHub's workflow job id, as a string (as Canonical's planner shows it).
    #[serde(serialize_with = "as_string")]
    #[schema(value_type = String)]
    pub id: i64,
    /// Lowercased `runs-on` labels.
    #[diesel(deserialize_as = TextArray)]
    pub labels: Vec<String>,
    pub status: Status,
    pub conclusion: Option<String>,
    /// `owner/name`.
    pub repository: String,
    pub run_id: Option<i64>,
    pub run_attempt: Option<i64>,
    pub workflow_name: Option<String>,
    pub job_name: Option<String>,
    pub runner_name: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Absent until the job starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Absent until the job completes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

/// A row of the `job` table: the job's state and the planner's bookkeeping.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize, ToSchema)]
#[diesel(table_name = job, check_for_backend(Pg))]
#[schema(
    description = "A workflow job: Canonical's fields (`platform`, `id` as a string, \
    `labels`, `created_at`, `started_at`, `completed_at`, `assigned_flavor`, the optional ones \
    absent when unset) and ours beside them."
)]
pub struct Job {
    #[diesel(embed)]
    #[serde(flatten)]
    pub state: JobState,
    /// Absent while no flavor matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_flavor: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A number written as a JSON string.
fn as_string<S: Serializer>(number: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(number)
}

/// An API token: its name and the SHA-256 of its value.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = auth, check_for_backend(Pg))]
pub struct Token {
    pub name: String,
    pub token_sha256: Vec<u8>,
    pub created_at: DateTime<Utc>,
}
