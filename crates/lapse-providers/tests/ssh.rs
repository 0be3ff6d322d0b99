//! `exec` over SSH against a private sshd on loopback (`lapse_providers::ssh::testing`):
//! what a command receives and returns, the bounds in time and memory, host keys trusted on
//! first use, and servers that misbehave.
#![cfg(feature = "ssh")]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use lapse_providers::ssh::testing::TestSshd;
use lapse_providers::ssh::{KeyStore, SshConfig, SshError, Target, exec};

struct Setup {
    sshd: TestSshd,
    keys: KeyStore,
    cfg: SshConfig,
    _dir: tempfile::TempDir,
}

const ENV: &str = "env-ssh-1";

fn setup() -> Setup {
    let sshd = TestSshd::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SshConfig::in_dir(dir.path().join("ssh"));
    cfg.port = sshd.port;
    cfg.user = Some(sshd.user.clone());
    cfg.retry_pause = Duration::from_millis(50);
    cfg.connect_timeout = Duration::from_secs(5);
    let keys = KeyStore::new(cfg.key_dir.clone());
    sshd.authorize(&keys.ensure(ENV).unwrap());
    Setup { sshd, keys, cfg, _dir: dir }
}

impl Setup {
    fn target(&self) -> Target<'_> {
        Target {
            environment_id: ENV,
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: self.sshd.port,
            user: &self.sshd.user,
        }
    }

    async fn run(&self, argv: &[&str], timeout: Duration) -> Result<lapse_core::wire::ExecResult, SshError> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        exec(&self.keys, &self.cfg, &self.target(), &argv, timeout).await
    }
}

#[tokio::test]
async fn exec_returns_stdout_stderr_and_the_exit_code() {
    let s = setup();
    let r = s.run(&["sh", "-c", "echo out; echo err >&2; exit 3"], Duration::from_secs(20)).await.unwrap();
    assert_eq!((r.stdout.as_str(), r.stderr.as_str(), r.exit_code, r.timed_out), ("out\n", "err\n", Some(3), false));
    let ok = s.run(&["true"], Duration::from_secs(20)).await.unwrap();
    assert_eq!(ok.exit_code, Some(0));
}

#[tokio::test]
async fn hostile_argv_reaches_the_program_verbatim() {
    let s = setup();
    let words =
        ["two words", "it's", "\"dq\"", "a;b", "$(touch /tmp/lapse-pwned)", "`id`", "", "new\nline", "*", "\\", "é"];
    let mut argv = vec!["printf", "[%s]\\n"];
    argv.extend(words);
    let r = s.run(&argv, Duration::from_secs(20)).await.unwrap();
    let expected: String = words.iter().map(|w| format!("[{w}]\n")).collect();
    assert_eq!(r.stdout, expected);
    assert!(!std::path::Path::new("/tmp/lapse-pwned").exists(), "nothing was run from an argument");
}

#[tokio::test]
async fn output_over_the_cap_is_cut_with_the_marker() {
    let mut s = setup();
    s.cfg.max_output = 1000;
    let r =
        s.run(&["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x; echo END"], Duration::from_secs(30)).await.unwrap();
    assert_eq!(r.exit_code, Some(0));
    assert!(r.stdout.starts_with("[lapse: output truncated: "), "{}", &r.stdout[..80]);
    assert!(r.stdout.ends_with("xEND\n"));
    assert!(r.stdout.len() < 1200, "{}", r.stdout.len());
}

#[tokio::test]
async fn a_command_past_its_timeout_is_abandoned_in_time() {
    let s = setup();
    let started = Instant::now();
    let r = s.run(&["sh", "-c", "echo begun; sleep 30"], Duration::from_secs(3)).await.unwrap();
    assert!(r.timed_out && r.exit_code.is_none(), "{r:?}");
    assert_eq!(r.stdout, "begun\n");
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_changed_host_key_is_refused() {
    let mut s = setup();
    assert_eq!(s.run(&["true"], Duration::from_secs(20)).await.unwrap().exit_code, Some(0));
    s.sshd.change_host_key();
    let started = Instant::now();
    let err = s.run(&["true"], Duration::from_secs(20)).await.unwrap_err();
    assert!(matches!(err, SshError::HostKeyChanged { .. }), "{err}");
    assert!(err.to_string().contains("host key") && err.to_string().contains("refused"));
    assert!(started.elapsed() < Duration::from_secs(10), "refused at once, not retried");
    // Remembered per environment: a second refusal, the first key still remembered.
    assert!(matches!(s.run(&["true"], Duration::from_secs(5)).await, Err(SshError::HostKeyChanged { .. })));
}

#[tokio::test]
async fn a_server_that_never_answers_ends_within_the_timeout() {
    let s = setup();
    let silent = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = silent.local_addr().unwrap().port();
    let _hold = std::thread::spawn(move || {
        let kept: Vec<_> = silent.incoming().take(50).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(kept);
    });
    let mut cfg = s.cfg.clone();
    cfg.connect_timeout = Duration::from_secs(1);
    let target = Target { port, ..s.target() };
    let started = Instant::now();
    let err = exec(&s.keys, &cfg, &target, &["true".into()], Duration::from_secs(3)).await.unwrap_err();
    assert!(matches!(err, SshError::Unreachable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_refused_port_is_retried_until_the_timeout() {
    let s = setup();
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
    let target = Target { port, ..s.target() };
    let started = Instant::now();
    let err = exec(&s.keys, &s.cfg, &target, &["true".into()], Duration::from_secs(2)).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SshError::Unreachable { .. }) && text.contains("refused"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(1900) && started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn a_server_closing_mid_stream_is_an_error_not_an_exit_code() {
    let s = setup();
    // The command kills its own sshd session process: the connection drops mid-stream.
    let err = s.run(&["sh", "-c", "echo partial; kill -9 $PPID; sleep 5"], Duration::from_secs(20)).await.unwrap_err();
    assert!(matches!(err, SshError::Closed { .. } | SshError::Protocol { .. }), "{err}");
}

#[tokio::test]
async fn the_private_key_appears_in_no_error() {
    let s = setup();
    let private = std::fs::read_to_string(s.cfg.key_dir.as_ref().unwrap().join(format!("{ENV}.key"))).unwrap();
    let body: String = private.lines().filter(|l| !l.starts_with("-----")).collect();
    let wrong_user = Target { user: "nobody-here", ..s.target() };
    // A refused login is retried until the timeout (the key may not be in place yet); 6 s leaves
    // a freshly started sshd on a busy machine time to answer at all.
    let err = exec(&s.keys, &s.cfg, &wrong_user, &["true".into()], Duration::from_secs(6)).await.unwrap_err();
    let text = format!("{err} {err:?} {:?}", s.keys);
    assert!(text.contains("refused"), "{text}");
    for chunk in body.as_bytes().chunks(16) {
        assert!(!text.contains(std::str::from_utf8(chunk).unwrap()), "key material in {text}");
    }
    // An environment without a key says so.
    let other = Target { environment_id: "no-key-env", ..s.target() };
    assert!(matches!(
        exec(&s.keys, &s.cfg, &other, &["true".into()], Duration::from_secs(2)).await,
        Err(SshError::NoKey(_))
    ));
}
