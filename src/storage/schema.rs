//! Diesel table definitions, mirroring `migrations/`.

diesel::table! {
    tenants (tenant_id) {
        tenant_id -> Uuid,
        name -> Text,
        slug -> Text,
        widget -> Jsonb,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    users (tenant_id, user_id) {
        tenant_id -> Uuid,
        user_id -> Uuid,
        email -> Text,
        display_name -> Text,
        role -> Text,
        status -> Text,
        max_concurrent_chats -> Int4,
        password_hash -> Text,
        active -> Bool,
        last_assigned_at -> Nullable<Timestamptz>,
        last_seen_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    agent_skills (tenant_id, user_id, skill) {
        tenant_id -> Uuid,
        user_id -> Uuid,
        skill -> Text,
        level -> Int2,
    }
}

diesel::table! {
    refresh_tokens (tenant_id, token_id) {
        tenant_id -> Uuid,
        token_id -> Uuid,
        family_id -> Uuid,
        user_id -> Uuid,
        secret_hash -> Bytea,
        expires_at -> Timestamptz,
        created_at -> Timestamptz,
        rotated_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    api_keys (tenant_id, key_id) {
        tenant_id -> Uuid,
        key_id -> Uuid,
        name -> Text,
        prefix -> Text,
        secret_hash -> Bytea,
        allowed_domains -> Array<Text>,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    workflows (tenant_id, workflow_id) {
        tenant_id -> Uuid,
        workflow_id -> Uuid,
        name -> Text,
        enabled -> Bool,
        position -> Int4,
        definition -> Jsonb,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    users,
    agent_skills,
    refresh_tokens,
    api_keys,
    workflows
);
