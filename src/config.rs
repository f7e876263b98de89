//! Settings for `trellis serve`, from flags and `TRELLIS_*` variables. Every setting has a
//! default that runs on a fresh machine. Built once in `cli` and passed down.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A secret: printed as `[redacted]` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// What one `trellis serve` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The API, the scheduler and the dispatcher.
    All,
    /// The HTTP API only: events are stored, and the workers process them.
    Api,
    /// The scheduler and the dispatcher only, without the HTTP API.
    Worker,
}

/// Settings of `trellis serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// The database: `sqlite://PATH` (made if missing), or
    /// `postgres://USER:PASSWORD@HOST/DB` for PostgreSQL 13+ (the database must exist).
    #[arg(
        long,
        env = "TRELLIS_DATABASE_URL",
        default_value = "sqlite://trellis.db"
    )]
    pub database_url: String,
    /// Use `synchronous=NORMAL`: faster, but a power loss (not a crash) can lose the last commits.
    #[arg(long, env = "TRELLIS_SYNCHRONOUS_NORMAL")]
    pub synchronous_normal: bool,
    /// Address for the HTTP API.
    #[arg(long, env = "TRELLIS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer token the API requires.
    #[arg(long, env = "TRELLIS_API_TOKEN")]
    pub api_token: Option<Secret>,
    /// Serve the API without a token; allowed only on a loopback address.
    #[arg(long, env = "TRELLIS_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// The URL customers reach Trellis at, for unsubscribe links.
    #[arg(
        long,
        env = "TRELLIS_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_url: String,
    /// Workflows folder.
    #[arg(long, env = "TRELLIS_WORKFLOWS", default_value = "workflows")]
    pub workflows: PathBuf,
    /// Templates folder.
    #[arg(long, env = "TRELLIS_TEMPLATES", default_value = "templates")]
    pub templates: PathBuf,
    /// SMTP server, e.g. `smtp://user:pass@host:587` (STARTTLS) or `smtps://…` (TLS).
    #[arg(long, env = "TRELLIS_SMTP_URL")]
    pub smtp_url: Option<Secret>,
    /// SMTP connections in the pool: as many as the email channel's concurrency by default,
    /// so no delivery that holds a permit waits for a connection.
    #[arg(long, env = "TRELLIS_SMTP_POOL", default_value_t = 16)]
    pub smtp_pool: u32,
    /// Default sender, e.g. `Acme <news@acme.example>`.
    #[arg(
        long,
        env = "TRELLIS_FROM",
        default_value = "Trellis <trellis@localhost>"
    )]
    pub from: String,
    /// Twilio-compatible API base URL.
    #[arg(
        long,
        env = "TRELLIS_TWILIO_BASE_URL",
        default_value = "https://api.twilio.com"
    )]
    pub twilio_base_url: String,
    /// Twilio account SID; SMS goes through Twilio when this and the token are set.
    #[arg(long, env = "TRELLIS_TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,
    /// Twilio auth token.
    #[arg(long, env = "TRELLIS_TWILIO_AUTH_TOKEN")]
    pub twilio_auth_token: Option<Secret>,
    /// Kannel smsbox base URL (e.g. `http://127.0.0.1:13013`); SMS goes through Kannel when set.
    #[arg(long, env = "TRELLIS_KANNEL_URL")]
    pub kannel_url: Option<String>,
    /// Kannel `sendsms-user` username.
    #[arg(long, env = "TRELLIS_KANNEL_USERNAME", default_value = "trellis")]
    pub kannel_username: String,
    /// Kannel `sendsms-user` password.
    #[arg(long, env = "TRELLIS_KANNEL_PASSWORD")]
    pub kannel_password: Option<Secret>,
    /// The number SMS are sent from, E.164.
    #[arg(long, env = "TRELLIS_SMS_FROM", default_value = "+15005550006")]
    pub sms_from: String,
    /// Write email (without SMTP) and SMS (without a provider) as files here instead.
    #[arg(long, env = "TRELLIS_OUTBOX", default_value = "outbox")]
    pub outbox: PathBuf,
    /// Internal hosts webhooks may call, comma-separated (e.g. `127.0.0.1,crm.internal`).
    #[arg(long, env = "TRELLIS_WEBHOOK_ALLOW", value_delimiter = ',')]
    pub webhook_allow: Vec<String>,
    /// How long one webhook call may take before it counts as a temporary failure.
    #[arg(long, env = "TRELLIS_WEBHOOK_TIMEOUT", default_value = "10s")]
    pub webhook_timeout: crate::workflow::Duration,
    /// Key for signing unsubscribe links; generated and kept in the database when unset.
    #[arg(long, env = "TRELLIS_SECRET_KEY")]
    pub secret_key: Option<Secret>,
    /// Concurrent deliveries per channel.
    #[arg(long, env = "TRELLIS_CHANNEL_CONCURRENCY", default_value_t = 16)]
    pub channel_concurrency: usize,
    /// Largest request body the API takes, in bytes.
    #[arg(long, env = "TRELLIS_MAX_BODY_BYTES", default_value_t = 1_048_576)]
    pub max_body_bytes: usize,
    /// What this runner does: `all` (the API, the scheduler and the dispatcher), `api` (the
    /// API only) or `worker` (the scheduler and the dispatcher only). Roles other than
    /// `all` are for several runners on PostgreSQL.
    #[arg(long, env = "TRELLIS_ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// On PostgreSQL, how long a runner's lease on a customer or a claimed message lasts: a
    /// runner that dies or stalls loses its work to the others this long after.
    #[arg(long, env = "TRELLIS_LEASE_TTL", default_value = "30s")]
    pub lease_ttl: crate::workflow::Duration,
    /// How often every customer's segment membership is recomputed, for conditions that
    /// become true with time alone ("no order in 60 days").
    #[arg(long, env = "TRELLIS_SEGMENT_REFRESH", default_value = "5m")]
    pub segment_refresh: crate::workflow::Duration,
    /// Lifecycle thresholds, in days.
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
    /// A goal is credited to the last message of the workflow received within this window.
    #[arg(long, env = "TRELLIS_ATTRIBUTION_WINDOW", default_value = "5d")]
    pub attribution_window: crate::workflow::Duration,
    /// Quiet hours, caps, default time zone.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Send-time controls, shared by `serve` and `simulate` so a simulation shows live timing.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Quiet hours for SMS in the customer's local time: START-END, or `none`.
    #[arg(long, env = "TRELLIS_QUIET_HOURS_SMS", default_value = "21:00-08:00")]
    pub quiet_hours_sms: String,
    /// Quiet hours for email: START-END, or `none`.
    #[arg(long, env = "TRELLIS_QUIET_HOURS_EMAIL", default_value = "none")]
    pub quiet_hours_email: String,
    /// A message due in quiet hours: `delay` it until they end, or `drop` it.
    #[arg(long, env = "TRELLIS_QUIET_HOURS_MODE", default_value = "delay")]
    pub quiet_hours_mode: crate::engine::policy::Overflow,
    /// Frequency caps across workflows, CHANNEL=MAX/WINDOW, comma-separated (e.g. `sms=1/1d,email=3/7d`).
    #[arg(long, env = "TRELLIS_CAPS", value_delimiter = ',')]
    pub caps: Vec<String>,
    /// A message over a cap: `delay` it until the cap allows, or `drop` it.
    #[arg(long, env = "TRELLIS_CAP_MODE", default_value = "delay")]
    pub cap_mode: crate::engine::policy::Overflow,
    /// The time zone of customers who have none (IANA name).
    #[arg(long, env = "TRELLIS_DEFAULT_TIMEZONE", default_value = "UTC")]
    pub default_timezone: String,
}

impl PolicyArgs {
    /// The policy these settings describe.
    ///
    /// # Errors
    /// A sentence naming the setting that does not parse.
    pub fn to_policy(&self) -> Result<crate::engine::policy::SendPolicy, String> {
        let quiet =
            |name: &str, text: &str| -> Result<Option<crate::workflow::QuietHours>, String> {
                if text.trim() == "none" {
                    Ok(None)
                } else {
                    text.parse().map(Some).map_err(|e| format!("{name}: {e}"))
                }
            };
        Ok(crate::engine::policy::SendPolicy {
            quiet_email: quiet("--quiet-hours-email", &self.quiet_hours_email)?,
            quiet_sms: quiet("--quiet-hours-sms", &self.quiet_hours_sms)?,
            quiet_mode: self.quiet_hours_mode,
            caps: self
                .caps
                .iter()
                .filter(|c| !c.trim().is_empty())
                .map(|c| c.parse())
                .collect::<Result<_, String>>()
                .map_err(|e| format!("--caps: {e}"))?,
            cap_mode: self.cap_mode,
            default_timezone: Some(
                crate::model::check_zone(&self.default_timezone)
                    .map_err(|e| format!("--default-timezone: {e}"))?,
            ),
        })
    }
}

/// Lifecycle thresholds for computed traits, in days.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LifecycleArgs {
    /// A first order this recent makes a customer `new`.
    #[arg(long, env = "TRELLIS_LIFECYCLE_NEW_DAYS", default_value_t = 30)]
    pub lifecycle_new_days: i64,
    /// An order this recent makes a customer `active`.
    #[arg(long, env = "TRELLIS_LIFECYCLE_ACTIVE_DAYS", default_value_t = 90)]
    pub lifecycle_active_days: i64,
    /// An order this recent (but not active) makes a customer `at_risk`; older is `lapsed`.
    #[arg(long, env = "TRELLIS_LIFECYCLE_LAPSED_DAYS", default_value_t = 180)]
    pub lifecycle_lapsed_days: i64,
}

impl LifecycleArgs {
    /// The thresholds.
    pub fn to_lifecycle(self) -> crate::traits::Lifecycle {
        crate::traits::Lifecycle {
            new_days: self.lifecycle_new_days,
            active_days: self.lifecycle_active_days,
            lapsed_days: self.lifecycle_lapsed_days,
        }
    }
}
