// @generated automatically by Diesel CLI.

diesel::table! {
    auth (name) {
        name -> Text,
        token_sha256 -> Bytea,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    delivery (id) {
        id -> Text,
        job_platform -> Text,
        job_id -> Int8,
        action -> Text,
        first_seen_at -> Timestamptz,
        last_seen_at -> Timestamptz,
        duplicates -> Int4,
    }
}

diesel::table! {
    flavor (name) {
        name -> Text,
        platform -> Text,
        labels -> Array<Nullable<Text>>,
        priority -> Int4,
        is_disabled -> Bool,
        minimum_pressure -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    job (platform, id) {
        platform -> Text,
        id -> Int8,
        labels -> Array<Nullable<Text>>,
        status -> Text,
        conclusion -> Nullable<Text>,
        repository -> Text,
        run_id -> Nullable<Int8>,
        run_attempt -> Nullable<Int8>,
        workflow_name -> Nullable<Text>,
        job_name -> Nullable<Text>,
        runner_name -> Nullable<Text>,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        completed_at -> Nullable<Timestamptz>,
        assigned_flavor -> Nullable<Text>,
        updated_at -> Timestamptz,
        reconciled_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    job_payload (platform, job_id, action) {
        platform -> Text,
        job_id -> Int8,
        action -> Text,
        payload -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(auth, delivery, flavor, job, job_payload,);
