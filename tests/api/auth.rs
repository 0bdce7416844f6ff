//! AuthService and token checks: login, refresh rotation and reuse, logout, forged tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chat_engine::auth::jwt::{AGENT_AUDIENCE, Claims, JwtKeys, VISITOR_AUDIENCE};
use chat_engine_client::pb;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tonic::Code;

use crate::harness::{TestApp, bearer};

async fn me(app: &TestApp, token: &str) -> Result<pb::Agent, tonic::Status> {
    Ok(app
        .agents()
        .list_agents(bearer(pb::ListAgentsRequest::default(), token))
        .await?
        .into_inner()
        .agents
        .remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_accepts_the_right_password_only() {
    let app = TestApp::spawn().await;
    let t = app.tenant("login").await;
    let ok = app
        .login("login", "ADMIN@login.example", "admin-password-123")
        .await
        .unwrap();
    assert_eq!(ok.tenant_id, t.tenant_id);
    assert_eq!(ok.agent_id, t.admin_id);
    me(&app, &ok.access_token).await.unwrap();

    let wrong_pw = app
        .login("login", "admin@login.example", "admin-password-124")
        .await
        .unwrap_err();
    let no_user = app
        .login("login", "nobody@login.example", "admin-password-123")
        .await
        .unwrap_err();
    let no_tenant = app
        .login("nope", "admin@login.example", "admin-password-123")
        .await
        .unwrap_err();
    for e in [&wrong_pw, &no_user, &no_tenant] {
        assert_eq!(e.code(), Code::Unauthenticated);
        // The same words whatever was wrong: nothing reveals which accounts exist.
        assert_eq!(e.message(), wrong_pw.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_stored_as_argon2id_with_owasp_parameters() {
    let app = TestApp::spawn().await;
    app.tenant("hash").await;
    #[derive(diesel::QueryableByName)]
    struct H {
        #[diesel(sql_type = diesel::sql_types::Text)]
        password_hash: String,
    }
    let mut db = AsyncPgConnection::establish(&app.admin_url).await.unwrap();
    let rows: Vec<H> = diesel::sql_query("SELECT password_hash FROM users")
        .load(&mut db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0]
            .password_hash
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{}",
        rows[0].password_hash
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = TestApp::spawn().await;
    app.tenant("rot").await;
    let first = app
        .login("rot", "admin@rot.example", "admin-password-123")
        .await
        .unwrap();
    let mut a = app.auth();
    let second = a
        .refresh(pb::RefreshRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    me(&app, &second.access_token).await.unwrap();

    // The old token again: someone copied it. Both it and its successor die.
    let reuse = a
        .refresh(pb::RefreshRequest {
            refresh_token: first.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);
    let successor = a
        .refresh(pb::RefreshRequest {
            refresh_token: second.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(successor.code(), Code::Unauthenticated);

    // Another login is a new family and unaffected.
    let other = app
        .login("rot", "admin@rot.example", "admin-password-123")
        .await
        .unwrap();
    a.refresh(pb::RefreshRequest {
        refresh_token: other.refresh_token,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_of_one_token_let_exactly_one_win() {
    let app = TestApp::spawn().await;
    app.tenant("race").await;
    for _ in 0..5 {
        let t = app
            .login("race", "admin@race.example", "admin-password-123")
            .await
            .unwrap();
        let calls = (0..4).map(|_| {
            let mut a = app.auth();
            let token = t.refresh_token.clone();
            async move {
                a.refresh(pb::RefreshRequest {
                    refresh_token: token,
                })
                .await
            }
        });
        let results = futures_util::future::join_all(calls).await;
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            wins, 1,
            "{wins} of 4 concurrent refreshes of one token succeeded"
        );
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(r.code(), Code::Unauthenticated);
        }
        // The losers presented a token that had just been used: that is reuse, so the
        // winner's successor is revoked with its family.
        let winner = results
            .into_iter()
            .find_map(Result::ok)
            .and_then(|r| r.into_inner().tokens)
            .expect("the winner's tokens");
        let successor = app
            .auth()
            .refresh(pb::RefreshRequest {
                refresh_token: winner.refresh_token,
            })
            .await
            .unwrap_err();
        assert_eq!(successor.code(), Code::Unauthenticated);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_and_deactivation_end_the_session() {
    let app = TestApp::spawn().await;
    let t = app.tenant("out").await;
    let mut a = app.auth();
    let s = app
        .login("out", "admin@out.example", "admin-password-123")
        .await
        .unwrap();
    a.logout(pb::LogoutRequest {
        refresh_token: s.refresh_token.clone(),
    })
    .await
    .unwrap();
    let after = a
        .refresh(pb::RefreshRequest {
            refresh_token: s.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated);

    let (agent_id, _) = app.agent(&t, "leaver").await;
    let s = app
        .login("out", "leaver@out.example", "agent-password-123")
        .await
        .unwrap();
    app.agents()
        .deactivate_agent(bearer(
            pb::DeactivateAgentRequest { agent_id },
            &t.admin_token,
        ))
        .await
        .unwrap();
    let refresh = a
        .refresh(pb::RefreshRequest {
            refresh_token: s.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(refresh.code(), Code::Unauthenticated);
    let login = app
        .login("out", "leaver@out.example", "agent-password-123")
        .await
        .unwrap_err();
    assert_eq!(login.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_misaddressed_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let t = app.tenant("forge").await;
    let other = app.tenant("victim").await;
    let good = t.admin_token.clone();
    let parts: Vec<&str> = good.split('.').collect();
    let claims: Claims = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();

    // alg: none, no signature.
    let none_header = B64.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    let alg_none = format!("{none_header}.{}.", parts[1]);
    // Claims changed to another tenant, signature kept.
    let mut moved = claims.clone();
    moved.tid = other.tenant_id.clone();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(serde_json::to_vec(&moved).unwrap()),
        parts[2]
    );
    // Properly signed with the server's key, but expired / for visitors / from another issuer.
    let keys = JwtKeys::hmac("k1", app.jwt_secret.as_bytes(), "chat-engine").unwrap();
    let now = chrono::Utc::now().timestamp();
    let expired = keys
        .sign(&Claims {
            iat: now - 7200,
            exp: now - 3600,
            ..claims.clone()
        })
        .unwrap();
    let visitor = keys
        .sign(&Claims {
            aud: VISITOR_AUDIENCE.into(),
            ..claims.clone()
        })
        .unwrap();
    let wrong_iss = keys
        .sign(&Claims {
            iss: "someone-else".into(),
            ..claims.clone()
        })
        .unwrap();
    let unknown_kid = JwtKeys::hmac("k9", app.jwt_secret.as_bytes(), "chat-engine")
        .unwrap()
        .sign(&claims)
        .unwrap();
    let wrong_key = JwtKeys::hmac("k1", b"not the server's secret at all!!", "chat-engine")
        .unwrap()
        .sign(&claims)
        .unwrap();
    assert_eq!(claims.aud, AGENT_AUDIENCE);

    me(&app, &good).await.unwrap();
    for (name, token) in [
        ("alg none", alg_none),
        ("tampered tenant", tampered),
        ("expired", expired),
        ("visitor audience", visitor),
        ("wrong issuer", wrong_iss),
        ("unknown kid", unknown_kid),
        ("wrong key", wrong_key),
        ("garbage", "a.b.c".into()),
    ] {
        match me(&app, &token).await {
            Ok(_) => panic!("{name}: token accepted"),
            Err(err) => assert_eq!(err.code(), Code::Unauthenticated, "{name}: {err:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_rate_limited_with_retry_info_and_other_tenants_log_in() {
    use tonic_types::StatusExt;
    let app = TestApp::spawn().await;
    app.tenant("flood").await;
    app.tenant("calm").await;
    // The default allows 10 logins to one account at once, then one every 6 s.
    let mut limited = None;
    for attempt in 1..=30 {
        match app
            .login("flood", "admin@flood.example", "wrong-password-000")
            .await
        {
            Err(s) if s.code() == Code::ResourceExhausted => {
                limited = Some((attempt, s));
                break;
            }
            Err(s) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
            Ok(_) => panic!("a wrong password logged in"),
        }
    }
    let (attempt, status) = limited.expect("30 logins in a row were never limited");
    // The fixture logged the admin in once already.
    assert!(attempt >= 10, "limited after {attempt} logins");
    let delay = status
        .get_details_retry_info()
        .and_then(|i| i.retry_delay)
        .expect("RetryInfo with a delay");
    assert!(delay > std::time::Duration::ZERO && delay <= std::time::Duration::from_secs(6));
    // The right password does not get past the limit either.
    let right = app
        .login("flood", "admin@flood.example", "admin-password-123")
        .await
        .unwrap_err();
    assert_eq!(right.code(), Code::ResourceExhausted);
    // Another tenant, from the same address, is not affected.
    app.login("calm", "admin@calm.example", "admin-password-123")
        .await
        .unwrap();
}

/// Creates a tenant with an admin without logging anyone in.
async fn bare_tenant(app: &TestApp, slug: &str) {
    app.tenants()
        .create_tenant(bearer(
            pb::admin::CreateTenantRequest {
                time_zone: Default::default(),
                name: format!("Tenant {slug}"),
                slug: slug.to_owned(),
                widget: None,
                initial_admin: Some(pb::admin::InitialAdmin {
                    email: format!("admin@{slug}.example"),
                    display_name: "Admin".into(),
                    password: "admin-password-123".into(),
                }),
            },
            &app.operator_token,
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_login_limit_set_with_the_cli_applies_to_it_alone() {
    let app = TestApp::spawn().await;
    bare_tenant(&app, "capped").await;
    bare_tenant(&app, "usual").await;
    let dir = tempfile::tempdir().unwrap();
    let (app_url, admin_url) = (app.app_url.clone(), app.admin_url.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_chat-engine"))
            .args(["tenant", "limit", "--slug", "capped"])
            .args(["--name", "login_per_account", "--per-minute", "1"])
            .args(["--burst", "2"])
            .env("CHAT_ENGINE_DATABASE_URL", app_url)
            .env("CHAT_ENGINE_MIGRATION_DATABASE_URL", admin_url)
            .env("CHAT_ENGINE_DATA_DIR", dir.path())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    for slug in ["capped", "usual"] {
        let email = format!("admin@{slug}.example");
        for _ in 0..2 {
            app.login(slug, &email, "admin-password-123").await.unwrap();
        }
    }
    let third = app
        .login("capped", "admin@capped.example", "admin-password-123")
        .await
        .unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted);
    app.login("usual", "admin@usual.example", "admin-password-123")
        .await
        .unwrap();
}
