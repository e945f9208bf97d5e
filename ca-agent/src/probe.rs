//! Proof that a reload worked: connect to the service's TLS listener and read the serial of the
//! certificate it presents.

use crate::config::ProbeConfig;
use crate::error::{Error, Result};
use crate::tls::danger::RecordServedCert;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Split `host:port` (`[v6]:port` too).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host.to_string(), port))
}

/// One handshake: the serial of the certificate the service presents now.
pub async fn served_serial(probe: &ProbeConfig) -> Result<String> {
    let fail = |reason: String| Error::Transport {
        url: probe.address.clone(),
        reason,
    };
    let (host, port) =
        split_host_port(&probe.address).ok_or_else(|| fail("not host:port".into()))?;
    let recorder = RecordServedCert::new();
    let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    cfg.enable_sni = probe.server_name.is_some() || host.parse::<std::net::IpAddr>().is_err();
    let name = probe.server_name.clone().unwrap_or_else(|| host.clone());
    let name = ServerName::try_from(name).map_err(|e| fail(format!("server name: {e}")))?;
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        // The leaf is recorded when it arrives; a later handshake failure (e.g. the service wants
        // a client certificate) does not hide which certificate it serves.
        let res = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await;
        match recorder.take() {
            Some(der) => Ok(crate::certs::CertInfo::parse(&der, "served certificate")?.serial),
            None => Err(fail(format!(
                "handshake gave no certificate: {}",
                res.err().map(|e| e.to_string()).unwrap_or_default()
            ))),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| fail("no TLS handshake within 5s".into()))?
}

/// Poll until the service serves `want`, up to the probe's timeout. On failure returns the last
/// serial (or error) seen.
pub async fn wait_for_serial(
    probe: &ProbeConfig,
    want: &str,
) -> std::result::Result<Duration, String> {
    let start = Instant::now();
    let timeout = crate::config::std_duration(probe.timeout);
    let mut in_a_row = 0;
    loop {
        let last = match served_serial(probe).await {
            Ok(s) if s == want => {
                in_a_row += 1;
                if in_a_row >= CONFIRMATIONS {
                    return Ok(start.elapsed());
                }
                format!("serial {s}, {in_a_row} of {CONFIRMATIONS} handshakes")
            }
            Ok(s) => {
                in_a_row = 0;
                format!("serial {s}")
            }
            Err(e) => {
                in_a_row = 0;
                e.to_string()
            }
        };
        if start.elapsed() >= timeout {
            return Err(last);
        }
        let pause = if in_a_row > 0 { 50 } else { 100 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Handshakes in a row, 50 ms apart, that must present the new certificate. One is not proof:
/// right after a graceful reload (nginx SIGHUP) the old worker can still accept a connection
/// with the old certificate while the new worker already serves the new one.
const CONFIRMATIONS: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("127.0.0.1:443"),
            Some(("127.0.0.1".into(), 443))
        );
        assert_eq!(split_host_port("[::1]:8443"), Some(("::1".into(), 8443)));
        assert_eq!(
            split_host_port("svc.local:1"),
            Some(("svc.local".into(), 1))
        );
        assert_eq!(split_host_port("nohost"), None);
        assert_eq!(split_host_port(":443"), None);
        assert_eq!(split_host_port("h:0"), None);
    }
}
