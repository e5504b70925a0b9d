//! Rows of the planner's tables.

use chrono::{DateTime, Utc};
use diesel::{
    deserialize::{self, FromSql},
    pg::{Pg, PgValue},
    prelude::*,
    sql_types::{Array, Nullable, Text},
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

/// A workflow job, as stored. As a changeset it writes every column but the key, `None` as NULL.
///
/// Serialized, it is the job as the planner's API shows it: Canonical's fields (`platform`, `id`
/// as a string, `labels`, `created_at`, `started_at`, `completed_at`, `assigned_flavor`, the
/// optional ones absent when unset, as there) and ours beside them.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Queryable,
    Selectable,
    Insertable,
    AsChangeset,
    Identifiable,
    Serialize,
    ToSchema,
)]
#[diesel(table_name = job, primary_key(platform, id), treat_none_as_null = true)]
#[diesel(check_for_backend(Pg))]
#[schema(
    description = "A workflow job: Canonical's fields (`platform`, `id` as a string, \
    `labels`, `created_at`, `started_at`, `completed_at`, `assigned_flavor`, the optional ones \
    absent when unset) and ours beside them."
)]
pub struct Job {
    pub platform: String,
    /// GitHub's workflow job id, as a string (as Canonical's planner shows it).
    #[serde(serialize_with = "as_string")]
    #[schema(value_type = String)]
    pub id: i64,
    /// Lowercased `runs-on` labels.
    #[diesel(deserialize_as = TextArray)]
    pub labels: Vec<String>,
    /// `queued`, `waiting`, `in_progress` or `completed`.
    pub status: String,
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
