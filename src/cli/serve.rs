//! `trellis serve`: the one place that wires the store, channels, scheduler, dispatcher and
//! API together under one cancellation token, cancelled on SIGINT or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::events::EventQueue;
use crate::api::{self, AppState};
use crate::channels::dispatch::{self, DispatchCtx};
use crate::channels::email::SmtpChannel;
use crate::channels::outbox_dir::OutboxDir;
use crate::channels::retry::RetryPolicy;
use crate::channels::sms_kannel::KannelChannel;
use crate::channels::sms_twilio::TwilioChannel;
use crate::channels::webhook::{Allowlist, WebhookChannel};
use crate::channels::{Channels, EmailSink, SmsSink};
use crate::clock::{Clock, SystemClock};
use crate::config::{Secret, ServeConfig};
use crate::journey::{Catalog, Links, Shell};
use crate::scheduler::{self, SchedulerCtx};
use crate::store::{OpenOptions, Store};
use crate::workflow::validate::check_paths;

/// Builds the channels the configuration asks for.
fn channels(config: &ServeConfig, key: &Secret) -> anyhow::Result<Channels> {
    let outbox = || OutboxDir::new(&config.outbox, Some(config.from.clone()));
    let email = match &config.smtp_url {
        Some(url) => EmailSink::Smtp(
            SmtpChannel::new(url.expose(), &config.from, config.smtp_pool)
                .map_err(anyhow::Error::msg)?,
        ),
        None => EmailSink::Dir(outbox()),
    };
    let sms = match (&config.twilio_account_sid, &config.twilio_auth_token) {
        _ if config.kannel_url.is_some() => {
            let url = config.kannel_url.as_deref().unwrap_or_default();
            let password = config
                .kannel_password
                .clone()
                .context("set TRELLIS_KANNEL_PASSWORD with TRELLIS_KANNEL_URL")?;
            Some(SmsSink::Kannel(
                KannelChannel::new(
                    url,
                    &config.kannel_username,
                    password,
                    &config.sms_from,
                    &config.public_url,
                    key.clone(),
                )
                .map_err(anyhow::Error::msg)?,
            ))
        }
        (Some(sid), Some(token)) => Some(SmsSink::Twilio(
            TwilioChannel::new(
                &config.twilio_base_url,
                sid,
                token.clone(),
                &config.sms_from,
            )
            .map_err(anyhow::Error::msg)?,
        )),
        (None, None) => Some(SmsSink::Dir(outbox())),
        _ => bail!("set both TRELLIS_TWILIO_ACCOUNT_SID and TRELLIS_TWILIO_AUTH_TOKEN, or neither"),
    };
    let webhook = WebhookChannel::new(
        Allowlist::new(&config.webhook_allow),
        config.webhook_timeout.as_signed().unsigned_abs(),
    )
    .map_err(anyhow::Error::msg)?;
    let limit = || Arc::new(Semaphore::new(config.channel_concurrency.max(1)));
    Ok(Channels {
        email,
        sms,
        webhook,
        limits: [limit(), limit(), limit()],
    })
}

/// The shortest API token accepted: long enough that it cannot be guessed by trying.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The token the API requires, or `None` when serving without auth was asked for on a
/// loopback address. A blank token is no token: it never turns authentication off by itself.
fn api_token(config: &ServeConfig) -> anyhow::Result<Option<Secret>> {
    let token = config
        .api_token
        .as_ref()
        .filter(|t| !t.expose().trim().is_empty());
    match token {
        Some(token) if token.expose().chars().count() < MIN_TOKEN_CHARS => bail!(
            "the API token is too short: use at least {MIN_TOKEN_CHARS} characters (for example `openssl rand -hex 32`) so that it cannot be guessed"
        ),
        Some(token) => Ok(Some(token.clone())),
        None if !config.insecure_no_auth => {
            let why = if config.api_token.is_some() {
                "the API token is empty"
            } else {
                "no API token is set"
            };
            bail!(
                "{why}: set TRELLIS_API_TOKEN (or --api-token) to at least {MIN_TOKEN_CHARS} characters, or pass --insecure-no-auth to serve without one on a loopback address"
            )
        }
        None if !config.listen.ip().is_loopback() => bail!(
            "--insecure-no-auth is allowed only on a loopback address, not {}",
            config.listen
        ),
        None => {
            warn!(listen = %config.listen, "Serving the API without authentication (--insecure-no-auth).");
            Ok(None)
        }
    }
}

/// Everything `serve` runs, built and ready: exposed so tests can run it in-process.
pub struct Service {
    /// The scheduler's context.
    pub scheduler: SchedulerCtx,
    /// The dispatcher's context.
    pub dispatcher: DispatchCtx,
    /// The API's state.
    pub api: AppState,
    /// Wakes the scheduler.
    pub scheduler_nudge: Arc<Notify>,
    /// Wakes the dispatcher.
    pub outbox_nudge: Arc<Notify>,
}

/// Opens the store, loads and validates workflows and templates, and builds the channels.
///
/// # Errors
/// Broken workflows or templates (with every problem), a database that will not open, or
/// an unusable setting.
pub async fn build(config: &ServeConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Service> {
    let token = api_token(config)?;
    let checked = check_paths(&[config.workflows.as_path()], &config.templates);
    let (workflows, templates, segments) = (checked.workflows, checked.templates, checked.segments);
    if !checked.problems.is_empty() {
        let listed: Vec<String> = checked.problems.iter().map(ToString::to_string).collect();
        bail!(
            "workflows or templates have problems:\n{}",
            listed.join("\n")
        );
    }
    let store = Store::open(
        &config.database_url,
        OpenOptions {
            synchronous_normal: config.synchronous_normal,
            lease_ttl: config.lease_ttl.as_signed().unsigned_abs(),
            ..OpenOptions::default()
        },
    )
    .await
    .with_context(|| {
        format!(
            "opening {}",
            crate::store::redacted_url(&config.database_url)
        )
    })?;
    if store.is_single_runner() && config.role != crate::config::Role::All {
        bail!(
            "--role {:?} is for several runners on PostgreSQL; a SQLite database has one `serve`, which does everything (leave --role out)",
            config.role
        );
    }
    if config.lease_ttl.as_signed() < jiff::SignedDuration::from_secs(1) {
        bail!("--lease-ttl must be at least 1s");
    }
    let catalog = Arc::new(
        Catalog::register(&store, workflows, segments, clock.now())
            .await
            .context("recording workflow versions")?,
    );
    let key = match &config.secret_key {
        Some(key) => key.clone(),
        None => Secret::new(
            store
                .setting_or_insert("unsubscribe_key", || {
                    crate::engine::hash::hex_digest(
                        &[
                            &clock.now().to_string(),
                            &std::process::id().to_string(),
                            &config.database_url,
                        ],
                        64,
                    )
                })
                .await?,
        ),
    };
    let unsubscribe_key: Arc<[u8]> = Arc::from(key.expose().as_bytes());
    let scheduler_nudge = Arc::new(Notify::new());
    let outbox_nudge = Arc::new(Notify::new());
    let channels = Arc::new(channels(config, &key)?);
    if let EmailSink::Smtp(smtp) = &channels.email {
        smtp.check().await.map_err(|reason| {
            anyhow::anyhow!("the SMTP settings (TRELLIS_SMTP_URL) cannot work: {reason}")
        })?;
    }
    Ok(Service {
        scheduler: SchedulerCtx {
            store: store.clone(),
            shell: Shell {
                catalog: catalog.clone(),
                templates: Arc::new(templates),
                links: Links::Signed {
                    public_url: config.public_url.clone(),
                    key: unsubscribe_key.clone(),
                },
                policy: Arc::new(config.policy.to_policy().map_err(anyhow::Error::msg)?),
                attribution_window: config.attribution_window.as_signed().unsigned_abs(),
                journal: false,
                lifecycle: Some(config.lifecycle.to_lifecycle()),
            },
            batch_size: 200,
            outbox_nudge: outbox_nudge.clone(),
            segment_refresh: config.segment_refresh.as_signed().unsigned_abs(),
            last_refresh: Arc::default(),
        },
        dispatcher: DispatchCtx {
            store: store.clone(),
            channels,
            policy: RetryPolicy::default(),
            // A claim is a write transaction behind the scheduler's: the fewer, the better
            // (end to end at N = 100,000: 528 customers/s claiming 200 ahead, 909 with 500,
            // 1,159 with 1,000). Claimed messages wait `sending` for a permit; a crash
            // releases them at the next start unsent, so the duplicate bound is unchanged.
            batch_size: 1000,
            clock: clock.clone(),
        },
        api: AppState {
            events: EventQueue::start(store.clone(), scheduler_nudge.clone()),
            store,
            catalog,
            clock,
            nudge: scheduler_nudge.clone(),
            token,
            max_body_bytes: config.max_body_bytes,
            unsubscribe_key,
        },
        scheduler_nudge,
        outbox_nudge,
    })
}

/// Runs until SIGINT or SIGTERM.
pub fn run(config: &ServeConfig) -> anyhow::Result<ExitCode> {
    crate::telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let service = build(config, clock.clone()).await?;
        let released = service.scheduler.store.release_in_flight().await?;
        if released > 0 {
            warn!(messages = released, "Messages in flight at the last stop will be sent again with the same key.");
        }
        let shutdown = CancellationToken::new();
        let works = config.role != crate::config::Role::Api;
        let serves_api = config.role != crate::config::Role::Worker;
        // A worker listens nowhere, so several can run on one machine.
        let listener = match serves_api {
            true => Some(tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("listening on {}", config.listen))?),
            false => None,
        };
        let store = service.scheduler.store.clone();
        info!(
            listen = %config.listen,
            role = ?config.role,
            runner = store.runner().unwrap_or("sqlite"),
            workflows = service.scheduler.shell.catalog.current().count(),
            "Trellis is serving."
        );
        let listener_task = works.then(|| tokio::spawn({
            let (store, events, outbox, shutdown) = (store.clone(), service.scheduler_nudge.clone(), service.outbox_nudge.clone(), shutdown.clone());
            async move { store.listen_for_work(events, outbox, shutdown).await }
        }));
        let scheduler = works.then(|| tokio::spawn(scheduler::run(service.scheduler, clock.clone(), service.scheduler_nudge, shutdown.clone())));
        let dispatcher = works.then(|| tokio::spawn(dispatch::run(service.dispatcher, clock, service.outbox_nudge, shutdown.clone())));
        let server_shutdown = shutdown.clone();
        let server = listener.map(|listener| tokio::spawn(async move {
            axum::serve(listener, api::router(service.api))
                .with_graceful_shutdown(async move { server_shutdown.cancelled().await })
                .await
        }));
        wait_for_signal().await;
        info!("Shutting down: finishing work in flight.");
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            for task in [scheduler, dispatcher, listener_task].into_iter().flatten() {
                let _ = task.await;
            }
            if let Some(server) = server {
                let _ = server.await;
            }
        })
        .await;
        // Another runner takes this one's customers at once rather than after their leases.
        if let Err(err) = store.release_leases().await {
            warn!(error = %scheduler::error_chain(&err), "Giving back customer leases failed; they expire by themselves.");
        }
        info!("Stopped.");
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler works on Unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
