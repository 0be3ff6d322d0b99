//! One exec over SSH: connect (retrying while the VM boots), check the host key against the
//! one remembered, authenticate with the environment's key, run one command line, collect
//! its output bounded, all within one deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapse_core::wire::ExecResult;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect, Sig, client};
use tokio::time::Instant;

use super::{KeyStore, SshConfig, SshError, quote};
use crate::CappedOutput;

/// Where to exec: the environment (whose keys are used), the VM's address and login.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    pub environment_id: &'a str,
    pub address: IpAddr,
    pub port: u16,
    pub user: &'a str,
}

impl Target<'_> {
    fn address(&self) -> String {
        SocketAddr::new(self.address, self.port).to_string()
    }
}

/// Runs `argv` (each word quoted for the remote shell) on the target within `timeout`.
pub async fn exec(
    keys: &KeyStore,
    cfg: &SshConfig,
    target: &Target<'_>,
    argv: &[String],
    timeout: Duration,
) -> Result<ExecResult, SshError> {
    let line = quote::command_line(argv).map_err(|index| SshError::NulInCommand { index })?;
    run_line(keys, cfg, target, &line, timeout).await
}

/// Runs a command line as it is (the caller quoted it) on the target within `timeout`.
pub async fn run_line(
    keys: &KeyStore,
    cfg: &SshConfig,
    target: &Target<'_>,
    line: &str,
    timeout: Duration,
) -> Result<ExecResult, SshError> {
    let deadline = Instant::now() + timeout;
    let key = keys.load(target.environment_id)?.ok_or_else(|| SshError::NoKey(target.environment_id.to_owned()))?;
    let key = Arc::new(key);
    let session = connect(keys, cfg, target, &key, deadline, timeout).await?;
    let result = run(&session, cfg, target, line, deadline).await;
    // Best effort: the server ends the session when the connection drops anyway.
    let _ = tokio::time::timeout(Duration::from_secs(1), session.disconnect(Disconnect::ByApplication, "", "en")).await;
    result
}

/// Why one connection attempt failed.
enum Attempt {
    /// The VM may not be up yet: try again while time is left.
    Retry(String),
    Fatal(SshError),
}

async fn connect(
    keys: &KeyStore,
    cfg: &SshConfig,
    target: &Target<'_>,
    key: &Arc<russh::keys::PrivateKey>,
    deadline: Instant,
    timeout: Duration,
) -> Result<client::Handle<HostCheck>, SshError> {
    let mut last = String::from("no attempt fitted in the time");
    let mut answered = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(SshError::Unreachable { address: target.address(), timeout, last });
        }
        let budget = cfg.connect_timeout.min(deadline - now);
        match tokio::time::timeout(budget, attempt(keys, target, key)).await {
            Ok(Ok(session)) => return Ok(session),
            Ok(Err(Attempt::Fatal(e))) => return Err(e),
            Ok(Err(Attempt::Retry(why))) => {
                last = why;
                answered = true;
            }
            // An attempt cut short by the overall deadline says less than an answer before it.
            Err(_) if answered && budget < cfg.connect_timeout => {}
            Err(_) => last = format!("no answer within {budget:?}"),
        }
        let pause = cfg.retry_pause.min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
    }
}

async fn attempt(
    keys: &KeyStore,
    target: &Target<'_>,
    key: &Arc<russh::keys::PrivateKey>,
) -> Result<client::Handle<HostCheck>, Attempt> {
    let remembered = keys.host_key(target.environment_id).map_err(Attempt::Fatal)?;
    let check = HostCheck { remembered: remembered.clone(), offered: Arc::new(Mutex::new(None)) };
    let offered = check.offered.clone();
    let config = Arc::new(client::Config { nodelay: true, ..Default::default() });
    let connected = client::connect(config, (target.address, target.port), check).await;
    let offered = offered.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut session = match connected {
        Ok(session) => session,
        Err(e) => {
            if let (Some(remembered), Some(offered)) = (&remembered, &offered)
                && remembered.key_data() != offered.key_data()
            {
                return Err(Attempt::Fatal(SshError::HostKeyChanged {
                    address: target.address(),
                    remembered: fingerprint(remembered),
                    offered: fingerprint(offered),
                }));
            }
            return Err(Attempt::Retry(e.to_string()));
        }
    };
    let auth = session
        .authenticate_publickey(target.user, PrivateKeyWithHashAlg::new(key.clone(), None))
        .await
        .map_err(|e| Attempt::Retry(e.to_string()))?;
    if !auth.success() {
        // Before cloud-init has written the key, the VM refuses it: retried.
        return Err(Attempt::Retry(format!("the environment's key was refused for user {:?}", target.user)));
    }
    if remembered.is_none()
        && let Some(offered) = &offered
        && !keys.remember_host_key(target.environment_id, offered).map_err(Attempt::Fatal)?
    {
        // Another exec remembered one meanwhile: it must be this one.
        let now = keys.host_key(target.environment_id).map_err(Attempt::Fatal)?;
        if let Some(now) = now.filter(|k| k.key_data() != offered.key_data()) {
            return Err(Attempt::Fatal(SshError::HostKeyChanged {
                address: target.address(),
                remembered: fingerprint(&now),
                offered: fingerprint(offered),
            }));
        }
    }
    Ok(session)
}

async fn run(
    session: &client::Handle<HostCheck>,
    cfg: &SshConfig,
    target: &Target<'_>,
    line: &str,
    deadline: Instant,
) -> Result<ExecResult, SshError> {
    let protocol = |e: russh::Error| SshError::Protocol { address: target.address(), message: e.to_string() };
    let mut stdout = CappedOutput::new(cfg.max_output);
    let mut stderr = CappedOutput::new(cfg.max_output);
    let mut exit_code: Option<i64> = None;
    let collect = async {
        let mut channel = session.channel_open_session().await.map_err(protocol)?;
        channel.exec(true, line).await.map_err(protocol)?;
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => stdout.push(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => stderr.push(&data),
                ChannelMsg::ExitStatus { exit_status } => exit_code = Some(i64::from(exit_status)),
                ChannelMsg::ExitSignal { signal_name, .. } => exit_code = Some(128 + signal_number(&signal_name)),
                ChannelMsg::Failure => {
                    return Err(SshError::Protocol {
                        address: target.address(),
                        message: "the server refused to run the command".into(),
                    });
                }
                _ => {}
            }
        }
        Ok::<_, SshError>(channel)
    };
    match tokio::time::timeout_at(deadline, collect).await {
        Ok(Ok(_channel)) => match exit_code {
            Some(code) => Ok(ExecResult {
                exit_code: Some(code),
                stdout: stdout.into_text(),
                stderr: stderr.into_text(),
                timed_out: false,
            }),
            None => Err(SshError::Closed { address: target.address() }),
        },
        Ok(Err(e)) => Err(e),
        // Abandoned: dropping the channel and the session ends the remote command's session.
        Err(_) => {
            Ok(ExecResult { exit_code: None, stdout: stdout.into_text(), stderr: stderr.into_text(), timed_out: true })
        }
    }
}

/// The number a shell reports for a command killed by `sig` (the exit code is 128 plus it).
fn signal_number(sig: &Sig) -> i64 {
    match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(_) => 127,
    }
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(Default::default()).to_string()
}

/// Trust on first use: a remembered host key must be offered again; with none remembered,
/// the offered one is accepted (and remembered by the caller once the login succeeded).
struct HostCheck {
    remembered: Option<PublicKey>,
    offered: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for HostCheck {
    type Error = russh::Error;

    async fn check_server_key(&mut self, offered: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
        };
        let ok = self.remembered.as_ref().is_none_or(|r| r.key_data() == key.key_data());
        *self.offered.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
        Ok(ok)
    }
}

/// Moves a running guest's lease deadline: writes `expires_at` (ms) to the deadline file over
/// SSH ([`crate::cloud_init::rearm_command`]). Every cloud's `rearm` ends here.
pub async fn write_deadline(
    keys: &KeyStore,
    cfg: &SshConfig,
    target: &Target<'_>,
    expires_at: lapse_core::Millis,
    provider: &'static str,
) -> Result<(), crate::ProviderError> {
    let line = crate::cloud_init::rearm_command(&cfg.deadline_file, expires_at.div_euclid(1000), target.user == "root");
    let done =
        run_line(keys, cfg, target, &line, cfg.rearm_timeout).await.map_err(|e| e.into_provider(provider, "rearm"))?;
    match done.exit_code {
        Some(0) => Ok(()),
        code => Err(crate::ProviderError::Failed {
            provider,
            op: "rearm",
            message: format!(
                "writing the deadline file ended with {}: {}",
                code.map_or("a timeout".into(), |c| format!("exit {c}")),
                done.stderr.trim()
            ),
        }),
    }
}
