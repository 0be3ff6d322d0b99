//! What the procedures mean, over [`App`] (and so over [`crate::admission`]): the seed's
//! `UserVmService` (`src/lib/vm/user-vm-service.ts`) with Lapse's store as its `user_vms`.

use std::collections::BTreeMap;

use lapse_core::model::{DesiredState, Environment, Lifecycle, ObservedState, OnExpiry, Resources};
use lapse_core::wire::{CreateEnvironment, DurationInput, ExecRequest};
use lapse_store::{ListFilter, NewEvent};

use super::wire::{Asked, CodeResult, LABEL_DISK_ENFORCED, LABEL_DISK_GB, LABEL_VM, ProvisionInput};
use crate::admission;
use crate::app::{App, AppError};
use crate::auth::Caller;

/// The seed's messages (`UserVmService.executeCode`).
pub const STILL_PROVISIONING: &str = "VM is still provisioning, please wait...";
pub const STARTING: &str = "VM is starting, please try again in a few seconds...";

/// The caller's VM for `user`: the one environment of the caller's tenant owned by `user`
/// and carrying [`LABEL_VM`], not being deleted.
pub async fn find(app: &App, caller: &Caller, user: &str) -> Result<Option<Environment>, AppError> {
    lapse_core::validate::owner(user)?;
    let filter = ListFilter {
        tenant: Some(caller.tenant().to_owned()),
        owner: Some(user.to_owned()),
        labels: vec![(LABEL_VM.to_owned(), "personal".to_owned())],
        ..Default::default()
    };
    let envs = app.list(filter, caller).await?;
    Ok(envs.into_iter().find(|e| e.desired != DesiredState::Deleted && e.observed != ObservedState::Deleted))
}

/// `getOrCreateUserVm`: the existing VM whatever the size asked (`created` false), else a
/// new one (`true`). Serialized with every other get-or-create and `job_id` upsert, so two
/// concurrent calls for one user make one VM.
pub async fn get_or_create(
    app: &App,
    caller: &Caller,
    user: &str,
    input: Option<ProvisionInput>,
) -> Result<(Environment, bool), AppError> {
    lapse_core::validate::owner(user)?;
    let _one_at_a_time = app.jobs_lock.lock().await;
    if let Some(existing) = find(app, caller, user).await? {
        return Ok((existing, false));
    }
    let who = admission::principal(&app.cx, caller).await?;
    let asked = match &input {
        // The seed: an input gets zod's defaults; no input gets the tier's resources.
        Some(i) => i.asked()?,
        None => tier_resources(who.quota.as_ref()),
    };
    let mut spec = input.and_then(|i| i.spec).unwrap_or_else(super::default_spec);
    spec.resources =
        Some(Resources { vcpu: Some(asked.vcpus), mem_mb: Some(asked.memory_mb), disk_gb: Some(asked.disk_gb) });
    let mut labels = BTreeMap::from([(LABEL_VM.to_owned(), "personal".to_owned())]);
    // A provider that cannot limit disk gets none, and the size is recorded as not enforced
    // (the seed never enforced it); a request over the tenant's disk limit is still refused.
    let unenforced = match app.cx.providers.get(&spec.provider) {
        Some(p) => p.validate(&spec).err().filter(|e| e.field == "spec.resources.disk_gb"),
        None => None,
    };
    if let Some(why) = &unenforced {
        if let Some(max) = who.quota.as_ref().and_then(|q| q.disk_gb)
            && asked.disk_gb > max
        {
            return Err(AppError::Quota(format!(
                "quota: disk_gb at most {max} per environment; this request asks for {}",
                asked.disk_gb
            )));
        }
        tracing::debug!(reason = %why.message, "github.gg VM: disk not enforced");
        if let Some(r) = spec.resources.as_mut() {
            r.disk_gb = None;
        }
    }
    labels.insert(LABEL_DISK_GB.to_owned(), asked.disk_gb.to_string());
    labels.insert(LABEL_DISK_ENFORCED.to_owned(), unenforced.is_none().to_string());
    let ttl = who.quota.as_ref().and_then(|q| q.max_ttl).map(|t| DurationInput::Seconds(t.as_secs() as i64));
    let request = CreateEnvironment {
        name: Some("personal-vm".into()),
        owner: user.to_owned(),
        labels,
        spec,
        ttl,
        on_expiry: OnExpiry::Stop,
        // Kept running until stopped or destroyed, as the seed's VM (whose 168 h lease
        // nothing enforced); a tenant's longest TTL still bounds it.
        lifecycle: Lifecycle::Service,
        max_retries: None,
        params: None,
        idle_timeout: None,
        on_idle: Default::default(),
        warn_before: None,
    };
    let created = app.create(request, caller).await?;
    if let Some(why) = unenforced {
        let message = format!("diskGb {} recorded, not enforced: {}", asked.disk_gb, why.message);
        app.cx
            .store
            .append_event(NewEvent::new(&created.env.id, &caller.actor(), "disk_not_enforced", "ok", message))
            .await?;
    }
    Ok((created.env, true))
}

/// What a VM gets without an input: the tier's limits (github.gg's tiers are the VM sizes),
/// the `free` tier's for the operator.
fn tier_resources(quota: Option<&lapse_core::quota::Quota>) -> Asked {
    let free = lapse_core::quota::Quota::tier("free").unwrap_or_default();
    let q = quota.unwrap_or(&free);
    Asked {
        vcpus: q.vcpu.unwrap_or(super::wire::VCPUS.2),
        memory_mb: q.mem_mb.unwrap_or(super::wire::MEMORY_MB_DEFAULT),
        disk_gb: q.disk_gb.unwrap_or(super::wire::DISK_GB.0),
    }
}

/// `executeCode`: one shell string in the user's VM, with the seed's answers for a VM that
/// cannot run it (and a start for a stopped one).
pub async fn execute(app: &App, caller: &Caller, env: &Environment, code: &str) -> Result<CodeResult, AppError> {
    match env.observed {
        ObservedState::Pending | ObservedState::Provisioning => return Ok(CodeResult::refused(STILL_PROVISIONING)),
        ObservedState::Stopped => {
            app.start(&env.id, caller).await?;
            return Ok(CodeResult::refused(STARTING));
        }
        ObservedState::Running => {}
        _ => {
            let status = super::wire::status(env);
            return Ok(CodeResult::refused(format!("VM is {status}, cannot execute commands")));
        }
    }
    let request = ExecRequest { cmd: vec!["/bin/sh".into(), "-c".into(), code.to_owned()], timeout: None };
    let result = app.exec(&env.id, request, caller).await?;
    Ok(match result.exit_code {
        Some(exit_code) => CodeResult { stdout: result.stdout, stderr: result.stderr, exit_code },
        None => {
            CodeResult { stdout: result.stdout, stderr: format!("{}command timed out", result.stderr), exit_code: 1 }
        }
    })
}
