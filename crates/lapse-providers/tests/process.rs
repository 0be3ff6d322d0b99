//! The process provider with its helper program, as the server runs it (as root here: own
//! uid, namespaces, cgroups).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lapse_core::model::{Resources, Spec};
use lapse_providers::process::ProcessProvider;
use lapse_providers::process::logs::LOG_CAP_BYTES;
use lapse_providers::{InstanceStatus, Placement, Provider};

fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lapse-process-helper"))
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    controller: String,
    p: ProcessProvider,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("process");
    let controller = format!("lapse-test{}", &lapse_core::model::new_environment_id()[20..]);
    let p = ProcessProvider::new(&root, controller.clone()).unwrap().with_helper(helper());
    Setup { _dir: dir, root, controller, p }
}

fn spec(cmd: &[&str]) -> Spec {
    Spec { provider: "process".into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn id() -> String {
    lapse_core::model::new_environment_id()
}

async fn run(p: &ProcessProvider, id: &str, spec: &Spec) {
    let i = p.ensure_running(id, &Placement::default(), spec).await.unwrap();
    assert_eq!(i.status, InstanceStatus::Running);
}

async fn wait_until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < within, "not {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn run_find_exec_logs_stop_delete() {
    let s = setup();
    assert!(s.p.isolated(), "these tests run as root: {}", s.p.health().await.unwrap());
    let id = id();
    let spec = spec(&["sh", "-c", "echo started; echo oops >&2; exec sleep 30"]);
    let first = s.p.ensure_running(&id, &Placement::default(), &spec).await.unwrap();
    // Idempotent: the same process comes back.
    let again = s.p.ensure_running(&id, &Placement::default(), &spec).await.unwrap();
    assert_eq!(first.provider_ref, again.provider_ref);
    assert_eq!(s.p.list().await.unwrap().iter().filter(|i| i.status == InstanceStatus::Running).count(), 1);

    let out =
        s.p.exec(&id, &spec, &sh("pwd; id -u; echo $LAPSE_ENVIRONMENT_ID; exit 3"), Duration::from_secs(5))
            .await
            .unwrap();
    assert_eq!(out.exit_code, Some(3), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].ends_with("/work"), "{out:?}");
    assert!(lines[1].parse::<u32>().unwrap() >= lapse_providers::process::isolation::UID_BASE, "{out:?}");
    assert_eq!(lines[2], "", "no markers inside: {out:?}");

    wait_until("logged", Duration::from_secs(5), async || s.p.logs(&id, 10).await.unwrap().stdout == "started\n").await;
    assert_eq!(s.p.logs(&id, 10).await.unwrap().stderr, "oops\n");

    let timed = s.p.exec(&id, &spec, &["sleep".into(), "10".into()], Duration::from_millis(200)).await.unwrap();
    assert!(timed.timed_out && timed.exit_code.is_none());
    let missing = s.p.exec(&id, &spec, &["/no/such/program".into()], Duration::from_secs(5)).await.unwrap_err();
    assert!(!missing.is_retryable(), "{missing}");

    s.p.stop(&id, Duration::from_secs(2)).await.unwrap();
    assert_eq!(s.p.inspect(&id).await.unwrap().unwrap().status, InstanceStatus::Stopped);
    s.p.delete(&id, Duration::from_secs(1)).await.unwrap();
    assert_eq!(s.p.inspect(&id).await.unwrap(), None);
    assert!(!s.p.cgroup_of(&id).unwrap().exists(), "the cgroup goes with the environment");
    s.p.delete(&id, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_process_that_ignores_sigterm_is_killed_after_the_grace() {
    let s = setup();
    let id = id();
    run(&s.p, &id, &spec(&["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    s.p.stop(&id, Duration::from_millis(300)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(s.p.inspect(&id).await.unwrap().unwrap().status, InstanceStatus::Stopped);
    s.p.delete(&id, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_missing_program_is_permanent() {
    let s = setup();
    let err = s.p.ensure_running(&id(), &Placement::default(), &spec(&["/no/such/program"])).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}

/// Children that called `setsid` (and so left the leader's process group), and a child
/// whose parent exited, are in the cgroup: deleting the environment kills them.
#[tokio::test]
async fn delete_kills_setsid_children_and_orphans() {
    let s = setup();
    let id = id();
    run(&s.p, &id, &spec(&["sh", "-c", "setsid sleep 300 & (sleep 301 &) ; exec sleep 302"])).await;
    let cgroup = s.p.cgroup_of(&id).unwrap();
    wait_until("forked", Duration::from_secs(5), async || cgroup.tasks().len() >= 4).await;
    let pids = cgroup.tasks();
    s.p.delete(&id, Duration::from_millis(200)).await.unwrap();
    for pid in pids {
        // Gone, or a zombie its parent (the supervisor's: this test) has not reaped yet.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
        assert!(matches!(state, None | Some("Z")), "process {pid} outlived the delete: {stat}");
    }
}

/// Unisolated, a leader that exits leaves its children running; they are killed as soon as
/// the exit is seen, and the sweep's `collect_garbage` kills any the server missed.
#[tokio::test]
async fn leftovers_of_an_exited_leader_are_collected() {
    let s = setup();
    let p = s.p.clone().with_isolation(false);
    let id = id();
    run(&p, &id, &spec(&["sh", "-c", "setsid sleep 300 & sleep 0.2"])).await;
    let cgroup = p.cgroup_of(&id).unwrap();
    wait_until("stopped", Duration::from_secs(5), async || {
        p.inspect(&id).await.unwrap().is_some_and(|i| i.status == InstanceStatus::Stopped)
    })
    .await;
    // The reaper of this server kills what was left.
    wait_until("emptied", Duration::from_secs(5), async || cgroup.tasks().is_empty()).await;

    // A process put into the cgroup by hand stands for one a crashed server's reaper missed.
    let mut stray = std::process::Command::new("sleep").arg("300").spawn().unwrap();
    std::fs::write(
        Path::new("/sys/fs/cgroup/pids").join(format!("lapse/{}/{id}/cgroup.procs", s.controller)),
        stray.id().to_string(),
    )
    .unwrap();
    assert_eq!(p.collect_garbage().await.unwrap(), 1);
    assert!(stray.wait().unwrap().code().is_none(), "killed by a signal");
    p.delete(&id, Duration::from_secs(1)).await.unwrap();
}

/// A cgroup whose environment directory is gone (a crash between the two) is listed, so the
/// sweep removes it as an orphan.
#[tokio::test]
async fn a_cgroup_without_its_directory_is_listed_and_deleted() {
    let s = setup();
    let id = id();
    run(&s.p, &id, &spec(&["sleep", "300"])).await;
    let cgroup = s.p.cgroup_of(&id).unwrap();
    std::fs::remove_dir_all(s.root.join(&id)).unwrap();
    let listed = s.p.list().await.unwrap();
    let found = listed.iter().find(|i| i.environment_id == id).expect("listed");
    assert_eq!(found.status, InstanceStatus::Running);
    s.p.delete(&id, Duration::from_millis(200)).await.unwrap();
    assert!(!cgroup.exists());
    assert!(s.p.list().await.unwrap().iter().all(|i| i.environment_id != id));
}

#[tokio::test]
async fn memory_over_the_limit_is_killed_by_the_oom_killer() {
    let s = setup();
    let id = id();
    // `tail` keeps its last line, here all 100 MB of it.
    let mut spec = spec(&["sh", "-c", "sleep 0.2; head -c 100000000 /dev/zero | tail > /dev/null"]);
    spec.resources = Some(Resources { mem_mb: Some(32), ..Default::default() });
    run(&s.p, &id, &spec).await;
    assert_eq!(s.p.cgroup_of(&id).unwrap().memory_limit(), Some(32 * 1024 * 1024));
    wait_until("killed", Duration::from_secs(20), async || {
        s.p.inspect(&id).await.unwrap().is_some_and(|i| i.status == InstanceStatus::Stopped)
    })
    .await;
    let instance = s.p.inspect(&id).await.unwrap().unwrap();
    assert_eq!(instance.exit_code, Some(137), "{instance:?}");
    assert_eq!(instance.exit_reason.as_deref(), Some("killed by the OOM killer (memory limit 32 MiB)"), "{instance:?}");
    s.p.delete(&id, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_fifth_of_a_cpu_is_a_fifth_of_a_cpu() {
    let s = setup();
    let id = id();
    let mut spec = spec(&["sh", "-c", "while :; do :; done"]);
    spec.resources = Some(Resources { vcpu: Some(0.2), ..Default::default() });
    run(&s.p, &id, &spec).await;
    let cgroup = s.p.cgroup_of(&id).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (t0, u0) = (Instant::now(), cgroup.cpu_usage_ns().unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let share = (cgroup.cpu_usage_ns().unwrap() - u0) as f64 / t0.elapsed().as_nanos() as f64;
    eprintln!("a spinning environment with vcpu = 0.2 used {:.1}% of a core", share * 100.0);
    assert!((0.1..0.3).contains(&share), "used {share} of a core");
    s.p.delete(&id, Duration::from_secs(1)).await.unwrap();
}

/// A writer of 1 GB leaves at most twice the cap per stream on disk; what it wrote last is
/// what the logs show.
#[tokio::test]
async fn logs_are_capped_and_rotated() {
    let s = setup();
    let id = id();
    run(&s.p, &id, &spec(&["sh", "-c", "head -c 1000000000 /dev/zero; echo; echo last line; touch done; sleep 300"]))
        .await;
    let done = s.root.join(&id).join("work/done");
    wait_until("written", Duration::from_secs(120), async || done.exists()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let size = |name: &str| std::fs::metadata(s.root.join(&id).join(name)).map_or(0, |m| m.len());
    let total = size("stdout.log") + size("stdout.log.1");
    eprintln!("1 GB of output left {total} bytes of log");
    assert!(size("stdout.log") <= LOG_CAP_BYTES && size("stdout.log.1") <= LOG_CAP_BYTES, "{total}");
    assert!(total > LOG_CAP_BYTES, "rotated once at least: {total}");
    assert_eq!(s.p.logs(&id, 1).await.unwrap().stdout, "last line\n");
    s.p.delete(&id, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn exec_output_is_capped_and_marked() {
    let s = setup();
    let id = id();
    let spec = spec(&["sleep", "300"]);
    run(&s.p, &id, &spec).await;
    let out =
        s.p.exec(&id, &spec, &sh("head -c 50000000 /dev/zero | tr '\\0' x; echo end"), Duration::from_secs(60))
            .await
            .unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(out.stdout.starts_with("[lapse: output truncated: "), "{}", &out.stdout[..100]);
    assert!(out.stdout.ends_with("xxxxend\n"));
    assert!(out.stdout.len() < lapse_providers::MAX_OUTPUT_BYTES + 200);
    s.p.delete(&id, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn resources_are_refused_only_without_cgroups_and_disk_always() {
    let s = setup();
    let mut with = spec(&["true"]);
    with.resources = Some(Resources { vcpu: Some(0.5), mem_mb: Some(64), disk_gb: None });
    assert_eq!(s.p.validate(&with), Ok(()));
    let bare = ProcessProvider::new(s.root.join("bare"), "lapse-bare").unwrap();
    let err = bare.validate(&with).unwrap_err();
    assert!(err.message.contains("cannot enforce resources here"), "{err:?}");
    with.resources = Some(Resources { disk_gb: Some(1), ..Default::default() });
    assert_eq!(s.p.validate(&with).unwrap_err().field, "spec.resources.disk_gb");
}

#[tokio::test]
async fn a_terminal_runs_the_shell_in_the_sandbox_with_no_descriptor_of_the_server() {
    use futures::StreamExt;
    use lapse_providers::terminal::TermSize;
    use tokio::io::AsyncWriteExt;

    let s = setup();
    let id = id();
    let spec = spec(&["sleep", "60"]);
    run(&s.p, &id, &spec).await;
    // A descriptor the server holds open (not close-on-exec would leak it).
    let _held = std::fs::File::open("/etc/hostname").unwrap();
    let mut t = s.p.open_terminal(&id, &spec, TermSize { cols: 90, rows: 20 }).await.unwrap();
    t.input
        .write_all(b"echo tty=$(tty)= term=$TERM= size=$(stty size)=; ls -l /proc/$$/fd; echo uid=$(id -u)=; exit 7\r")
        .await
        .unwrap();
    let mut seen = String::new();
    let collect = async {
        while let Some(Ok(chunk)) = t.output.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(20), collect).await.expect("the output ends");
    let code = tokio::time::timeout(Duration::from_secs(5), t.exited).await.expect("the shell exits");
    assert_eq!(code, Some(7), "{seen}");
    assert!(
        seen.contains("tty=/dev/pts/") && seen.contains("term=xterm-256color=") && seen.contains("size=20 90="),
        "{seen}"
    );
    let uid: u32 =
        seen.split("uid=").nth(2).and_then(|r| r.split('=').next()).and_then(|u| u.parse().ok()).expect(&seen);
    assert!(uid >= lapse_providers::process::isolation::UID_BASE, "{seen}");
    // Every descriptor of the shell is its terminal, or one dash opens itself (a copy of the
    // terminal, `/dev/null`): none of the server's (sockets, files like the one held above).
    let targets: Vec<&str> = seen.lines().filter_map(|l| l.split(" -> ").nth(1)).collect();
    assert!(!targets.is_empty(), "{seen}");
    for target in targets {
        let target = target.trim();
        let own = target.starts_with("/dev/pts/") || target == "/dev/tty" || target == "/dev/null";
        assert!(own, "a leaked descriptor: {target}\n{seen}");
    }
}

/// What `exec` runs holds none of the server's descriptors, even one the server left without
/// close-on-exec (as a parent process may hand one down).
#[tokio::test]
async fn exec_runs_with_no_descriptor_of_the_server() {
    use std::os::fd::AsRawFd;

    let s = setup();
    let id = id();
    let spec = spec(&["sleep", "60"]);
    run(&s.p, &id, &spec).await;
    let held = std::fs::File::open("/etc/hostname").unwrap();
    nix::fcntl::fcntl(&held, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
    let fd = held.as_raw_fd();
    let cmd: Vec<String> = ["sh", "-c", "ls -l /proc/self/fd/"].iter().map(|s| s.to_string()).collect();
    let out = s.p.exec(&id, &spec, &cmd, Duration::from_secs(20)).await.unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert!(out.stdout.contains(" -> "), "{out:?}");
    assert!(!out.stdout.contains("/etc/hostname"), "descriptor {fd} leaked: {}", out.stdout);
    s.p.delete(&id, Duration::from_secs(1)).await.unwrap();
}
