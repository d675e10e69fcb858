//! How the PostgreSQL store reaches its database: the `[store]` settings turned into a client
//! configuration (the password read from `password_file`, TLS through rustls with ring when the
//! URL's `sslmode` asks for it, the connect timeout), the bounded pool every ordinary query
//! borrows from, and the dedicated sessions the leader's lock and the listener keep.

use super::super::StoreConfig;
use crate::error::CollectorError;
use postgres::config::SslMode;
use r2d2_postgres::PostgresConnectionManager;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::warn;

pub(super) type Manager = PostgresConnectionManager<MakeRustlsConnect>;
pub(super) type Pool = r2d2::Pool<Manager>;
pub(super) type PooledClient = r2d2::PooledConnection<Manager>;

/// Sessions unacknowledged this long are given up: a write on a connection whose peer vanished
/// fails instead of hanging until the kernel's default (many minutes).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Keepalives on idle sessions (the listener's, the leader's) notice a peer that is gone.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Server settings of every session: a collector that vanished in the middle of a transaction
/// (its host lost) does not keep the agents' rows it locked for longer than a minute, and a
/// write waiting behind such locks fails after half a minute instead of hanging (its agent
/// resends).
const SESSION_OPTIONS: &str = "-c idle_in_transaction_session_timeout=60s -c lock_timeout=30s";

fn config_err(reason: impl Into<String>) -> CollectorError {
    CollectorError::Config {
        path: "[store]".into(),
        reason: reason.into(),
    }
}

/// What TLS the URL asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    Off,
    /// `sslmode=prefer`: TLS when the server offers it (and then verified).
    Prefer,
    /// `require`, `verify-ca`, `verify-full`: TLS or no session. rustls always verifies the chain
    /// and the host name, so all three mean what libpq calls `verify-full`.
    Require,
}

/// Reads `sslmode` out of a URL or key=value string and rewrites the modes the client library
/// does not parse (`verify-ca`, `verify-full`, `allow`) into ones it does. No `sslmode` means
/// no TLS (a database on the same host or a private network); say `verify-full` to have it.
fn tls_mode(url: &str) -> Result<(String, Tls), CollectorError> {
    let Some(at) = url.find("sslmode=") else {
        return Ok((url.to_string(), Tls::Off));
    };
    let value_start = at + "sslmode=".len();
    let value_end = url[value_start..]
        .find(|c: char| c == '&' || c.is_whitespace())
        .map(|n| value_start + n)
        .unwrap_or(url.len());
    let (mode, written) = match &url[value_start..value_end] {
        "disable" | "allow" => (Tls::Off, "disable"),
        "prefer" => (Tls::Prefer, "prefer"),
        "require" | "verify-ca" | "verify-full" => (Tls::Require, "require"),
        other => {
            return Err(config_err(format!(
            "url: sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
        )))
        }
    };
    let rewritten = format!("{}{written}{}", &url[..value_start], &url[value_end..]);
    Ok((rewritten, mode))
}

/// The roots a server certificate must chain to: `ca_file`, else the system's.
fn roots(store: &StoreConfig) -> Result<rustls::RootCertStore, CollectorError> {
    let mut roots = rustls::RootCertStore::empty();
    match &store.ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| config_err(format!("ca_file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(config_err(format!(
                    "ca_file {}: no PEM certificate in it",
                    path.display()
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| config_err(format!("ca_file {}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                warn!("store: reading the system's CA certificates: {e}");
            }
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(config_err(
                    "TLS is on (sslmode) but the system has no CA certificates: set ca_file",
                ));
            }
        }
    }
    Ok(roots)
}

fn tls_connector(store: &StoreConfig, tls: Tls) -> Result<MakeRustlsConnect, CollectorError> {
    let roots = match tls {
        // Never used: the client does not start TLS with sslmode=disable.
        Tls::Off => rustls::RootCertStore::empty(),
        Tls::Prefer | Tls::Require => roots(store)?,
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CollectorError::Tls(format!("the database's TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The password: the first line of `password_file`.
fn read_password(store: &StoreConfig) -> Result<Option<String>, CollectorError> {
    let Some(path) = &store.password_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| CollectorError::io(format!("reading password_file {}", path.display()), e))?;
    let first = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if first.is_empty() {
        return Err(config_err(format!(
            "password_file {}: its first line is empty",
            path.display()
        )));
    }
    Ok(Some(first.to_string()))
}

/// Everything needed to open a session to the store's database.
#[derive(Clone)]
pub(super) struct Connector {
    config: postgres::Config,
    tls: MakeRustlsConnect,
    /// `connect_timeout_secs`: connecting, and waiting for a free pooled connection.
    pub(super) timeout: Duration,
    pub(super) pool_size: u32,
}

impl Connector {
    pub(super) fn of(store: &StoreConfig) -> Result<Connector, CollectorError> {
        let url = store.url.as_deref().ok_or_else(|| {
            config_err("kind = \"postgres\" needs url = \"postgres://USER@HOST/DB\"")
        })?;
        let (url, tls) = tls_mode(url)?;
        let mut config: postgres::Config =
            url.parse().map_err(|e| config_err(format!("url: {e}")))?;
        if config.get_password().is_some() {
            return Err(config_err(
                "url holds a password: put it in password_file (its first line) instead",
            ));
        }
        if let Some(password) = read_password(store)? {
            config.password(password);
        }
        config.ssl_mode(match tls {
            Tls::Off => SslMode::Disable,
            Tls::Prefer => SslMode::Prefer,
            Tls::Require => SslMode::Require,
        });
        let timeout = Duration::from_secs(store.connect_timeout_secs.max(1));
        config
            .connect_timeout(timeout)
            .tcp_user_timeout(TCP_USER_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE);
        let options = match config.get_options() {
            Some(own) => format!("{own} {SESSION_OPTIONS}"),
            None => SESSION_OPTIONS.to_string(),
        };
        config.options(&options);
        if config.get_application_name().is_none() {
            config.application_name("egresswatch-collector");
        }
        Ok(Connector {
            config,
            tls: tls_connector(store, tls)?,
            timeout,
            pool_size: store.pool_size.max(1),
        })
    }

    /// A session of its own (not from the pool), named `application` in `pg_stat_activity`.
    pub(super) fn connect(&self, application: &str) -> Result<postgres::Client, CollectorError> {
        let mut config = self.config.clone();
        config.application_name(application);
        config
            .connect(self.tls.clone())
            .map_err(|e| CollectorError::store("connecting to PostgreSQL", e))
    }

    /// The bounded pool: at most `pool_size` sessions, opened as needed; a checkout waits at most
    /// `connect_timeout_secs`, and a session found broken (the database restarted) is replaced.
    pub(super) fn pool(&self) -> Result<Pool, CollectorError> {
        let manager = PostgresConnectionManager::new(self.config.clone(), self.tls.clone());
        r2d2::Pool::builder()
            .max_size(self.pool_size)
            .min_idle(Some(0))
            .connection_timeout(self.timeout)
            .test_on_check_out(true)
            .error_handler(Box::new(LogErrors))
            .build(manager)
            .map_err(|e| CollectorError::store("opening the connection pool", e))
    }
}

/// The pool's background connection failures, in the collector's log.
#[derive(Debug)]
struct LogErrors;

impl r2d2::HandleError<postgres::Error> for LogErrors {
    fn handle_error(&self, error: postgres::Error) {
        warn!("store: connecting to PostgreSQL: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_turns_tls_on_and_is_rewritten_for_the_client() {
        let (url, tls) =
            tls_mode("postgres://u@db/x?sslmode=verify-full&connect_timeout=3").unwrap();
        assert_eq!(tls, Tls::Require);
        assert_eq!(url, "postgres://u@db/x?sslmode=require&connect_timeout=3");
        assert_eq!(
            tls_mode("host=db sslmode=verify-ca user=u").unwrap().0,
            "host=db sslmode=require user=u"
        );
        assert_eq!(tls_mode("postgres://u@db/x").unwrap().1, Tls::Off);
        assert_eq!(
            tls_mode("postgres://u@db/x?sslmode=prefer").unwrap().1,
            Tls::Prefer
        );
        assert!(tls_mode("postgres://u@db/x?sslmode=sometimes").is_err());
    }

    #[test]
    fn the_password_comes_from_its_file_never_from_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let store = StoreConfig {
            url: Some("postgres://u@127.0.0.1/x".into()),
            password_file: Some(file),
            ..Default::default()
        };
        let connector = Connector::of(&store).unwrap();
        assert_eq!(connector.config.get_password(), Some(&b"s3cret"[..]));
        let inline = StoreConfig {
            url: Some("postgres://u:pw@127.0.0.1/x".into()),
            ..Default::default()
        };
        let e = Connector::of(&inline).err().unwrap().to_string();
        assert!(e.contains("password_file"), "{e}");
        let missing = StoreConfig::default();
        assert!(Connector::of(&missing).is_err());
    }
}
