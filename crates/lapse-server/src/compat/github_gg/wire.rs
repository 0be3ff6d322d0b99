//! The github.gg surface's JSON: the seed's field names (camelCase, as its tRPC procedures
//! answer), parsed by hand where the seed's zod schemas are looser than serde's defaults.

use lapse_core::model::{Environment, ObservedState, Spec};
use lapse_core::validate::{FieldError, MAX_DISK_GB, MAX_MEM_MB};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The seed's bounds (`src/lib/trpc/routes/vm.ts`: `vcpus 1–16 =2, memoryMb ≥1024 =4096,
/// diskGb 10–500 =50`).
pub const VCPUS: (f64, f64, f64) = (1.0, 16.0, 2.0);
pub const MEMORY_MB_MIN: u64 = 1024;
pub const MEMORY_MB_DEFAULT: u64 = 4096;
pub const DISK_GB: (u64, u64, u64) = (10, 500, 50);

/// `vm.provisionMyVm`'s input; the whole body is optional, as in the seed. Unknown keys are
/// ignored (zod's `z.object` strips them).
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionInput {
    /// 1 to 16 (default 2).
    #[serde(default)]
    pub vcpus: Option<f64>,
    /// At least 1024 (default 4096).
    #[serde(default)]
    pub memory_mb: Option<f64>,
    /// 10 to 500 (default 50).
    #[serde(default)]
    pub disk_gb: Option<f64>,
    /// Lapse's: what runs (provider, image, cmd, ports, env); default
    /// [`super::default_spec`] (the seed's `rastasheep/ubuntu-sshd` with SSH on 22).
    #[serde(default)]
    pub spec: Option<Spec>,
}

/// The resources a provision asks for, checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Asked {
    pub vcpus: f64,
    pub memory_mb: u64,
    pub disk_gb: u64,
}

impl ProvisionInput {
    /// The input's resources within the seed's bounds, its defaults for what it leaves out.
    pub fn asked(&self) -> Result<Asked, FieldError> {
        let bad = |field: &str, message: String| FieldError { field: field.to_owned(), message };
        let vcpus = self.vcpus.unwrap_or(VCPUS.2);
        if !(vcpus.is_finite() && (VCPUS.0..=VCPUS.1).contains(&vcpus)) {
            return Err(bad("vcpus", format!("must be {} to {}", VCPUS.0, VCPUS.1)));
        }
        let whole = |field: &str, v: f64, min: u64, max: u64| {
            if v.is_finite() && v.fract() == 0.0 && v >= min as f64 && v <= max as f64 {
                Ok(v as u64)
            } else {
                Err(bad(field, format!("must be a whole number from {min} to {max}")))
            }
        };
        let memory_mb =
            whole("memoryMb", self.memory_mb.unwrap_or(MEMORY_MB_DEFAULT as f64), MEMORY_MB_MIN, MAX_MEM_MB)?;
        let disk_gb = whole("diskGb", self.disk_gb.unwrap_or(DISK_GB.2 as f64), DISK_GB.0, DISK_GB.1.min(MAX_DISK_GB))?;
        Ok(Asked { vcpus, memory_mb, disk_gb })
    }
}

/// The seed's `UserVmDetails` (`src/lib/vm/user-vm-service.ts`), for what Lapse knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmView {
    pub id: String,
    pub user_id: String,
    /// `pending`, `provisioning`, `running`, `stopping`, `stopped`, `error`, `destroying`.
    pub status: String,
    pub vcpus: f64,
    pub memory_mb: u64,
    pub disk_gb: u64,
    /// Lapse's: whether `diskGb` is enforced (the seed never enforced it).
    pub disk_enforced: bool,
    pub ssh_port: Option<u16>,
    pub internal_ip: Option<String>,
    pub environment_id: String,
    pub created_at: String,
    pub updated_at: String,
}

/// `vm.executeCode`'s input.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ExecuteCode {
    /// One shell string, run by `/bin/sh -c`.
    pub code: String,
}

/// `vm.executeCode`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CodeResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i64,
}

impl CodeResult {
    /// The seed's answer when the command cannot run: exit code 1, the reason on stderr.
    pub fn refused(why: impl Into<String>) -> Self {
        CodeResult { stdout: String::new(), stderr: why.into(), exit_code: 1 }
    }
}

/// `{success: true}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Success {
    pub success: bool,
}

/// The seed's `user_vms.status` for an environment.
pub fn status(env: &Environment) -> &'static str {
    match env.observed {
        ObservedState::Pending => "pending",
        ObservedState::Provisioning => "provisioning",
        ObservedState::Running => "running",
        ObservedState::Stopping => "stopping",
        ObservedState::Stopped => "stopped",
        ObservedState::Failed => "error",
        ObservedState::Deleting | ObservedState::Deleted => "destroying",
    }
}

/// Labels the surface records on each VM.
pub const LABEL_VM: &str = "gh.gg/vm";
pub const LABEL_DISK_GB: &str = "gh.gg/disk-gb";
pub const LABEL_DISK_ENFORCED: &str = "gh.gg/disk-enforced";

impl VmView {
    pub fn of(env: &Environment) -> VmView {
        let resources = env.spec.resources.clone().unwrap_or_default();
        let recorded = env.labels.get(LABEL_DISK_GB).and_then(|d| d.parse().ok());
        let ssh = env.endpoints.iter().find(|e| e.container_port == 22).or(env.endpoints.first());
        VmView {
            id: env.id.clone(),
            user_id: env.owner.clone(),
            status: status(env).to_owned(),
            vcpus: resources.vcpu.unwrap_or_default(),
            memory_mb: resources.mem_mb.unwrap_or_default(),
            disk_gb: resources.disk_gb.or(recorded).unwrap_or_default(),
            disk_enforced: env.labels.get(LABEL_DISK_ENFORCED).map(String::as_str) != Some("false"),
            ssh_port: ssh.map(|e| e.port),
            internal_ip: ssh.map(|e| e.host.clone()),
            environment_id: env.id.clone(),
            created_at: lapse_core::format_millis(env.created_at),
            updated_at: lapse_core::format_millis(env.updated_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: serde_json::Value) -> Result<Asked, String> {
        let i: ProvisionInput = serde_json::from_value(v).map_err(|e| e.to_string())?;
        i.asked().map_err(|e| e.to_string())
    }

    #[test]
    fn the_seeds_bounds_and_defaults() {
        let defaults = Asked { vcpus: 2.0, memory_mb: 4096, disk_gb: 50 };
        assert_eq!(input(serde_json::json!({})), Ok(defaults));
        assert_eq!(input(serde_json::json!({"unknown": 1})), Ok(defaults), "zod strips unknown keys");
        assert_eq!(
            input(serde_json::json!({"vcpus": 16, "memoryMb": 1024, "diskGb": 500})),
            Ok(Asked { vcpus: 16.0, memory_mb: 1024, disk_gb: 500 })
        );
        for bad in [
            serde_json::json!({"vcpus": 0.5}),
            serde_json::json!({"vcpus": 17}),
            serde_json::json!({"memoryMb": 1023}),
            serde_json::json!({"memoryMb": 2048.5}),
            serde_json::json!({"diskGb": 9}),
            serde_json::json!({"diskGb": 501}),
            serde_json::json!({"vcpus": "2"}),
        ] {
            assert!(input(bad.clone()).is_err(), "{bad}");
        }
    }
}
