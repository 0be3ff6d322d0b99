//! The aws provider's tags (labels, the seed's) and shared key pairs, against a real moto
//! server of its own per test (`LAPSE_MOTO_SERVER`, from `scripts/test-env.sh`).
#![cfg(feature = "aws")]

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use lapse_core::model::{CloudSpec, OnExpiry, Spec};
use lapse_providers::aws::moto::MotoServer;
use lapse_providers::aws::{AwsProvider, key_pair_name};
use lapse_providers::{Placement, Provider, ProviderError};

const SECRET: &str = "lapse-test-SECRET-never-shown-tags-0123";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEBgADPnDiIQn0qOOAF8KTqypgMP7s21Sj6xqDT34zZI me@host";
const OTHER_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmBzZTbQUI6M36xiFzul3EJ6WsQtl6GG4cGiEl6G3kv other@host";

/// A moto server of this test's own.
async fn moto() -> MotoServer {
    MotoServer::start("AKIDLAPSETEST", SECRET).await.expect("moto starts (LAPSE_MOTO_SERVER)")
}

fn spec_with(key: &str) -> Spec {
    Spec {
        provider: "aws".into(),
        cloud: Some(CloudSpec {
            instance_type: Some("t3.micro".into()),
            ssh_public_keys: vec![key.into()],
            ..Default::default()
        }),
        resources: Some(lapse_core::model::Resources { disk_gb: Some(10), ..Default::default() }),
        ..Default::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn tag_map(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tags.iter().map(|t| (t.key().unwrap_or("").to_owned(), t.value().unwrap_or("").to_owned())).collect()
}

/// The instance's tags and its volumes' tags.
async fn tags_of(p: &AwsProvider, instance: &str) -> (BTreeMap<String, String>, Vec<BTreeMap<String, String>>) {
    let out = p.client().describe_instances().instance_ids(instance).send().await.unwrap();
    let i = out.reservations()[0].instances()[0].clone();
    let volumes = p
        .client()
        .describe_volumes()
        .filters(Filter::builder().name("attachment.instance-id").values(instance).build())
        .send()
        .await
        .unwrap();
    assert!(!volumes.volumes().is_empty(), "the instance has its root volume");
    (tag_map(i.tags()), volumes.volumes().iter().map(|v| tag_map(v.tags())).collect())
}

#[tokio::test]
async fn instance_and_volumes_carry_the_users_labels_and_the_seeds_tags_when_asked() {
    let moto = moto().await;
    let now = lapse_core::now_millis();
    let placement = Placement {
        tenant: "acme".into(),
        expires_at: Some(now + 2 * 3_600_000),
        on_expiry: OnExpiry::Stop,
        labels: labels(&[("team", "infra"), ("app.example.com/tier", "web")]),
        ..Default::default()
    };

    let plain = moto.provider("ctl-tags").await.unwrap();
    let env = lapse_core::model::new_environment_id();
    let inst = plain.ensure_running(&env, &placement, &spec_with(KEY)).await.unwrap();
    let (tags, volumes) = tags_of(&plain, &inst.provider_ref).await;
    for t in std::iter::once(&tags).chain(&volumes) {
        assert_eq!(t["team"], "infra", "{t:?}");
        assert_eq!(t["app.example.com/tier"], "web");
        assert_eq!(t["lapse:environment"], env);
        assert_eq!(t["lapse:tenant"], "acme");
        assert_eq!(t["Name"], format!("lapse-{env}"));
        assert!(!t.contains_key("ManagedBy"), "no seed tags unless asked: {t:?}");
    }

    let seeded = moto.provider("ctl-seed").await.unwrap().with_seed_tags(true);
    let env = lapse_core::model::new_environment_id();
    let inst = seeded.ensure_running(&env, &placement, &spec_with(KEY)).await.unwrap();
    let (tags, volumes) = tags_of(&seeded, &inst.provider_ref).await;
    for t in std::iter::once(&tags).chain(&volumes) {
        assert_eq!(t["ManagedBy"], "instance-manager", "{t:?}");
        assert_eq!(t["Name"], "instance-manager");
        // The lease, counted from the launch, as Go writes a duration: 1h59m5xs or 2h0m0s.
        let d = &t["Duration"];
        assert!(d == "2h0m0s" || (d.starts_with("1h59m") && d.ends_with('s')), "{d}");
        assert_eq!(t["team"], "infra");
    }
    // A user's Name label names the instance.
    let named = Placement { labels: labels(&[("Name", "my-box")]), ..placement.clone() };
    let env = lapse_core::model::new_environment_id();
    let inst = plain.ensure_running(&env, &named, &spec_with(KEY)).await.unwrap();
    assert_eq!(tags_of(&plain, &inst.provider_ref).await.0["Name"], "my-box");

    // Labels added later (a claim, an edit) reach the running instance on the next ensure.
    let more = Placement { labels: labels(&[("Name", "my-box"), ("stage", "two")]), ..placement };
    plain.ensure_running(&env, &more, &spec_with(KEY)).await.unwrap();
    assert_eq!(tags_of(&plain, &inst.provider_ref).await.0["stage"], "two");
}

#[tokio::test]
async fn labels_ec2_cannot_carry_are_refused_naming_the_field() {
    let moto = moto().await;
    let plain = moto.provider("ctl-limits").await.unwrap();
    let seeded = moto.provider("ctl-limits").await.unwrap().with_seed_tags(true);
    let many: BTreeMap<String, String> = (0..46).map(|i| (format!("l{i}"), "v".to_owned())).collect();
    assert_eq!(plain.validate_labels(&many).unwrap_err().field, "labels");
    let fits: BTreeMap<String, String> = many.into_iter().take(45).collect();
    assert_eq!(plain.validate_labels(&fits), Ok(()));
    assert_eq!(seeded.validate_labels(&fits).unwrap_err().field, "labels", "two of the 50 are the seed's");
    assert_eq!(plain.validate_labels(&labels(&[("ManagedBy", "me")])), Ok(()));
    assert_eq!(seeded.validate_labels(&labels(&[("ManagedBy", "me")])).unwrap_err().field, "labels.ManagedBy");
    let long = "v".repeat(257);
    assert_eq!(plain.validate_labels(&labels(&[("k", &long)])).unwrap_err().field, "labels.k");
}

#[tokio::test]
async fn two_environments_importing_one_key_at_once_share_one_key_pair() {
    let moto = moto().await;
    let p = moto.provider("ctl-keys").await.unwrap();
    let placement = Placement::of_tenant("acme");
    let (a, b) = (lapse_core::model::new_environment_id(), lapse_core::model::new_environment_id());
    let (spec_a, spec_b) = (spec_with(KEY), spec_with(KEY));
    let (ra, rb) = tokio::join!(p.ensure_running(&a, &placement, &spec_a), p.ensure_running(&b, &placement, &spec_b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_ne!(ra.provider_ref, rb.provider_ref);
    let pairs = p.client().describe_key_pairs().send().await.unwrap();
    let names: Vec<&str> = pairs.key_pairs().iter().filter_map(|k| k.key_name()).collect();
    assert_eq!(names, [key_pair_name(KEY).as_str()], "one key pair for one key");
    let out =
        p.client().describe_instances().instance_ids(&ra.provider_ref).instance_ids(&rb.provider_ref).send().await;
    let keys: Vec<String> = out
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.key_name().map(str::to_owned))
        .collect();
    assert_eq!(keys, [key_pair_name(KEY), key_pair_name(KEY)]);
}

#[tokio::test]
async fn a_key_pair_of_that_name_with_another_key_is_refused_and_kept() {
    let moto = moto().await;
    let p = moto.provider("ctl-clash").await.unwrap();
    // Someone put another key under the name Lapse gives KEY.
    p.client()
        .import_key_pair()
        .key_name(key_pair_name(KEY))
        .public_key_material(aws_sdk_ec2::primitives::Blob::new(OTHER_KEY.as_bytes()))
        .send()
        .await
        .unwrap();
    let env = lapse_core::model::new_environment_id();
    let err = p.ensure_running(&env, &Placement::default(), &spec_with(KEY)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Permanent { .. }), "{err:?}");
    assert!(err.to_string().contains("spec.cloud.ssh_public_keys"), "{err}");
    assert!(!err.to_string().contains(SECRET));
    let pairs = p.client().describe_key_pairs().key_names(key_pair_name(KEY)).include_public_key(true).send().await;
    let kept = pairs.unwrap().key_pairs()[0].public_key().unwrap_or_default().to_owned();
    assert!(kept.contains("AAAAIOmBzZTbQUI6M36x"), "the other key is left as it was: {kept}");
}

#[tokio::test]
async fn a_failed_create_keeps_a_key_pair_that_an_instance_uses() {
    let moto = moto().await;
    let p = moto.provider("ctl-keep").await.unwrap();
    let placement = Placement::of_tenant("acme");
    let a = lapse_core::model::new_environment_id();
    p.ensure_running(&a, &placement, &spec_with(KEY)).await.unwrap();
    // The pair is gone (removed by hand): the next create imports it again, then fails.
    p.client().delete_key_pair().key_name(key_pair_name(KEY)).send().await.unwrap();
    let mut bad = spec_with(KEY);
    bad.cloud.as_mut().unwrap().security_group = Some("sg-0000000000000dead".into());
    let err = p.ensure_running(&lapse_core::model::new_environment_id(), &placement, &bad).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    let pairs = p.client().describe_key_pairs().send().await.unwrap();
    assert_eq!(pairs.key_pairs().len(), 1, "a's instance uses the pair the failed create imported: it stays");

    // With no instance using it, a failed create removes the pair it imported.
    let mut lone = spec_with(OTHER_KEY);
    lone.cloud.as_mut().unwrap().security_group = Some("sg-0000000000000dead".into());
    p.ensure_running(&lapse_core::model::new_environment_id(), &placement, &lone).await.unwrap_err();
    let pairs = p.client().describe_key_pairs().send().await.unwrap();
    let names: Vec<&str> = pairs.key_pairs().iter().filter_map(|k| k.key_name()).collect();
    assert_eq!(names, [key_pair_name(KEY).as_str()]);
}

#[tokio::test]
async fn the_time_inside_ec2_calls_is_counted_per_operation() {
    let moto = moto().await;
    let p = moto.provider("ctl-time").await.unwrap();
    let before: u64 = p.call_times().iter().map(|t| t.count).sum();
    p.ensure_running(&lapse_core::model::new_environment_id(), &Placement::default(), &spec_with(KEY)).await.unwrap();
    let times = p.call_times();
    let run = times.iter().find(|t| t.op == "RunInstances").expect("RunInstances counted");
    assert_eq!(run.count, 1);
    assert!(run.total > Duration::ZERO && run.total < Duration::from_secs(30));
    assert_eq!(run.buckets.iter().sum::<u64>(), 1);
    let after: u64 = times.iter().map(|t| t.count).sum();
    assert!(after - before >= 4, "lookups, image, key, run, describe: {times:?}");
    assert!(times.iter().any(|t| t.op == "ImportKeyPair"));
}
