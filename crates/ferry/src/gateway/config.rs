//! The `[gateway]` section of a gateway file, raw → validated.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ferry_core::Error;
use serde::Deserialize;

use crate::config::parse_duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    listen: String,
    min_interval: Option<String>,
    max_lag: Option<String>,
}

/// How a gateway node serves reads.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// At most one position lookup on the source per this interval.
    pub min_interval: Duration,
    /// A strong read waits at most this long for the node to catch up
    /// with the source, then gets 503; a node whose last lookup is not
    /// applied after this long is "behind".
    pub max_lag: Duration,
}

fn gateway_error(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::fatal(format!("{}: [gateway] {msg}", path.display()))
}

fn duration(
    path: &Path,
    key: &str,
    text: Option<String>,
    default: Duration,
) -> Result<Duration, Error> {
    let Some(text) = text else {
        return Ok(default);
    };
    match parse_duration(&text) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(gateway_error(
            path,
            format!("`{key}` = {text:?} is not a duration above 0"),
        )
        .with_fix("write it like \"1ms\", \"250ms\" or \"2s\"")),
    }
}

impl GatewayOptions {
    pub fn from_table(path: &Path, table: toml::Table) -> Result<GatewayOptions, Error> {
        let raw: RawGateway = toml::Value::Table(table).try_into().map_err(|e| {
            gateway_error(path, format!("invalid section: {e}")).with_fix(
                "the [gateway] keys are listen, min_interval and max_lag (README, \"Read gateway\")",
            )
        })?;
        let listen = raw.listen.parse().map_err(|_| {
            gateway_error(
                path,
                format!("`listen` = {:?} is not an address", raw.listen),
            )
            .with_fix("write it as IP:PORT, e.g. \"127.0.0.1:8080\"")
        })?;
        let min_interval = duration(
            path,
            "min_interval",
            raw.min_interval,
            Duration::from_millis(1),
        )?;
        let max_lag = duration(path, "max_lag", raw.max_lag, Duration::from_secs(1))?;
        if max_lag <= min_interval {
            return Err(gateway_error(
                path,
                "`max_lag` must be longer than `min_interval`: a strong read waits for a lookup",
            )
            .with_fix("e.g. min_interval = \"1ms\", max_lag = \"1s\""));
        }
        Ok(GatewayOptions {
            listen,
            min_interval,
            max_lag,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GatewayOptions, Error> {
        GatewayOptions::from_table(Path::new("g.toml"), toml::from_str(text).unwrap())
    }

    #[test]
    fn defaults_and_bad_values() {
        let o = parse("listen = \"127.0.0.1:8080\"").unwrap();
        assert_eq!(o.min_interval, Duration::from_millis(1));
        assert_eq!(o.max_lag, Duration::from_secs(1));
        let e = parse("listen = \"127.0.0.1:8080\"\nmax_lags = \"1s\"").unwrap_err();
        assert!(e.report().contains("max_lags"), "{}", e.report());
        let e = parse("listen = \"localhost\"").unwrap_err();
        assert!(e.report().contains("IP:PORT"), "{}", e.report());
        let e = parse("listen = \"127.0.0.1:1\"\nmin_interval = \"0ms\"").unwrap_err();
        assert!(e.report().contains("min_interval"), "{}", e.report());
    }
}
