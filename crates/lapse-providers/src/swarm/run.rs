//! `exec` through the running task's container (on this node), and `logs` through the
//! service logs API; both read into a [`CappedOutput`].

use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::CreateExecOptions;
use bollard::query_parameters::LogsOptionsBuilder;
use futures::StreamExt;
use lapse_core::wire::{ExecResult, LogsView};

use super::{NAME, SwarmProvider, classify, status_of};
use crate::{CappedOutput, InstanceStatus, MAX_OUTPUT_BYTES, ProviderError, last_lines};

impl SwarmProvider {
    pub(super) async fn exec_in(
        &self,
        environment_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, ProviderError> {
        let not_found = || ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() };
        let docker = self.client().await?;
        let service = self.find(environment_id).await?.ok_or_else(not_found)?;
        let seen = self.observe(&service).await?;
        let container = match (seen.status, seen.container_id) {
            (InstanceStatus::Running, Some(c)) if !c.is_empty() => c,
            _ => return Err(not_found()),
        };
        let config = CreateExecOptions {
            cmd: Some(cmd.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = docker.create_exec(&container, config).await.map_err(|e| match status_of(&e) {
            // The task runs on another node: its container is not this engine's.
            Some(404) => ProviderError::Failed {
                provider: NAME,
                op: "exec",
                message: format!("the task's container {container} is not on this node: {e}"),
            },
            Some(409) => not_found(),
            _ => classify("exec", e),
        })?;
        crate::engine::run_exec(docker, NAME, &exec.id, timeout).await
    }

    /// The running task's container on this engine (`NotFound` when none runs).
    pub(super) async fn task_container(&self, environment_id: &str) -> Result<String, ProviderError> {
        let not_found = || ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() };
        let service = self.find(environment_id).await?.ok_or_else(not_found)?;
        let seen = self.observe(&service).await?;
        match (seen.status, seen.container_id) {
            (InstanceStatus::Running, Some(c)) if !c.is_empty() => Ok(c),
            _ => Err(not_found()),
        }
    }

    pub(super) async fn logs_of(&self, environment_id: &str, tail_lines: usize) -> Result<LogsView, ProviderError> {
        let not_found = || ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() };
        let docker = self.client().await?;
        let service = self.find(environment_id).await?.ok_or_else(not_found)?;
        let id = service.id.ok_or_else(not_found)?;
        let options = LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&tail_lines.to_string()).build();
        let mut stream = docker.service_logs(&id, Some(options));
        let mut stdout = CappedOutput::new(MAX_OUTPUT_BYTES);
        let mut stderr = CappedOutput::new(MAX_OUTPUT_BYTES);
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => stdout.push(&message),
                Ok(LogOutput::StdErr { message }) => stderr.push(&message),
                Ok(LogOutput::StdIn { .. }) => {}
                Err(e) if status_of(&e) == Some(404) => return Err(not_found()),
                Err(e) => return Err(classify("logs", e)),
            }
        }
        let text = |b: CappedOutput| last_lines(&b.into_text(), tail_lines);
        Ok(LogsView { stdout: text(stdout), stderr: text(stderr) })
    }
}
