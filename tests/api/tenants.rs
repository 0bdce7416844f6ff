//! TenantService: operator-only tenant and API key administration.

use chat_engine_client::pb;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use tonic::Code;

use crate::harness::{TestApp, bearer, violated_fields, with_key};

fn create_req(slug: &str) -> pb::admin::CreateTenantRequest {
    pb::admin::CreateTenantRequest {
        time_zone: Default::default(),
        name: format!("Company {slug}"),
        slug: slug.into(),
        widget: None,
        initial_admin: Some(pb::admin::InitialAdmin {
            email: format!("boss@{slug}.example"),
            display_name: "Boss".into(),
            password: "long-enough-password".into(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_creates_pages_and_updates_tenants() {
    let app = TestApp::spawn().await;
    let op = app.operator_token.clone();
    let mut c = app.tenants();
    for slug in ["alpha", "bravo", "charlie"] {
        c.create_tenant(bearer(create_req(slug), &op))
            .await
            .unwrap();
    }
    let dup = c
        .create_tenant(bearer(create_req("alpha"), &op))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);

    let first = c
        .list_tenants(bearer(
            pb::admin::ListTenantsRequest {
                page_size: 2,
                page_token: String::new(),
            },
            &op,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.tenants.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = c
        .list_tenants(bearer(
            pb::admin::ListTenantsRequest {
                page_size: 2,
                page_token: first.next_page_token,
            },
            &op,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.tenants.len(), 1);
    assert!(second.next_page_token.is_empty());
    let slugs: Vec<_> = first
        .tenants
        .iter()
        .chain(&second.tenants)
        .map(|t| t.slug.clone())
        .collect();
    assert_eq!(slugs, ["alpha", "bravo", "charlie"]);

    let id = second.tenants[0].id.clone();
    let updated = c
        .update_tenant(bearer(
            pb::admin::UpdateTenantRequest {
                time_zone: Default::default(),
                tenant_id: id.clone(),
                name: Some("Charlie Ltd".into()),
                widget: Some(pb::WidgetSettings {
                    primary_color: "#AABBCC".into(),
                    theme: pb::WidgetTheme::Dark as i32,
                    position: pb::WidgetPosition::BottomLeft as i32,
                    languages: vec!["en".into(), "fr".into()],
                    logo_url: "https://cdn.example/logo.png".into(),
                    file_upload_enabled: true,
                    ..Default::default()
                }),
            },
            &op,
        ))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    let got = c
        .get_tenant(bearer(pb::admin::GetTenantRequest { tenant_id: id }, &op))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(got, updated);
    assert_eq!(got.name, "Charlie Ltd");
    let w = got.widget.unwrap();
    assert_eq!(w.primary_color, "#aabbcc");
    assert_eq!(w.theme, pb::WidgetTheme::Dark as i32);
    assert_eq!(w.position, pb::WidgetPosition::BottomLeft as i32);
    assert_eq!(w.languages, ["en", "fr"]);
    assert!(w.file_upload_enabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operator_may_administer_tenants() {
    let app = TestApp::spawn().await;
    let t = app.tenant("acme").await;
    let mut c = app.tenants();
    let no_creds = c
        .list_tenants(pb::admin::ListTenantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(no_creds.code(), Code::Unauthenticated);
    let agent = c
        .list_tenants(bearer(
            pb::admin::ListTenantsRequest::default(),
            &t.admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(agent.code(), Code::PermissionDenied);
    let wrong = c
        .list_tenants(bearer(pb::admin::ListTenantsRequest::default(), "op-wrong"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_tenant_reports_every_bad_field() {
    let app = TestApp::spawn().await;
    let err = app
        .tenants()
        .create_tenant(bearer(
            pb::admin::CreateTenantRequest {
                time_zone: "Mars/Olympus_Mons".into(),
                name: " ".into(),
                slug: "No Spaces".into(),
                widget: Some(pb::WidgetSettings {
                    primary_color: "red".into(),
                    logo_url: "http://insecure.example/logo.png".into(),
                    theme: 42,
                    ..Default::default()
                }),
                initial_admin: Some(pb::admin::InitialAdmin {
                    email: "not-an-email".into(),
                    display_name: "x".repeat(201),
                    password: "short".into(),
                }),
            },
            &app.operator_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(
        fields,
        [
            "initial_admin.display_name",
            "initial_admin.email",
            "initial_admin.password",
            "name",
            "slug",
            "time_zone",
            "widget.logo_url",
            "widget.primary_color",
            "widget.theme",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_shown_once_stored_hashed_and_revocable() {
    let app = TestApp::spawn().await;
    let t = app.tenant("keys").await;
    let op = app.operator_token.clone();
    let mut c = app.tenants();
    let created = c
        .create_api_key(bearer(
            pb::admin::CreateApiKeyRequest {
                tenant_id: t.tenant_id.clone(),
                name: "website".into(),
                allowed_domains: vec![
                    "https://www.keys.example".into(),
                    "https://*.shop.keys.example".into(),
                ],
            },
            &op,
        ))
        .await
        .unwrap()
        .into_inner();
    let secret = created.secret.clone();
    let key = created.api_key.unwrap();
    assert!(secret.starts_with("cek_"));
    assert!(secret.starts_with(&key.prefix));

    let listed = c
        .list_api_keys(bearer(
            pb::admin::ListApiKeysRequest {
                tenant_id: t.tenant_id.clone(),
                ..Default::default()
            },
            &op,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.api_keys, vec![key.clone()]);

    // Nothing in the database can be used as the key.
    let mut db = AsyncPgConnection::establish(&app.admin_url).await.unwrap();
    let dump: Vec<Row> = diesel_async::RunQueryDsl::load(
        diesel::sql_query("SELECT row_to_json(k)::text AS t FROM api_keys k"),
        &mut db,
    )
    .await
    .unwrap();
    assert_eq!(dump.len(), 1);
    let body = secret.strip_prefix("cek_").unwrap();
    assert!(!dump[0].t.contains(body), "secret stored in clear");

    // The key works from an allowed origin and from servers (no Origin) ...
    let mut v = app.visitors();
    let cfg = v
        .get_widget_config(with_key(
            pb::GetWidgetConfigRequest {},
            &secret,
            Some("https://www.keys.example"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cfg.tenant_name, "Tenant keys");
    v.get_widget_config(with_key(
        pb::GetWidgetConfigRequest {},
        &secret,
        Some("https://eu.shop.keys.example"),
    ))
    .await
    .unwrap();
    v.get_widget_config(with_key(pb::GetWidgetConfigRequest {}, &secret, None))
        .await
        .unwrap();
    // ... not from other origins ...
    let denied = v
        .get_widget_config(with_key(
            pb::GetWidgetConfigRequest {},
            &secret,
            Some("https://evil.example"),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // ... until the domains change ...
    c.set_allowed_domains(bearer(
        pb::admin::SetAllowedDomainsRequest {
            tenant_id: t.tenant_id.clone(),
            api_key_id: key.id.clone(),
            allowed_domains: vec!["https://evil.example".into()],
        },
        &op,
    ))
    .await
    .unwrap();
    v.get_widget_config(with_key(
        pb::GetWidgetConfigRequest {},
        &secret,
        Some("https://evil.example"),
    ))
    .await
    .unwrap();
    // ... and not at all once revoked.
    let revoked = c
        .revoke_api_key(bearer(
            pb::admin::RevokeApiKeyRequest {
                tenant_id: t.tenant_id.clone(),
                api_key_id: key.id.clone(),
            },
            &op,
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert!(revoked.revoke_time.is_some());
    let after = v
        .get_widget_config(with_key(pb::GetWidgetConfigRequest {}, &secret, None))
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated);
}

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Text)]
    t: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_checksum_is_rejected_without_touching_the_database() {
    let app = TestApp::spawn().await;
    let t = app.tenant("chk").await;
    let secret = app
        .tenants()
        .create_api_key(bearer(
            pb::admin::CreateApiKeyRequest {
                tenant_id: t.tenant_id.clone(),
                name: "w".into(),
                allowed_domains: vec![],
            },
            &app.operator_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    // Change one character of the secret part: the checksum no longer matches.
    let mut chars: Vec<char> = secret.chars().collect();
    chars[50] = if chars[50] == 'A' { 'B' } else { 'A' };
    let typo: String = chars.into_iter().collect();

    // Take the database away: anything that reads it now fails as UNAVAILABLE.
    let db_name = app.app_url.rsplit('/').next().unwrap().to_owned();
    let admin = app.admin_url.replace(&db_name, "postgres");
    let mut conn = AsyncPgConnection::establish(&admin).await.unwrap();
    conn.batch_execute(&format!("DROP DATABASE {db_name} WITH (FORCE)"))
        .await
        .unwrap();

    let mut v = app.visitors();
    let valid = v
        .get_widget_config(with_key(pb::GetWidgetConfigRequest {}, &secret, None))
        .await
        .unwrap_err();
    assert_eq!(
        valid.code(),
        Code::Unavailable,
        "a well-formed key is looked up: {valid:?}"
    );
    let bad = v
        .get_widget_config(with_key(pb::GetWidgetConfigRequest {}, &typo, None))
        .await
        .unwrap_err();
    assert_eq!(
        bad.code(),
        Code::Unauthenticated,
        "checksum must be checked first: {bad:?}"
    );
    let junk = v
        .get_widget_config(with_key(pb::GetWidgetConfigRequest {}, "cek_junk", None))
        .await
        .unwrap_err();
    assert_eq!(junk.code(), Code::Unauthenticated);
}

/// UpdateTenant follows the partial update convention: a field the request does not name is
/// left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_tenant_changes_only_the_fields_it_names() {
    let app = TestApp::spawn().await;
    let op = app.operator_token.clone();
    let mut c = app.tenants();
    let mut req = create_req("partial");
    req.widget = Some(pb::WidgetSettings {
        primary_color: "#112233".into(),
        theme: pb::WidgetTheme::Dark as i32,
        greeting: "Hello there".into(),
        ..Default::default()
    });
    let created = c
        .create_tenant(bearer(req, &op))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    let update = |req: pb::admin::UpdateTenantRequest| {
        let mut c = c.clone();
        let op = op.clone();
        async move {
            c.update_tenant(bearer(req, &op))
                .await
                .unwrap()
                .into_inner()
                .tenant
                .unwrap()
        }
    };

    let renamed = update(pb::admin::UpdateTenantRequest {
        time_zone: Default::default(),
        tenant_id: created.id.clone(),
        name: Some("Partial GmbH".into()),
        widget: None,
    })
    .await;
    assert_eq!(renamed.name, "Partial GmbH");
    assert_eq!(renamed.slug, created.slug);
    assert_eq!(renamed.widget, created.widget);
    assert_eq!(renamed.time_zone, "UTC");

    let moved = update(pb::admin::UpdateTenantRequest {
        tenant_id: created.id.clone(),
        time_zone: Some("Asia/Kathmandu".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        (moved.name.as_str(), moved.time_zone.as_str()),
        ("Partial GmbH", "Asia/Kathmandu")
    );
    assert_eq!(moved.widget, created.widget);

    let restyled = update(pb::admin::UpdateTenantRequest {
        time_zone: Default::default(),
        tenant_id: created.id.clone(),
        name: None,
        widget: Some(pb::WidgetSettings {
            primary_color: "#445566".into(),
            ..Default::default()
        }),
    })
    .await;
    assert_eq!(restyled.name, "Partial GmbH");
    assert_eq!(restyled.time_zone, "Asia/Kathmandu");
    let w = restyled.widget.unwrap();
    assert_eq!(w.primary_color, "#445566");
    // A present widget replaces the old one whole.
    assert_eq!(w.greeting, "");
    assert_eq!(w.theme, pb::WidgetTheme::Light as i32);
}
