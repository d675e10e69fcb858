//! The daemon's log: tracing to stderr with a filter that a config reload can change. The filter
//! is `RUST_LOG` when set (a debugging session wins over the config, reloads included), else the
//! config's `log.level`, else `info` with the chatty QUIC and TLS crates held at `warn`.
//!
//! The filter is a list of `target=level` directives (`Targets`), not the span-and-field
//! language of `EnvFilter`: that language needs a regular-expression engine, which was 180 KiB
//! of an agent that has to stay small, for filters nobody writes for this daemon.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Registry};

const DEFAULT_FILTER: &str = "info,quinn=warn,rustls=warn";

/// Changes the running log filter.
pub struct LogControl {
    handle: reload::Handle<Targets, Registry>,
    from_env: bool,
    current: String,
}

fn filter_text(configured: Option<&str>) -> (String, bool) {
    match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => (env, true),
        _ => (configured.unwrap_or(DEFAULT_FILTER).to_string(), false),
    }
}

/// Reads a filter: `info`, `debug`, `info,egresswatch_agent=debug`, `quinn=warn`, …
pub fn parse_filter(text: &str) -> Result<Targets, tracing_subscriber::filter::ParseError> {
    text.parse()
}

fn default_filter() -> Targets {
    parse_filter(DEFAULT_FILTER).unwrap_or_default()
}

/// Installs the global subscriber. A filter that does not parse (only `RUST_LOG` can: the config's
/// is checked when it is read) falls back to the default.
pub fn init(configured: Option<&str>) -> LogControl {
    let (text, from_env) = filter_text(configured);
    let filter = parse_filter(&text).unwrap_or_else(|_| default_filter());
    let (filter, handle) = reload::Layer::new(filter);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init();
    LogControl {
        handle,
        from_env,
        current: text,
    }
}

impl LogControl {
    /// Applies a reloaded config's `log.level`; says what it did.
    pub fn apply(&mut self, configured: Option<&str>) {
        if self.from_env {
            if configured.is_some_and(|c| c != self.current) {
                tracing::warn!(
                    "config reload: log.level ignored while RUST_LOG={} is set",
                    self.current
                );
            }
            return;
        }
        let (text, _) = filter_text(configured);
        if text == self.current {
            return;
        }
        match parse_filter(&text) {
            Ok(filter) => match self.handle.reload(filter) {
                Ok(()) => {
                    // Logged at warn so that it shows whatever the new level hides.
                    tracing::warn!(from = %self.current, to = %text, "log level changed");
                    self.current = text;
                }
                Err(e) => tracing::error!("changing the log level: {e}"),
            },
            Err(e) => tracing::error!("log.level {text:?}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_the_docs_show_parse_and_a_made_up_level_does_not() {
        for text in [
            "info",
            "debug",
            "warn",
            "info,egresswatch_agent=debug",
            DEFAULT_FILTER,
        ] {
            assert!(parse_filter(text).is_ok(), "{text}");
        }
        assert!(parse_filter("info,egresswatch=loud").is_err());
    }
}
