//! A private sshd for tests (feature `ssh-testing`): `/usr/sbin/sshd -D` started as the
//! current user on a free loopback port, with its own host key, config and
//! `AuthorizedKeysFile` in a temporary directory; never the system's sshd or its files. It is
//! killed, and its directory removed, on drop. `scripts/test-env.sh` installs openssh-server.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts sshd.
pub const SSHD: &str = "/usr/sbin/sshd";

/// A running private sshd.
#[derive(Debug)]
pub struct TestSshd {
    child: Child,
    pub port: u16,
    /// The user it lets in (the current one).
    pub user: String,
    pub dir: PathBuf,
}

impl TestSshd {
    /// Starts one with a fresh host key. Panics (a test helper) when sshd is missing.
    pub fn start() -> TestSshd {
        let dir = std::env::temp_dir().join(format!("lapse-sshd-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("a temp dir for sshd");
        std::fs::write(dir.join("authorized_keys"), "").expect("authorized_keys");
        new_host_key(&dir);
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .expect("the current user has a name");
        for _ in 0..5 {
            let (port, mut child) = spawn(&dir, 0);
            if wait_ready(port, &mut child) {
                return TestSshd { child, port, user, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sshd did not start; see {}", dir.join("sshd.log").display());
    }

    /// Lets `public_key` (an OpenSSH line) in.
    pub fn authorize(&self, public_key: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("authorized_keys"))
            .expect("authorized_keys opens");
        writeln!(f, "{}", public_key.trim()).expect("authorized_keys takes a line");
    }

    /// Restarts on the same port with a new host key (a VM replaced behind its address).
    pub fn change_host_key(&mut self) {
        new_host_key(&self.dir);
        let port = self.port;
        self.kill();
        let (_, child) = spawn(&self.dir, port);
        self.child = child;
        wait_ready(port, &mut self.child);
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn new_host_key(dir: &Path) {
    let key = dir.join("host_ed25519");
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(dir.join("host_ed25519.pub"));
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .stdout(Stdio::null())
        .status()
        .expect("ssh-keygen runs (scripts/test-env.sh installs openssh-client)");
    assert!(status.success(), "ssh-keygen failed");
}

/// Starts sshd on `port` (0: a free one), answering the port and the child.
fn spawn(dir: &Path, port: u16) -> (u16, Child) {
    let port = if port == 0 {
        // Taken and given back: sshd binds it next (a race another test could win, in which
        // case the start is retried).
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("a free port").port()
    } else {
        port
    };
    let config = format!(
        "ListenAddress 127.0.0.1:{port}\nHostKey {dir}/host_ed25519\nAuthorizedKeysFile {dir}/authorized_keys\n\
         PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nLogLevel ERROR\n\
         MaxStartups 100\n",
        dir = dir.display()
    );
    let config_path = dir.join("sshd_config");
    std::fs::write(&config_path, config).expect("sshd_config");
    // sshd refuses to start as root without its privilege separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let log = std::fs::File::create(dir.join("sshd.log")).expect("sshd.log");
    let child = Command::new(SSHD)
        .arg("-D")
        .arg("-f")
        .arg(&config_path)
        .arg("-E")
        .arg(dir.join("sshd.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("sshd starts (scripts/test-env.sh installs openssh-server)");
    (port, child)
}

/// Waits until the port answers with an SSH banner; `false` if sshd died or never did.
fn wait_ready(port: u16, child: &mut Child) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut banner = [0u8; 4];
            if s.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
