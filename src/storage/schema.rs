//! Diesel table definitions, mirroring `migrations/`.

diesel::table! {
    tenants (tenant_id) {
        tenant_id -> Uuid,
        name -> Text,
        slug -> Text,
        widget -> Jsonb,
        rate_limits -> Jsonb,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        time_zone -> Text,
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
        is_default -> Bool,
    }
}

diesel::table! {
    conversations (tenant_id, conversation_id) {
        tenant_id -> Uuid,
        conversation_id -> Uuid,
        kind -> Text,
        status -> Text,
        title -> Text,
        direct_key -> Nullable<Text>,
        visitor_id -> Nullable<Uuid>,
        assigned_agent_id -> Nullable<Uuid>,
        last_seq -> Int8,
        created_at -> Timestamptz,
        last_activity_at -> Timestamptz,
        closed_at -> Nullable<Timestamptz>,
        workflow_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    conversation_members (tenant_id, conversation_id, user_id) {
        tenant_id -> Uuid,
        conversation_id -> Uuid,
        user_id -> Uuid,
        read_seq -> Int8,
        joined_at -> Timestamptz,
    }
}

diesel::table! {
    messages (tenant_id, message_id) {
        tenant_id -> Uuid,
        message_id -> Uuid,
        conversation_id -> Uuid,
        seq -> Int8,
        sender_type -> Text,
        sender_id -> Nullable<Uuid>,
        body -> Text,
        request_id -> Nullable<Uuid>,
        request_hash -> Nullable<Bytea>,
        created_at -> Timestamptz,
        edited_at -> Nullable<Timestamptz>,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    conversation_events (tenant_id, conversation_id, seq) {
        tenant_id -> Uuid,
        conversation_id -> Uuid,
        seq -> Int8,
        kind -> Text,
        message_id -> Nullable<Uuid>,
        actor_id -> Nullable<Uuid>,
        payload -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    agent_presence (tenant_id, user_id, node_id) {
        tenant_id -> Uuid,
        user_id -> Uuid,
        node_id -> Uuid,
        streams -> Int4,
        heartbeat_at -> Timestamptz,
    }
}

diesel::table! {
    visitors (tenant_id, visitor_id) {
        tenant_id -> Uuid,
        visitor_id -> Uuid,
        name -> Text,
        email -> Text,
        country -> Text,
        language -> Text,
        visitor_type -> Text,
        attributes -> Jsonb,
        created_at -> Timestamptz,
        last_seen_at -> Timestamptz,
        external_user_id -> Nullable<Text>,
        page_url -> Text,
        referrer -> Text,
    }
}

diesel::table! {
    visitor_sessions (tenant_id, session_id) {
        tenant_id -> Uuid,
        session_id -> Text,
        visitor_id -> Uuid,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    identity_settings (tenant_id) {
        tenant_id -> Uuid,
        secret -> Nullable<Bytea>,
        required -> Bool,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    queue_entries (tenant_id, conversation_id) {
        tenant_id -> Uuid,
        conversation_id -> Uuid,
        workflow_id -> Nullable<Uuid>,
        priority -> Int4,
        required_skills -> Array<Text>,
        enqueued_at -> Timestamptz,
        max_wait_at -> Nullable<Timestamptz>,
        actions -> Jsonb,
        max_wait_fired -> Bool,
        excluded -> Array<Uuid>,
        visitor_id -> Uuid,
    }
}

diesel::table! {
    assignments (tenant_id, assignment_id) {
        tenant_id -> Uuid,
        assignment_id -> Uuid,
        conversation_id -> Uuid,
        agent_id -> Nullable<Uuid>,
        workflow_id -> Nullable<Uuid>,
        reasons -> Text,
        assigned_at -> Timestamptz,
        ended_at -> Nullable<Timestamptz>,
        strategy -> Text,
        via -> Text,
        queued -> Jsonb,
    }
}

diesel::table! {
    csat_ratings (tenant_id, conversation_id) {
        tenant_id -> Uuid,
        conversation_id -> Uuid,
        score -> Int2,
        comment -> Text,
        agent_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    agent_state_log (tenant_id, user_id, at) {
        tenant_id -> Uuid,
        user_id -> Uuid,
        at -> Timestamptz,
        status -> Text,
        capacity -> Int4,
        active -> Bool,
        counted -> Bool,
    }
}

// analytics_slots (more than diesel's 16 columns) is read and written with SQL of its own
// in `storage::analytics`.

diesel::table! {
    analytics_chats (tenant_id, conversation_id) {
        tenant_id -> Uuid,
        conversation_id -> Uuid,
        contributions -> Jsonb,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    conversations,
    conversation_members,
    messages,
    conversation_events,
    agent_presence,
    tenants,
    users,
    agent_skills,
    refresh_tokens,
    api_keys,
    workflows,
    visitors,
    visitor_sessions,
    identity_settings,
    queue_entries,
    assignments,
    csat_ratings
);
