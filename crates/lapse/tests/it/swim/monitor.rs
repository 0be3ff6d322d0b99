//! Every write to the `swim:server:<id>` keys as Redis saw it: the real `redis-cli MONITOR`,
//! so a test reads the whole sequence of values a key held (polling could miss one).

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::eventually;
use crate::harness::secs;

/// One write to a key: its new value, or its removal.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Set(Value),
    Del,
}

pub struct Monitor {
    _child: Child,
    lines: Arc<Mutex<Vec<Vec<String>>>>,
}

impl Monitor {
    /// `redis-cli MONITOR` on the Redis at `port`, once it is monitoring.
    pub async fn start(port: u16, password: Option<&str>) -> Monitor {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &port.to_string()]);
        if let Some(password) = password {
            cmd.args(["-a", password, "--no-auth-warning"]);
        }
        let mut child = cmd
            .arg("monitor")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-cli (scripts/test installs redis-server, which ships it)");
        let stdout = child.stdout.take().expect("a piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(arguments(&line));
            }
        });
        let monitor = Monitor { _child: child, lines };
        // MONITOR answers OK first; a PING from another client shows it is recording.
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{port}"),
            None => format!("redis://127.0.0.1:{port}"),
        };
        let redis = redis::Client::open(url).unwrap();
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(std::time::Duration::from_secs(60)));
        let mut conn = redis.get_multiplexed_async_connection_with_config(&config).await.unwrap();
        eventually(secs(10), "redis-cli MONITOR to record", async || {
            let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
            monitor.lines.lock().unwrap().iter().any(|l| l.first().is_some_and(|c| c == "PING")).then_some(())
        })
        .await;
        monitor
    }

    /// The writes to `key`, in order, with consecutive repeats of a value folded.
    pub fn writes(&self, key: &str) -> Vec<Write> {
        let mut out: Vec<Write> = Vec::new();
        for args in self.lines.lock().unwrap().iter() {
            let write = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                [cmd, k, _ttl, value] if cmd.eq_ignore_ascii_case("SETEX") && *k == key => {
                    Write::Set(serde_json::from_str(value).expect("a JSON value"))
                }
                [cmd, k, value, ..] if cmd.eq_ignore_ascii_case("SET") && *k == key => {
                    Write::Set(serde_json::from_str(value).expect("a JSON value"))
                }
                [cmd, keys @ ..] if cmd.eq_ignore_ascii_case("DEL") && keys.contains(&key) => Write::Del,
                _ => continue,
            };
            if out.last() != Some(&write) {
                out.push(write);
            }
        }
        out
    }

    /// The `state` of each value `key` held, in order, `"(removed)"` for its removal;
    /// consecutive repeats folded.
    pub fn states(&self, key: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for w in self.writes(key) {
            let state = match w {
                Write::Set(v) => v["state"].as_str().unwrap_or("(no state)").to_owned(),
                Write::Del => "(removed)".to_owned(),
            };
            if out.last() != Some(&state) {
                out.push(state);
            }
        }
        out
    }
}

/// The quoted arguments of a MONITOR line (`1.2 [0 127.0.0.1:5] "SET" "k" "v"`), unescaped as
/// Redis escapes them (`sdscatrepr`: `\"`, `\\`, `\n`, `\r`, `\t`, `\a`, `\b`, `\xHH`).
fn arguments(line: &str) -> Vec<String> {
    let Some((_, rest)) = line.split_once("] ") else { return Vec::new() };
    let bytes = rest.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut arg = Vec::new();
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' && i + 1 < bytes.len() {
                i += 1;
                match bytes[i] {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(7),
                    b'b' => arg.push(8),
                    b'x' if i + 2 < bytes.len() => {
                        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                        arg.push(u8::from_str_radix(hex, 16).unwrap());
                        i += 2;
                    }
                    other => arg.push(other),
                }
            } else {
                arg.push(bytes[i]);
            }
            i += 1;
        }
        i += 1;
        out.push(String::from_utf8_lossy(&arg).into_owned());
    }
    out
}

#[test]
fn monitor_lines_unescape() {
    let line = r#"1764590400.123456 [0 127.0.0.1:50000] "SETEX" "swim:server:ab" "86400" "{\"state\":\"booted\",\"n\":\"caf\xc3\xa9\\\\\"}""#;
    let args = arguments(line);
    assert_eq!(args[..3], ["SETEX", "swim:server:ab", "86400"]);
    assert_eq!(args[3], r#"{"state":"booted","n":"café\\"}"#);
}
