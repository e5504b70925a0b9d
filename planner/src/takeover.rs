//! Taking over the database of Canonical's planner, as part of every migration run (`planner
//! migrate`, `planner serve`): the conversion itself is [`schema::canonical::take_over`]; this
//! module logs what it did (counts only, never a token or a payload) and the names our API
//! cannot address.

use diesel::PgConnection;

/// Converts a database of Canonical's planner in place, if that is what `conn` holds (nothing
/// happens on ours or an empty one); refuses, untouched, a database of another shape.
pub fn convert_canonical(conn: &mut PgConnection) -> anyhow::Result<()> {
    let Some(converted) = schema::canonical::take_over(conn)? else {
        return Ok(());
    };
    log::info!(
        event = "canonical_database_converted",
        canonical_version = converted.version,
        flavors = converted.flavors,
        tokens = converted.tokens,
        jobs = converted.jobs,
        open_jobs = converted.open_jobs,
        payloads = converted.payloads;
        "converted the database of Canonical's planner"
    );
    warn_unaddressable_names(conn)
}

/// Logs each flavor and token whose name (accepted by Canonical's planner) our API cannot
/// address: it keeps working, but cannot be fetched, changed or deleted by name.
fn warn_unaddressable_names(conn: &mut PgConnection) -> anyhow::Result<()> {
    let flavors = schema::queries::list_flavors(conn)?
        .into_iter()
        .map(|flavor| ("flavor", flavor.name));
    let tokens = schema::queries::list_token_names(conn)?
        .into_iter()
        .map(|name| ("token", name));
    for (kind, name) in flavors.chain(tokens) {
        if let Err(problem) = crate::domain::names::validate_name(&name) {
            log::warn!(
                event = "canonical_name_not_addressable",
                kind,
                name,
                reason:% = problem;
                "a name the API cannot address"
            );
        }
    }
    Ok(())
}
