//! The Redis the bench runs on: a private `redis-server` on a free port when the binary
//! is installed (nothing else runs on it, and it is stopped at the end), otherwise the
//! shared test Redis under a key prefix of the bench's own.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fred::prelude::*;

/// A Redis to measure on.
pub struct BenchRedis {
    url: String,
    /// The private server, killed on drop; `None` on the shared fallback.
    child: Option<Child>,
}

impl BenchRedis {
    /// Starts a private server, or falls back to `fallback_url` when `redis-server` is
    /// not installed.
    pub async fn start_or_shared(fallback_url: &str) -> anyhow::Result<Self> {
        match Self::start_private().await {
            Ok(redis) => Ok(redis),
            Err(error) => {
                eprintln!(
                    "bench: no private redis-server ({error:#}); using the shared {fallback_url}, \
                     whose other traffic will disturb the figures"
                );
                Ok(Self {
                    url: fallback_url.to_owned(),
                    child: None,
                })
            }
        }
    }

    async fn start_private() -> anyhow::Result<Self> {
        let port = free_port()?;
        // No persistence: snapshots and the AOF would add disk work nobody asked for.
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run redis-server")?;
        let redis = Self {
            url: format!("redis://127.0.0.1:{port}"),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if redis.ping().await.is_ok() {
                return Ok(redis);
            }
            if Instant::now() > deadline {
                bail!("redis-server on port {port} did not answer within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        url::Url::parse(&self.url)
            .ok()
            .and_then(|url| url.port())
            .unwrap_or(6379)
    }

    /// Whether this is the bench's own server (figures undisturbed by others).
    pub fn is_private(&self) -> bool {
        self.child.is_some()
    }

    /// A fresh client connection.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let client = Client::new(Config::from_url(&self.url)?, None, None, None);
        client.init().await?;
        Ok(client)
    }

    async fn ping(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let _: String = client.ping(None).await?;
        client.quit().await?;
        Ok(())
    }

    /// A field of `INFO server`, such as `redis_version` or `process_id`.
    pub async fn server_info(&self, field: &str) -> anyhow::Result<String> {
        let client = self.client().await?;
        let info: String = client.info(Some(fred::types::InfoKind::Server)).await?;
        client.quit().await?;
        info_field(&info, field).with_context(|| format!("INFO server has no {field}"))
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `field:value` from an `INFO` reply.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (name, value) = line.trim().split_once(':')?;
        (name == field).then(|| value.to_owned())
    })
}

/// A port nobody listens on right now (the OS picks it).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_of_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nprocess_id:42\r\n";
        assert_eq!(info_field(info, "redis_version").as_deref(), Some("7.0.15"));
        assert_eq!(info_field(info, "process_id").as_deref(), Some("42"));
        assert_eq!(info_field(info, "missing"), None);
    }
}
