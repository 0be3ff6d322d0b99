//! The aws provider against a real moto server (EC2's API, emulated), one per test, on a
//! loopback port. Needs `LAPSE_MOTO_SERVER` (the `moto_server` program), which
//! `scripts/test-env.sh` installs and exports.
#![cfg(feature = "aws")]

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_ec2::types::{Filter, InstanceAttributeName, ResourceType, Tag, TagSpecification};
use lapse_core::model::{CloudSpec, OnExpiry, Resources, Spec};
use lapse_providers::aws::moto::MotoServer;
use lapse_providers::aws::{AwsProvider, TAG_CONTROLLER, TAG_ENVIRONMENT, TAG_KEEP};
use lapse_providers::{InstanceStatus, Placement, Provider, ProviderError};

const SECRET: &str = "lapse-test-SECRET-never-shown-0123456789";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEBgADPnDiIQn0qOOAF8KTqypgMP7s21Sj6xqDT34zZI me@host";

/// A moto server of this test's own.
async fn moto() -> MotoServer {
    MotoServer::start("AKIDLAPSETEST", SECRET).await.expect("moto starts (LAPSE_MOTO_SERVER)")
}

fn id() -> String {
    lapse_core::model::new_environment_id()
}

fn spec() -> Spec {
    Spec {
        provider: "aws".into(),
        user_data: Some("#!/bin/sh\necho users-own-script\n".into()),
        resources: Some(Resources { disk_gb: Some(12), ..Default::default() }),
        cloud: Some(CloudSpec {
            instance_type: Some("t3.micro".into()),
            zone: Some("us-east-1a".into()),
            ssh_public_keys: vec![KEY.into()],
            disk_type: Some("gp3".into()),
            ..Default::default()
        }),
        ports: vec![22],
        ..Default::default()
    }
}

fn placement(on_expiry: OnExpiry) -> Placement {
    Placement { tenant: "acme".into(), expires_at: Some(1_900_000_000_000), on_expiry, ..Default::default() }
}

async fn attribute(
    p: &AwsProvider,
    id: &str,
    name: InstanceAttributeName,
) -> aws_sdk_ec2::operation::describe_instance_attribute::DescribeInstanceAttributeOutput {
    p.client().describe_instance_attribute().instance_id(id).attribute(name).send().await.unwrap()
}

async fn user_data(p: &AwsProvider, id: &str) -> String {
    use base64::Engine;
    let out = attribute(p, id, InstanceAttributeName::UserData).await;
    let b64 = out.user_data().and_then(|v| v.value()).expect("user data is set");
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
}

async fn instances_of(p: &AwsProvider, env: &str) -> Vec<aws_sdk_ec2::types::Instance> {
    let out = p
        .client()
        .describe_instances()
        .filters(Filter::builder().name(format!("tag:{TAG_ENVIRONMENT}")).values(env).build())
        .send()
        .await
        .unwrap();
    out.reservations().iter().flat_map(|r| r.instances().iter().cloned()).collect()
}

#[tokio::test]
async fn create_sets_tags_user_data_backstop_and_disk() {
    let moto = moto().await;
    let p = moto.provider("ctl-a").await.unwrap();
    let env = id();
    let inst = p.ensure_running(&env, &placement(OnExpiry::Delete), &spec()).await.unwrap();
    assert_eq!(inst.environment_id, env);
    assert!(matches!(inst.status, InstanceStatus::Running | InstanceStatus::Pending));
    assert!(!inst.addresses.is_empty(), "an EC2 instance has at least a private address");
    assert_eq!(inst.endpoints.len(), 1);

    let described = instances_of(&p, &env).await;
    assert_eq!(described.len(), 1);
    let i = &described[0];
    let tag = |k: &str| i.tags().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).map(str::to_owned);
    assert_eq!(tag("lapse:environment").as_deref(), Some(env.as_str()));
    assert_eq!(tag("lapse:controller").as_deref(), Some("ctl-a"));
    assert_eq!(tag("lapse:tenant").as_deref(), Some("acme"));
    assert_eq!(tag("lapse:expires-at").as_deref(), Some("2030-03-17T17:46:40Z"));
    assert_eq!(tag("Name"), Some(format!("lapse-{env}")));
    assert_eq!(i.instance_type().map(|t| t.as_str()), Some("t3.micro"));
    assert_eq!(i.placement().and_then(|p| p.availability_zone()), Some("us-east-1a"));
    assert_eq!(i.key_name(), Some(lapse_providers::aws::key_pair_name(KEY).as_str()));

    // The backstop and the user's own script, both, as one multipart document.
    let data = user_data(&p, &env_instance(&p, &env).await).await;
    assert!(data.starts_with("Content-Type: multipart/mixed"), "{data}");
    assert!(data.contains("echo users-own-script"));
    assert!(
        data.contains("bootcmd") && data.contains("shutdown -h now") && data.contains("echo 1900000000 >"),
        "{data}"
    );
    let behaviour =
        attribute(&p, i.instance_id().unwrap(), InstanceAttributeName::InstanceInitiatedShutdownBehavior).await;
    assert_eq!(behaviour.instance_initiated_shutdown_behavior().and_then(|v| v.value()), Some("terminate"));

    // The root volume: its size, type and tags.
    let volumes = p
        .client()
        .describe_volumes()
        .filters(Filter::builder().name("attachment.instance-id").values(i.instance_id().unwrap()).build())
        .send()
        .await
        .unwrap();
    let v = volumes.volumes().first().expect("a root volume");
    assert_eq!(v.size(), Some(12));
    assert_eq!(v.volume_type().map(|t| t.as_str()), Some("gp3"));
    assert!(v.tags().iter().any(|t| t.key() == Some("lapse:environment") && t.value() == Some(env.as_str())));
}

async fn env_instance(p: &AwsProvider, env: &str) -> String {
    instances_of(p, env).await[0].instance_id().unwrap().to_owned()
}

#[tokio::test]
async fn on_expiry_stop_launches_with_stop_behaviour_and_default_ami() {
    let moto = moto().await;
    let p = moto.provider("ctl-b").await.unwrap();
    let env = id();
    let plain = Spec { provider: "aws".into(), ..Default::default() };
    let inst = p.ensure_running(&env, &placement(OnExpiry::Stop), &plain).await.unwrap();
    let behaviour = attribute(&p, &inst.provider_ref, InstanceAttributeName::InstanceInitiatedShutdownBehavior).await;
    assert_eq!(behaviour.instance_initiated_shutdown_behavior().and_then(|v| v.value()), Some("stop"));
    let i = &instances_of(&p, &env).await[0];
    assert_eq!(i.instance_type().map(|t| t.as_str()), Some("t2.nano"), "instance-manager's default");
    let image = p.client().describe_images().image_ids(i.image_id().unwrap()).send().await.unwrap();
    let name = image.images()[0].name().unwrap_or_default().to_owned();
    assert!(name.starts_with("amzn2-ami-hvm-") && name.ends_with("-x86_64-gp2"), "{name}");
    // Only the backstop: no user data of the user's own.
    let data = user_data(&p, &inst.provider_ref).await;
    assert!(data.contains("bootcmd") && !data.contains("x-shellscript"));
}

#[tokio::test]
async fn ensure_running_is_idempotent_and_survives_a_lost_answer() {
    let moto = moto().await;
    let p = moto.provider("ctl-c").await.unwrap();
    let env = id();
    let first = p.ensure_running(&env, &placement(OnExpiry::Stop), &spec()).await.unwrap();
    let again = p.ensure_running(&env, &placement(OnExpiry::Stop), &spec()).await.unwrap();
    assert_eq!(first.provider_ref, again.provider_ref);
    assert_eq!(instances_of(&p, &env).await.len(), 1);

    // A lost answer: the instance was made (tagged, as the provider makes it), the caller
    // never heard. The next ensure_running finds it rather than making a second one.
    let lost = id();
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(Tag::builder().key(TAG_ENVIRONMENT).value(&lost).build())
        .tags(Tag::builder().key(TAG_CONTROLLER).value("ctl-c").build())
        .build();
    let image = instances_of(&p, &env).await[0].image_id().unwrap().to_owned();
    let made = p
        .client()
        .run_instances()
        .image_id(image)
        .min_count(1)
        .max_count(1)
        .client_token(lapse_providers::aws::client_token("ctl-c", &lost, 0))
        .tag_specifications(tags)
        .send()
        .await
        .unwrap();
    let made_id = made.instances()[0].instance_id().unwrap().to_owned();
    let found = p.ensure_running(&lost, &placement(OnExpiry::Stop), &spec()).await.unwrap();
    assert_eq!(found.provider_ref, made_id);
    assert_eq!(instances_of(&p, &lost).await.len(), 1);
}

#[tokio::test]
async fn stop_then_start_rearms_the_backstop_then_delete_terminates() {
    let moto = moto().await;
    let p = moto.provider("ctl-d").await.unwrap();
    let env = id();
    let inst = p.ensure_running(&env, &placement(OnExpiry::Stop), &spec()).await.unwrap();
    p.stop(&env, Duration::from_secs(1)).await.unwrap();
    let stopped = p.inspect(&env).await.unwrap().expect("a stopped instance is still there");
    assert!(matches!(stopped.status, InstanceStatus::Stopped | InstanceStatus::Stopping));
    assert_eq!(stopped.provider_ref, inst.provider_ref, "stop keeps the instance and its disk");

    // Extend: a later deadline, and the stopped instance runs again with it.
    let later = Placement { expires_at: Some(1_900_000_600_000), ..placement(OnExpiry::Stop) };
    let mut started = None;
    for _ in 0..50 {
        match p.ensure_running(&env, &later, &spec()).await {
            Ok(i) => {
                started = Some(i);
                break;
            }
            // moto may still report `stopping`.
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let started = started.expect("the instance started again");
    assert_eq!(started.provider_ref, inst.provider_ref);
    assert!(matches!(started.status, InstanceStatus::Running | InstanceStatus::Pending));
    assert!(user_data(&p, &inst.provider_ref).await.contains("echo 1900000600 >"), "the new deadline is armed");

    p.delete(&env, Duration::from_secs(1)).await.unwrap();
    assert_eq!(p.inspect(&env).await.unwrap(), None, "terminated is gone");
    assert!(p.list().await.unwrap().iter().all(|i| i.environment_id != env));
    p.delete(&env, Duration::from_secs(1)).await.unwrap();
    p.stop(&env, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn list_filters_by_controller_and_marks_kept_instances() {
    let moto = moto().await;
    let p = moto.provider("ctl-e").await.unwrap();
    let other = moto.provider("ctl-other").await.unwrap();
    let (a, b, c) = (id(), id(), id());
    let plain = Spec { provider: "aws".into(), ..Default::default() };
    let ia = p.ensure_running(&a, &Placement::default(), &plain).await.unwrap();
    let ib = p.ensure_running(&b, &Placement::default(), &plain).await.unwrap();
    other.ensure_running(&c, &Placement::default(), &plain).await.unwrap();
    let keep = Tag::builder().key(TAG_KEEP).value("true").build();
    p.client().create_tags().resources(&ib.provider_ref).tags(keep).send().await.unwrap();
    let mut listed: Vec<(String, bool)> =
        p.list().await.unwrap().into_iter().map(|i| (i.provider_ref, i.keep)).collect();
    listed.sort();
    let mut expected = vec![(ia.provider_ref, false), (ib.provider_ref, true)];
    expected.sort();
    assert_eq!(listed, expected, "the other controller's instance is not listed; the kept one is marked");
    assert!(p.inspect(&b).await.unwrap().is_some_and(|i| i.keep), "a kept instance is inspected, marked");
}

#[tokio::test]
async fn refusals_name_the_field_and_leave_nothing() {
    let moto = moto().await;
    let p = moto.provider("ctl-f").await.unwrap();
    let with = |f: fn(&mut Spec)| {
        let mut s = spec();
        f(&mut s);
        p.validate(&s).map_err(|e| e.field)
    };
    assert_eq!(with(|_| {}), Ok(()));
    assert_eq!(
        with(|s| s.cloud.as_mut().unwrap().instance_type = Some("huge".into())),
        Err("spec.cloud.instance_type".into())
    );
    assert_eq!(with(|s| s.cloud.as_mut().unwrap().zone = Some("mars".into())), Err("spec.cloud.zone".into()));
    assert_eq!(
        with(|s| s.cloud.as_mut().unwrap().ssh_public_keys = vec!["not a key".into()]),
        Err("spec.cloud.ssh_public_keys".into())
    );
    assert_eq!(with(|s| s.kernel = Some("vmlinux".into())), Err("spec.kernel".into()));
    assert_eq!(with(|s| s.rootfs = Some("root.img".into())), Err("spec.rootfs".into()));
    assert_eq!(with(|s| s.image = Some("busybox".into())), Err("spec.image".into()));
    assert_eq!(with(|s| s.cmd = vec!["sh".into()]), Err("spec.cmd".into()));
    assert_eq!(
        lapse_providers::validate_spec(&Spec { image: Some("nope".into()), ..spec() }).unwrap_err().field,
        "spec.image"
    );

    // An AMI that does not exist: permanent, naming the image, nothing made, no key left.
    let env = id();
    let missing = Spec { image: Some("ami-0123456789abcdef0".into()), ..spec() };
    let err = p.ensure_running(&env, &Placement::default(), &missing).await.unwrap_err();
    assert!(matches!(err, ProviderError::Permanent { .. }), "{err:?}");
    assert!(err.to_string().contains("spec.image"), "{err}");
    assert!(!err.to_string().contains(SECRET));
    assert!(instances_of(&p, &env).await.is_empty());
    let keys = p.client().describe_key_pairs().send().await.unwrap();
    assert!(keys.key_pairs().is_empty(), "no key pair is imported for a create refused before RunInstances");

    // EC2 refuses the create itself (a security group it does not know): permanent, with
    // EC2's message, and the key pair imported for it is removed again.
    let bad_type = Spec {
        cloud: Some(CloudSpec { security_group: Some("sg-0000000000000dead".into()), ..spec().cloud.unwrap() }),
        ..spec()
    };
    let err = p.ensure_running(&env, &Placement::default(), &bad_type).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(!err.to_string().contains(SECRET));
    assert!(instances_of(&p, &env).await.is_empty());
    let keys = p.client().describe_key_pairs().send().await.unwrap();
    assert!(keys.key_pairs().is_empty(), "the half-made key pair is removed: {keys:?}");
}

#[tokio::test]
async fn health_answers_and_missing_credentials_make_it_unavailable() {
    let moto = moto().await;
    let p = moto.provider("ctl-g").await.unwrap();
    let health = p.health().await.unwrap();
    assert!(health.contains("us-east-1"), "{health}");
    assert!(!health.contains(SECRET));

    let no_credentials = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto.endpoint())
        .no_credentials();
    let err = AwsProvider::from_loader(no_credentials, "ctl-g").await.unwrap_err();
    assert!(matches!(err, ProviderError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("credentials"), "{err}");
}

#[tokio::test]
async fn orphans_are_removed_in_a_batch_and_one_gone_instance_stops_none() {
    let moto = moto().await;
    let p = moto.provider("ctl-batch").await.unwrap();
    let other = moto.provider("ctl-batch-other").await.unwrap();
    let plain = Spec { provider: "aws".into(), ..Default::default() };
    let ids: Vec<String> = (0..5).map(|_| id()).collect();
    for env in &ids {
        p.ensure_running(env, &Placement::default(), &plain).await.unwrap();
    }
    // Another controller's instance under one of the same environment ids is never touched.
    other.ensure_running(&ids[0], &Placement::default(), &plain).await.unwrap();
    // One is already gone (terminated behind the sweep's back); one id has nothing at all.
    let gone = env_instance(&p, &ids[4]).await;
    p.client().terminate_instances().instance_ids(&gone).send().await.unwrap();
    let mut asked = ids.clone();
    asked.push(id());
    let before = terminate_calls(&p);

    let results = p.remove_orphans(&asked, Duration::ZERO).await;
    assert_eq!(results.len(), asked.len());
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(terminate_calls(&p) - before, 1, "one TerminateInstances for the whole batch");
    assert!(p.list().await.unwrap().is_empty(), "every orphan of this controller is terminated");
    assert_eq!(other.list().await.unwrap().len(), 1, "the other controller's instance runs on");
}

fn terminate_calls(p: &AwsProvider) -> u64 {
    p.call_times().iter().filter(|c| c.op == "TerminateInstances").map(|c| c.count).sum()
}

/// A create begun before the reconciler's intent is durable reads at once, waits for the
/// intent before it makes anything, and makes nothing at all (no instance, no key pair) when
/// the intent was not written.
#[tokio::test]
async fn a_create_waits_for_its_intent_and_makes_nothing_when_it_is_refused() {
    use lapse_providers::Intent;
    let moto = moto().await;
    let p = moto.provider("ctl-i").await.unwrap();
    let keys_before = p.client().describe_key_pairs().send().await.unwrap().key_pairs().len();
    let (place, spec) = (placement(OnExpiry::Stop), spec());

    let refused = id();
    let (writer, intent) = Intent::pending();
    let call = p.ensure_running_after(&refused, &place, &spec, intent);
    let refuse = async {
        // The lookups are under way before the answer comes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.done(false);
    };
    let (answer, ()) = tokio::join!(call, refuse);
    assert!(answer.is_err(), "a refused intent ends the create: {answer:?}");
    assert!(instances_of(&p, &refused).await.is_empty(), "no instance for a refused intent");
    let keys_after = p.client().describe_key_pairs().send().await.unwrap().key_pairs().len();
    assert_eq!(keys_after, keys_before, "no key pair imported for a refused intent");

    let written = id();
    let (writer, intent) = Intent::pending();
    let call = p.ensure_running_after(&written, &place, &spec, intent);
    let write = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(instances_of(&p, &written).await.is_empty(), "nothing is made before the intent is written");
        writer.done(true);
    };
    let (answer, ()) = tokio::join!(call, write);
    let instance = answer.expect("a written intent lets the create go on");
    assert_eq!(instances_of(&p, &written).await.len(), 1);
    assert_eq!(instance.status, lapse_providers::InstanceStatus::Running);
}
