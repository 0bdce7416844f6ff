//! Tenant isolation, three walls deep: scoped handlers, scoped queries, and row-level security.

use chat_engine_client::pb;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tonic::Code;

use crate::harness::{TestApp, bearer, fresh_database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_ids_are_not_found() {
    let app = TestApp::spawn().await;
    let a = app.tenant("tenant-a").await;
    let b = app.tenant("tenant-b").await;
    let (a_agent, _) = app.agent(&a, "alice").await;
    let a_key = app
        .tenants()
        .create_api_key(bearer(
            pb::admin::CreateApiKeyRequest {
                tenant_id: a.tenant_id.clone(),
                name: "w".into(),
                allowed_domains: vec![],
            },
            &app.operator_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap()
        .id;

    let mut agents = app.agents();
    let mut tenants = app.tenants();
    let tok = b.admin_token.clone();
    let op = app.operator_token.clone();
    let cases: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "GetAgent",
            agents
                .get_agent(bearer(
                    pb::GetAgentRequest {
                        agent_id: a_agent.clone(),
                    },
                    &tok,
                ))
                .await
                .map(drop),
        ),
        (
            "UpdateAgent",
            agents
                .update_agent(bearer(
                    pb::UpdateAgentRequest {
                        agent_id: a_agent.clone(),
                        display_name: Some("x".into()),
                        ..Default::default()
                    },
                    &tok,
                ))
                .await
                .map(drop),
        ),
        (
            "DeactivateAgent",
            agents
                .deactivate_agent(bearer(
                    pb::DeactivateAgentRequest {
                        agent_id: a_agent.clone(),
                    },
                    &tok,
                ))
                .await
                .map(drop),
        ),
        (
            "RevokeApiKey (key of A under tenant B)",
            tenants
                .revoke_api_key(bearer(
                    pb::admin::RevokeApiKeyRequest {
                        tenant_id: b.tenant_id.clone(),
                        api_key_id: a_key.clone(),
                    },
                    &op,
                ))
                .await
                .map(drop),
        ),
        (
            "SetAllowedDomains (key of A under tenant B)",
            tenants
                .set_allowed_domains(bearer(
                    pb::admin::SetAllowedDomainsRequest {
                        tenant_id: b.tenant_id.clone(),
                        api_key_id: a_key.clone(),
                        allowed_domains: vec![],
                    },
                    &op,
                ))
                .await
                .map(drop),
        ),
    ];
    for (rpc, r) in cases {
        let e = r.expect_err(rpc);
        assert_eq!(e.code(), Code::NotFound, "{rpc}: {e:?}");
    }

    // A's agent is untouched and B's list shows only B.
    let still = agents
        .get_agent(bearer(
            pb::GetAgentRequest {
                agent_id: a_agent.clone(),
            },
            &a.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert!(still.active);
    assert_eq!(still.display_name, "alice");
    let listed = agents
        .list_agents(bearer(pb::ListAgentsRequest::default(), &tok))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.agents.len(), 1);
    assert_eq!(listed.agents[0].id, b.admin_id);

    // A page token of tenant A is refused by tenant B.
    app.agent(&a, "bert").await;
    let page = agents
        .list_agents(bearer(
            pb::ListAgentsRequest {
                page_size: 1,
                page_token: String::new(),
            },
            &a.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let replay = agents
        .list_agents(bearer(
            pb::ListAgentsRequest {
                page_size: 1,
                page_token: page.next_page_token,
            },
            &tok,
        ))
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::InvalidArgument);
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count_users(conn: &mut AsyncPgConnection) -> i64 {
    // Deliberately no tenant filter: row-level security alone must hold.
    diesel::sql_query("SELECT count(*) AS n FROM users")
        .get_result::<Count>(conn)
        .await
        .unwrap()
        .n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_backs_up_every_query() {
    let app = TestApp::spawn().await;
    let a = app.tenant("rls-a").await;
    app.agent(&a, "one").await;
    let b = app.tenant("rls-b").await;

    let mut conn = AsyncPgConnection::establish(&app.app_url).await.unwrap();
    // No tenant set: zero rows, not an error.
    assert_eq!(count_users(&mut conn).await, 0);

    conn.batch_execute("BEGIN").await.unwrap();
    diesel::sql_query("SELECT set_config('app.tenant_id', $1, true)")
        .bind::<Text, _>(&a.tenant_id)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(count_users(&mut conn).await, 2);
    // Writing a row for another tenant is refused by the policy's WITH CHECK.
    let cross = diesel::sql_query(
        "INSERT INTO visitors (tenant_id, visitor_id) VALUES ($1::uuid, gen_random_uuid())",
    )
    .bind::<Text, _>(&b.tenant_id)
    .execute(&mut conn)
    .await
    .unwrap_err();
    assert!(cross.to_string().contains("row-level security"), "{cross}");
    conn.batch_execute("ROLLBACK").await.unwrap();

    // The setting was transaction-local: the pooled connection is clean again.
    assert_eq!(count_users(&mut conn).await, 0);
    conn.batch_execute("BEGIN").await.unwrap();
    diesel::sql_query("SELECT set_config('app.tenant_id', $1, true)")
        .bind::<Text, _>(&b.tenant_id)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(count_users(&mut conn).await, 1);
    conn.batch_execute("COMMIT").await.unwrap();
}

#[derive(diesel::QueryableByName, Debug)]
struct Problem {
    #[diesel(sql_type = Text)]
    what: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenant_table_leads_with_tenant_id_and_forces_rls() {
    let (admin_url, _) = fresh_database().await;
    let mut conn = AsyncPgConnection::establish(&admin_url).await.unwrap();
    let tables: Vec<Problem> = diesel::sql_query(
        "SELECT c.relname AS what FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname NOT LIKE '\\_\\_%'",
    )
    .load(&mut conn)
    .await
    .unwrap();
    assert!(
        tables.len() >= 14,
        "expected the whole model, found {}",
        tables.len()
    );

    let problems: Vec<Problem> = diesel::sql_query(
        r#"
        WITH t AS (
          SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname NOT LIKE '\_\_%'
        )
        SELECT t.relname || ': row-level security not enabled and forced' AS what FROM t
          JOIN pg_class c ON c.oid = t.oid WHERE NOT (c.relrowsecurity AND c.relforcerowsecurity)
        UNION ALL
        SELECT t.relname || ': no tenant isolation policy' AS what FROM t
          WHERE NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = t.oid
            AND pg_get_expr(p.polqual, p.polrelid) LIKE '%app.tenant_id%')
        UNION ALL
        SELECT t.relname || ': primary key does not lead with tenant_id' AS what FROM t
          JOIN pg_constraint k ON k.conrelid = t.oid AND k.contype = 'p'
          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.conkey[1]
          WHERE a.attname <> 'tenant_id'
        UNION ALL
        SELECT t.relname || ': foreign key ' || k.conname || ' is not led by tenant_id' AS what FROM t
          JOIN pg_constraint k ON k.conrelid = t.oid AND k.contype = 'f'
          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.conkey[1]
          WHERE a.attname <> 'tenant_id'
        UNION ALL
        SELECT t.relname || ': index ' || i.relname || ' is not led by tenant_id' AS what FROM t
          JOIN pg_index x ON x.indrelid = t.oid JOIN pg_class i ON i.oid = x.indexrelid
          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]
          WHERE a.attname <> 'tenant_id' AND i.relname <> 'tenants_slug_key'
        "#,
    )
    .load(&mut conn)
    .await
    .unwrap();
    let problems: Vec<String> = problems.into_iter().map(|p| p.what).collect();
    assert!(
        problems.is_empty(),
        "schema breaks tenancy rules:\n{}",
        problems.join("\n")
    );

    // Every foreign key between tenant tables is composite, so a row can never point into
    // another tenant (the only single-column ones point at tenants(tenant_id) itself).
    let single: Vec<Problem> = diesel::sql_query(
        "SELECT conrelid::regclass::text || '.' || conname AS what FROM pg_constraint
         WHERE contype = 'f' AND array_length(conkey, 1) = 1 AND confrelid <> 'tenants'::regclass",
    )
    .load(&mut conn)
    .await
    .unwrap();
    assert!(single.is_empty(), "{single:?}");

    #[derive(diesel::QueryableByName)]
    struct RoleFacts {
        #[diesel(sql_type = Bool)]
        rolsuper: bool,
        #[diesel(sql_type = Bool)]
        rolbypassrls: bool,
        #[diesel(sql_type = BigInt)]
        owned: i64,
    }
    let facts: RoleFacts = diesel::sql_query(
        "SELECT r.rolsuper, r.rolbypassrls,
           (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid) AS owned
         FROM pg_roles r WHERE r.rolname = 'chat_engine_app'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert!(!facts.rolsuper && !facts.rolbypassrls);
    assert_eq!(facts.owned, 0, "the app role must own nothing");
}
