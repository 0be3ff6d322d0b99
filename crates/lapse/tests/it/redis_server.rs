//! A real `redis-server` on a private loopback port (installed by `scripts/test`), with an
//! append-only file synced on every write, so that a `kill -9` and restart lose nothing it
//! acknowledged.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl RedisServer {
    pub async fn start(dir: &Path) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer { child: None, port, dir: dir.to_owned() };
        server.spawn().await;
        server
    }

    /// `host:port`, the seed's form of `REDIS_CONNECTION_STRING`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port and files.
    pub async fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if let Ok(mut c) = self.conn().await
                && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    pub async fn conn(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        // The client's default 500 ms response timeout is too short for a 10 MiB push on a busy
        // machine; tests wait for answers as long as they need to.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(std::time::Duration::from_secs(60)));
        redis::Client::open(format!("redis://{}", self.address()))?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    pub async fn lpush(&self, key: &str, messages: &[String]) {
        let mut c = self.conn().await.unwrap();
        for chunk in messages.chunks(1000) {
            let _: i64 = redis::cmd("LPUSH").arg(key).arg(chunk).query_async(&mut c).await.unwrap();
        }
    }

    /// Pushes raw bytes (they need not be UTF-8).
    pub async fn lpush_bytes(&self, key: &str, messages: &[Vec<u8>]) {
        let mut c = self.conn().await.unwrap();
        let _: i64 = redis::cmd("LPUSH").arg(key).arg(messages).query_async(&mut c).await.unwrap();
    }

    pub async fn set(&self, key: &str, value: &str) {
        let mut c = self.conn().await.unwrap();
        let () = redis::cmd("SET").arg(key).arg(value).query_async(&mut c).await.unwrap();
    }

    pub async fn del(&self, key: &str) {
        let mut c = self.conn().await.unwrap();
        let _: i64 = redis::cmd("DEL").arg(key).query_async(&mut c).await.unwrap();
    }

    pub async fn lrange(&self, key: &str) -> Vec<String> {
        let mut c = self.conn().await.unwrap();
        redis::cmd("LRANGE").arg(key).arg(0).arg(-1).query_async(&mut c).await.unwrap()
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        let mut c = self.conn().await.unwrap();
        redis::cmd("GET").arg(key).query_async(&mut c).await.unwrap()
    }

    pub async fn ttl(&self, key: &str) -> i64 {
        let mut c = self.conn().await.unwrap();
        redis::cmd("TTL").arg(key).query_async(&mut c).await.unwrap()
    }

    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut c = self.conn().await.unwrap();
        redis::cmd("KEYS").arg(pattern).query_async(&mut c).await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
