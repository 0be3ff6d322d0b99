//! The seed's README (alex-sviridov/swim@27f4120) run as written with the real `redis-cli`,
//! and requests read as the seed's Go code reads them (`internal/connector/scaleway/request.go`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{PROVISION, Setup, eventually, setup, setup_full, setup_with, swim_envs};
use crate::harness::secs;

/// The README's commands, word for word ("Submit Provisioning Request", "Submit
/// Decommissioning Request").
const README_PROVISION: &str = r#"redis-cli -a $REDIS_PASSWORD LPUSH swim:provision:queue '{"WebUsername":"test-user","LabID":1234,"CloudInitFile":"./cloud-init.yml","TTLMinutes":30}'"#;
const README_DECOMMISSION_USER: &str =
    r#"redis-cli -a $REDIS_PASSWORD LPUSH swim:decomission:queue '{"WebUsername":"test-user"}'"#;
const README_DECOMMISSION_LAB: &str =
    r#"redis-cli -a $REDIS_PASSWORD LPUSH swim:decomission:queue '{"WebUsername":"test-user","LabID":1234}'"#;

const PASSWORD: &str = "lab-s3cret";

/// Runs a README line with `sh`, `redis-cli` pointed at the test's Redis (the one word added:
/// the README's Redis is on the default port), `REDIS_PASSWORD` set as the README's reader has it.
fn sh(s: &Setup, line: &str) -> String {
    let line = line.replacen("redis-cli ", &format!("redis-cli -p {} ", s.redis.port), 1);
    let out = std::process::Command::new("sh")
        .args(["-c", &line])
        .env("REDIS_PASSWORD", PASSWORD)
        .output()
        .expect("sh and redis-cli");
    assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `redis-cli` with `args` (no shell), with the password if the Redis has one.
fn cli(s: &Setup, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new("redis-cli");
    cmd.args(["-p", &s.redis.port.to_string()]);
    if let Some(p) = password {
        cmd.args(["-a", p, "--no-auth-warning"]);
    }
    let out = cmd.args(args).output().expect("redis-cli");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The `swim:server:*` values by (`webusername`, `labid`), read with `redis-cli`.
fn servers(s: &Setup, password: Option<&str>) -> BTreeMap<(String, i64), Value> {
    let keys = cli(s, password, &["--raw", "KEYS", "swim:server:*"]);
    keys.lines()
        .filter(|k| !k.is_empty())
        .filter_map(|k| {
            let v: Value = serde_json::from_str(cli(s, password, &["--raw", "GET", k]).trim()).ok()?;
            Some(((v["webusername"].as_str()?.to_owned(), v["labid"].as_i64()?), v))
        })
        .collect()
}

fn lab(user: &str, lab: i64) -> (String, i64) {
    (user.to_owned(), lab)
}

#[tokio::test]
async fn the_seed_readmes_redis_cli_commands_work_as_written() {
    let s = setup_full("process", &[], &[], Some(PASSWORD)).await;
    // The README's `./cloud-init.yml`, beneath the cloud-init dir.
    assert!(s.cloud_init.ends_with("/cloud-init/cloud-init.yml"));
    assert_eq!(sh(&s, README_PROVISION).trim(), "1", "LPUSH answers the list's length");
    // A second lab of the same user and one of another user, the same way.
    sh(&s, &README_PROVISION.replace("1234", "77"));
    sh(&s, &README_PROVISION.replace("test-user", "other-user"));
    let booted = eventually(secs(30), "three booted labs", async || {
        let v = servers(&s, Some(PASSWORD));
        (v.len() == 3 && v.values().all(|v| v["state"] == "booted")).then_some(v)
    })
    .await;
    let keys: Vec<(String, i64)> = booted.keys().cloned().collect();
    assert_eq!(keys, [lab("other-user", 1234), lab("test-user", 77), lab("test-user", 1234)]);
    let v = &booted[&lab("test-user", 1234)];
    assert!(v["name"].as_str().unwrap().starts_with("lab1234-"), "{v}");
    assert_eq!(v["lapse"]["cloud_init_file"], "./cloud-init.yml");
    let path = v["lapse"]["user_data_path"].as_str().unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap(), "#cloud-config\npackages: [git]\n");

    // By user and lab: only that lab; then by user: the rest of the user's.
    sh(&s, README_DECOMMISSION_LAB);
    eventually(secs(20), "lab 1234 of test-user gone", async || {
        let v = servers(&s, Some(PASSWORD));
        (!v.contains_key(&lab("test-user", 1234))).then_some(())
    })
    .await;
    let left: Vec<(String, i64)> = servers(&s, Some(PASSWORD)).into_keys().collect();
    assert_eq!(left, [lab("other-user", 1234), lab("test-user", 77)]);
    sh(&s, README_DECOMMISSION_USER);
    eventually(secs(20), "test-user's labs gone", async || {
        let v = servers(&s, Some(PASSWORD));
        (v.len() == 1).then_some(())
    })
    .await;
    let left: Vec<(String, i64)> = servers(&s, Some(PASSWORD)).into_keys().collect();
    assert_eq!(left, [lab("other-user", 1234)]);
    let envs = swim_envs(&s.server).await;
    let live: Vec<&Value> = envs.iter().filter(|e| e["desired_state"] != "deleted").collect();
    assert_eq!((live.len(), &live[0]["owner"]), (1, &json!("other-user")));
    assert!(cli(&s, Some(PASSWORD), &["LLEN", "swim:provision:queue:dead"]).trim() == "0");
}

/// The dead-letter reasons of the provision queue by message, once there are `n`.
async fn dead(s: &Setup, n: usize) -> BTreeMap<String, String> {
    let dead = super::hostile::dead_letters(s, PROVISION, n).await;
    dead.into_iter().map(|(message, v)| (message, v["reason"].as_str().unwrap().to_owned())).collect()
}

#[tokio::test]
async fn requests_are_read_as_gos_encoding_json_reads_them() {
    let s = setup("process", &[]).await;
    let content = "#cloud-config\nruncmd: [echo inline]\n";
    let good = [
        // Lower-case keys, inline cloud-init and no CloudInitFile.
        json!({"webusername": "odd", "labid": 11, "ttlminutes": 30, "cloudinitcontent": content}).to_string(),
        // Odd case; ServerType is the type, over the README's InstanceType; "" is "not given".
        r#"{"WEBUSERNAME":"odd","LabId":12,"tTLmINUTES":30,"ServerType":"DEV1-S","instancetype":"GP1-S","CloudInitFile":""}"#
            .to_owned(),
        // Duplicate keys: the last wins, whatever its case.
        r#"{"WebUsername":"odd","LabID":1,"labid":13,"TTLMinutes":30,"LabID":null}"#.to_owned(),
    ];
    let bad = [
        (r#"{"WebUsername":"odd","LabID":0,"TTLMinutes":30}"#, "missing required fields: [LabID]"),
        (
            r#"{"WebUsername":"odd","LabID":"5","TTLMinutes":30}"#,
            r#"LabID must be a JSON integer (a Go int), not the string "5""#,
        ),
        (
            r#"{"WebUsername":"odd","LabID":5,"TTLMinutes":1.5}"#,
            "TTLMinutes must be a JSON integer (a Go int), not 1.5",
        ),
        (r#"{"WebUsername":"odd","LabID":5}"#, "missing required fields: [TTLMinutes]"),
        (r#"{"WebUsername":"","LabID":5,"TTLMinutes":30}"#, "missing required fields: [WebUsername]"),
    ];
    for message in good.iter().map(String::as_str).chain(bad.iter().map(|(m, _)| *m)) {
        cli(&s, None, &["LPUSH", PROVISION, message]);
    }
    let envs = eventually(secs(30), "three running labs", async || {
        let envs = swim_envs(&s.server).await;
        (envs.len() == 3 && envs.iter().all(|e| e["state"] == "running")).then_some(envs)
    })
    .await;
    let by_lab: BTreeMap<String, &Value> =
        envs.iter().map(|e| (e["labels"]["swim.lab_id"].as_str().unwrap().to_owned(), e)).collect();
    assert_eq!(by_lab.keys().collect::<Vec<_>>(), ["11", "12", "13"]);
    assert!(envs.iter().all(|e| e["owner"] == "odd"));

    // Inline content is the lab's cloud-init.
    let id = by_lab["11"]["id"].as_str().unwrap();
    let (status, out) = s
        .server
        .post(&format!("/v1/environments/{id}/exec"), json!({"cmd": ["/bin/sh", "-c", "cat \"$LAPSE_USER_DATA\""]}))
        .await;
    assert_eq!((status.as_u16(), out["stdout"].as_str()), (200, Some(content)), "{out}");
    assert!(by_lab["11"]["labels"].get("swim.cloud_init_file").is_none());
    assert_eq!(by_lab["12"]["labels"]["swim.instance_type"], "DEV1-S", "ServerType wins");

    // A decommission read the same way: lower-case keys, LabID a Go int.
    cli(&s, None, &["LPUSH", super::DECOMMISSION, r#"{"webUsername":"odd","LABID":12}"#]);
    s.server.wait_state(by_lab["12"]["id"].as_str().unwrap(), "deleted", secs(20)).await;
    for lab in ["11", "13"] {
        assert_eq!(s.server.env(by_lab[lab]["id"].as_str().unwrap()).await["state"], "running");
    }

    let reasons = dead(&s, bad.len()).await;
    for (message, words) in bad {
        let reason = reasons.get(message).unwrap_or_else(|| panic!("{message} not dead-lettered: {reasons:?}"));
        assert!(reason.contains(words), "{message}: {reason}");
    }
}

#[tokio::test]
async fn a_process_server_with_an_instance_type_provisions() {
    let s = setup_with("process", &[], &[("SWIM_PROVISION_DEFAULT_INSTANCE_TYPE", "DEV1-M")]).await;
    let ci = &s.cloud_init;
    cli(
        &s,
        None,
        &[
            "LPUSH",
            PROVISION,
            &json!({"WebUsername": "ty", "LabID": 1, "CloudInitFile": ci, "TTLMinutes": 30}).to_string(),
        ],
    );
    let spelled =
        json!({"WebUsername": "ty", "LabID": 2, "CloudInitFile": ci, "TTLMinutes": 30, "ServerType": "POP2-2C-8G"});
    cli(&s, None, &["LPUSH", PROVISION, &spelled.to_string()]);
    let envs = eventually(secs(30), "two running labs", async || {
        let envs = swim_envs(&s.server).await;
        (envs.len() == 2 && envs.iter().all(|e| e["state"] == "running")).then_some(envs)
    })
    .await;
    let (_, providers) = s.server.get("/v1/providers").await;
    let process = providers["providers"].as_array().unwrap().iter().find(|p| p["name"] == "process").unwrap();
    let cgroups = !process["detail"].as_str().unwrap().contains("no cgroups");
    for (lab, ty, vcpu, mem) in [("1", "DEV1-M", 3.0, 4096), ("2", "POP2-2C-8G", 2.0, 8192)] {
        let env = envs.iter().find(|e| e["labels"]["swim.lab_id"] == lab).unwrap();
        assert_eq!(env["labels"]["swim.instance_type"], ty, "{env}");
        let key = eventually(secs(10), "the booted key", async || {
            super::server_state(&s.redis, env["id"].as_str().unwrap()).await.filter(|v| v["state"] == "booted")
        })
        .await;
        assert_eq!(key["lapse"]["instance_type"], ty);
        assert_eq!(key["lapse"]["resources_enforced"], cgroups, "{key} ({process})");
        if cgroups {
            assert_eq!(env["spec"]["resources"], json!({"vcpu": vcpu, "mem_mb": mem}), "{env}");
        } else {
            assert!(env["spec"].get("resources").is_none(), "{env}");
            assert_eq!(env["labels"]["swim.resources"], "unenforced", "{env}");
        }
    }
    if !cgroups {
        let warnings = s.server.log().matches("SWIM instance types cannot be enforced here").count();
        assert_eq!(warnings, 1, "said once");
    }
}
