//! The command line: `serve`, `migrate`, `tenant create|list`, `workflow import`, `demo`,
//! `talk`, `loadtest`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::app;
use crate::config::Config;
use crate::domain::limits::Rate;
use crate::domain::validate;
use crate::domain::{tenants, workflows};
use crate::tenancy::{OperatorScope, TenantScope};

/// chat-engine: a multi-tenant chat engine served as a gRPC API.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// TOML configuration file (options are listed in the README).
    #[arg(long, global = true, env = "CHAT_ENGINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Worker threads the command asks for; None for one per CPU.
    pub fn worker_threads(&self) -> Option<usize> {
        match &self.command {
            Command::Loadtest(args) => args.threads,
            _ => None,
        }
    }
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Runs the server (gRPC and gRPC-web on one port).
    Serve {
        /// Address to listen on.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Runs pending database migrations and exits.
    Migrate,
    /// Manages tenants.
    Tenant {
        /// What to do with tenants.
        #[command(subcommand)]
        action: TenantAction,
    },
    /// Manages a tenant's routing workflows.
    Workflow {
        /// What to do with workflows.
        #[command(subcommand)]
        action: WorkflowAction,
    },
    /// Rebuilds or exports a tenant's analytics (docs/analytics.md).
    Analytics {
        /// What to do.
        #[command(subcommand)]
        action: AnalyticsAction,
    },
    /// Seeds a demo tenant, prints how to log in, and runs the server.
    Demo {
        /// Address to listen on.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Chats from the terminal as a website visitor or as an agent (try it after `demo`).
    Talk {
        /// Who to be.
        #[command(subcommand)]
        side: crate::talk::Talk,
    },
    /// Generates load against a server (its own in-process one by default) and reports
    /// throughput, delivery latency and memory.
    Loadtest(crate::loadtest::Args),
}

/// Tenant subcommands.
#[derive(Subcommand, Debug)]
pub enum TenantAction {
    /// Creates a tenant.
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Login handle: 3-63 of a-z, 0-9 and '-'.
        #[arg(long)]
        slug: String,
        /// IANA time zone of the tenant ("today", daily figures).
        #[arg(long, default_value = "UTC")]
        time_zone: String,
    },
    /// Lists tenants.
    List,
    /// Sets one rate limit of a tenant, or with `--default` lets it follow the global one.
    Limit {
        /// The tenant's login handle.
        #[arg(long)]
        slug: String,
        /// The limit: login_per_ip, login_per_account, refresh_per_ip, visitor_per_key,
        /// visitor_per_ip or visitor_per_visitor.
        #[arg(long)]
        name: String,
        /// Sustained calls a minute; 0 turns the limit off.
        #[arg(long, required_unless_present = "default")]
        per_minute: Option<u32>,
        /// Calls allowed at once (defaults to `per_minute`).
        #[arg(long)]
        burst: Option<u32>,
        /// Drop the tenant's setting.
        #[arg(long, conflicts_with_all = ["per_minute", "burst"])]
        default: bool,
    },
}

/// Workflow subcommands.
#[derive(Subcommand, Debug)]
pub enum WorkflowAction {
    /// Imports workflows from a JSON file in the product brief's shape (one object or a
    /// list), appended after the tenant's existing ones, all or none.
    Import {
        /// The JSON file.
        file: PathBuf,
        /// Slug of the tenant.
        #[arg(long)]
        tenant: String,
    },
}

/// Analytics subcommands.
#[derive(Subcommand, Debug)]
pub enum AnalyticsAction {
    /// Recomputes the tenant's aggregates from the raw rows (the chats' events, ratings and
    /// the agents' state history), replacing what the reactor kept.
    Rebuild {
        /// Slug of the tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Prints the tenant's historical figures as CSV (one line per series and bucket).
    Export {
        /// Slug of the tenant.
        #[arg(long)]
        tenant: String,
        /// Range start: a local date (YYYY-MM-DD, midnight in --zone) or an RFC 3339 instant.
        #[arg(long)]
        from: String,
        /// Range end (exclusive), in the same forms.
        #[arg(long)]
        to: String,
        /// hour, day or week.
        #[arg(long, default_value = "day")]
        bucket: String,
        /// IANA time zone of the buckets; the tenant's own when not given.
        #[arg(long, default_value = "")]
        zone: String,
        /// tenant, agent or workflow.
        #[arg(long, default_value = "tenant")]
        by: String,
    },
}

/// An instant from the command line: a local date in `zone` or RFC 3339.
fn instant_arg(
    what: &str,
    raw: &str,
    zone: chrono_tz::Tz,
) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    use chrono::TimeZone;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|_| anyhow::anyhow!("--{what}: a date (YYYY-MM-DD) or an RFC 3339 instant"))?;
    let local = zone
        .from_local_datetime(&d.and_time(chrono::NaiveTime::MIN))
        .earliest()
        .ok_or_else(|| anyhow::anyhow!("--{what}: midnight does not exist in that zone"))?;
    Ok(local.with_timezone(&chrono::Utc))
}

/// Every field error as one line each, for the terminal.
fn field_errors(errs: &[crate::error::FieldViolation]) -> anyhow::Error {
    let lines: Vec<String> = errs
        .iter()
        .map(|v| {
            format!(
                "  {}: {}",
                if v.field.is_empty() {
                    "(file)"
                } else {
                    &v.field
                },
                v.description
            )
        })
        .collect();
    anyhow::anyhow!("invalid workflow file:\n{}", lines.join("\n"))
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log_format == "pretty" {
        builder.init();
    } else {
        builder.json().init();
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    init_logging(&cfg);
    match cli.command {
        Command::Serve { listen } => {
            if let Some(l) = listen {
                cfg.listen = l;
            }
            let db = app::open_database(&cfg).await?;
            let node = app::build(&cfg, &db).await?;
            let listener = TcpListener::bind(cfg.listen).await?;
            tracing::info!(listen = %listener.local_addr()?, "serving gRPC and gRPC-web");
            app::serve(&cfg, node, listener, app::shutdown_signal()).await?;
            drop(db);
        }
        Command::Migrate => {
            let db = app::open_database(&cfg).await?;
            crate::storage::migrate(db.migration_url.expose()).await?;
            println!("migrations applied");
        }
        Command::Tenant { action } => {
            let db = app::open_database(&cfg).await?;
            let node = app::build(&cfg, &db).await?;
            let (engine, op) = (node.engine, OperatorScope::system(&node.system));
            match action {
                TenantAction::Create {
                    name,
                    slug,
                    time_zone,
                } => {
                    let name = validate::text("name", &name, 200)
                        .map_err(|v| anyhow::anyhow!("{}: {}", v.field, v.description))?;
                    let slug = validate::slug("slug", &slug)
                        .map_err(|v| anyhow::anyhow!("{}: {}", v.field, v.description))?;
                    let zone = crate::domain::analytics::buckets::zone("time-zone", &time_zone)
                        .map_err(|v| anyhow::anyhow!("{}: {}", v.field, v.description))?;
                    let t =
                        tenants::create(&engine, &op, name, slug, Default::default(), zone).await?;
                    println!("{}\t{}\t{}", t.id, t.slug, t.name);
                }
                TenantAction::Limit {
                    slug,
                    name,
                    per_minute,
                    burst,
                    default,
                } => {
                    let id = tenants::find_by_slug(&engine, &op, &slug)
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("no tenant with slug {slug:?}"))?;
                    let rate = match (default, per_minute) {
                        (false, Some(per_minute)) => Some(Rate {
                            per_minute,
                            burst: burst.unwrap_or(per_minute),
                        }),
                        _ => None,
                    };
                    tenants::set_rate_limit(&engine, &op, id, &name, rate).await?;
                    println!(
                        "{slug}\t{name}\t{}",
                        match rate {
                            Some(r) => format!("{}/min burst {}", r.per_minute, r.burst),
                            None => "default".into(),
                        }
                    );
                }
                TenantAction::List => {
                    let mut token = String::new();
                    loop {
                        let page = tenants::list(&engine, &op, 200, &token).await?;
                        for t in page.items {
                            println!("{}\t{}\t{}", t.id, t.slug, t.name);
                        }
                        if page.next_page_token.is_empty() {
                            break;
                        }
                        token = page.next_page_token;
                    }
                }
            }
        }
        Command::Workflow {
            action: WorkflowAction::Import { file, tenant },
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            let items = workflows::import::parse(&text).map_err(|e| field_errors(&e))?;
            let db = app::open_database(&cfg).await?;
            let node = app::build(&cfg, &db).await?;
            let (engine, op) = (node.engine, OperatorScope::system(&node.system));
            let tenant_id = tenants::find_by_slug(&engine, &op, &tenant)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no tenant with slug {tenant:?}"))?;
            let scope = TenantScope::system(&node.system, tenant_id);
            let created = match workflows::import(&engine, &scope, items).await {
                Err(crate::error::AppError::InvalidArgument(errs)) => {
                    return Err(field_errors(&errs));
                }
                other => other?,
            };
            for w in created {
                println!("{}\t{}\t{}", w.id, w.position, w.name);
            }
        }
        Command::Analytics { action } => {
            use crate::domain::analytics::{self, GroupBy, Query, buckets};
            let db = app::open_database(&cfg).await?;
            let node = app::build(&cfg, &db).await?;
            let (engine, op) = (node.engine, OperatorScope::system(&node.system));
            let slug = match &action {
                AnalyticsAction::Rebuild { tenant } | AnalyticsAction::Export { tenant, .. } => {
                    tenant.clone()
                }
            };
            let tenant_id = tenants::find_by_slug(&engine, &op, &slug)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no tenant with slug {slug:?}"))?;
            let scope = TenantScope::system(&node.system, tenant_id);
            match action {
                AnalyticsAction::Rebuild { .. } => {
                    let started = std::time::Instant::now();
                    let chats = analytics::rebuild(&engine, &scope).await?;
                    println!(
                        "rebuilt the aggregates of {chats} chats in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                AnalyticsAction::Export {
                    from,
                    to,
                    bucket,
                    zone,
                    by,
                    ..
                } => {
                    let zone = if zone.is_empty() {
                        tenants::get(&engine, &op, tenant_id).await?.time_zone
                    } else {
                        buckets::zone("zone", &zone).map_err(|e| field_errors(&[e]))?
                    };
                    let size = match bucket.as_str() {
                        "hour" => buckets::BucketSize::Hour,
                        "day" => buckets::BucketSize::Day,
                        "week" => buckets::BucketSize::Week,
                        other => anyhow::bail!("--bucket: hour, day or week, not {other:?}"),
                    };
                    let group = match by.as_str() {
                        "tenant" => GroupBy::Tenant,
                        "agent" => GroupBy::Agent(None),
                        "workflow" => GroupBy::Workflow,
                        other => anyhow::bail!("--by: tenant, agent or workflow, not {other:?}"),
                    };
                    let q = Query {
                        start: instant_arg("from", &from, zone)?,
                        end: instant_arg("to", &to, zone)?,
                        size,
                        zone: Some(zone),
                        group,
                    };
                    let csv = match analytics::export_csv(&engine, &scope, &q).await {
                        Err(crate::error::AppError::InvalidArgument(errs)) => {
                            return Err(field_errors(&errs));
                        }
                        other => other?,
                    };
                    print!("{csv}");
                }
            }
        }
        Command::Demo { listen } => {
            if let Some(l) = listen {
                cfg.listen = l;
            }
            let db = app::open_database(&cfg).await?;
            let node = app::build(&cfg, &db).await?;
            // Bound first: the widget key's allowed origins are this address's.
            let listener = TcpListener::bind(cfg.listen).await?;
            let addr = listener.local_addr()?;
            let seed = crate::demo::seed(&node.engine, &node.system, addr).await?;
            println!("chat-engine demo is running on {addr} (gRPC and gRPC-web)");
            println!("tenant slug: {}", seed.slug);
            for (email, pass, role, skills) in &seed.agents {
                println!("  {role:<5} {email:<22} password: {pass}  skills: {skills}");
            }
            println!("widget api key (x-api-key): {}", seed.api_key);
            println!(
                "log in: AuthService/Login {{tenant_slug: \"{}\", email, password}}",
                seed.slug
            );
            println!("discover: grpcurl -plaintext {addr} list");
            let (ana, ana_pass) = seed
                .agents
                .iter()
                .find(|a| a.0.starts_with("ana@"))
                .map(|a| (a.0.as_str(), a.1.as_str()))
                .unwrap_or_default();
            let web = crate::demo::browser_host(addr);
            println!("next, chat with yourself in the browser:");
            println!("  open http://{web}/demo (a website with the widget) and");
            println!("  open http://{web}/console (the agent console: log in as {ana})");
            println!("or in two more terminals:");
            println!(
                "  agent:   chat-engine talk agent --target http://{addr} --email {ana} --password {ana_pass}"
            );
            println!(
                "  visitor: chat-engine talk visitor --target http://{addr} --key {}",
                seed.api_key
            );
            let mut node = node;
            node.web.demo_widget_key = Some(seed.api_key.clone());
            app::serve(&cfg, node, listener, app::shutdown_signal()).await?;
            drop(db);
        }
        Command::Talk { side } => crate::talk::run(side).await?,
        Command::Loadtest(args) => crate::loadtest::run(args, cfg).await?,
    }
    Ok(())
}
