//! What the `docker` and `swarm` providers share of the Docker Engine API: sorting its
//! errors, and running an exec to its end with capped output and a deadline.

use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::StartExecResults;
use futures::StreamExt;
use lapse_core::wire::ExecResult;

use crate::{CappedOutput, MAX_OUTPUT_BYTES, ProviderError};

/// The HTTP status of an engine's refusal, if it was one.
pub(crate) fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// An engine's answer is a failure of the step (retried); no answer at all means the engine
/// is unavailable.
pub(crate) fn classify(provider: &'static str, op: &'static str, e: bollard::errors::Error) -> ProviderError {
    match &e {
        bollard::errors::Error::DockerResponseServerError { status_code, message } => {
            ProviderError::Failed { provider, op, message: format!("{status_code}: {message}") }
        }
        _ => ProviderError::Unavailable { provider, message: format!("{op}: {e}") },
    }
}

/// Starts the created exec `exec_id`, reads both streams into capped buffers until it ends or
/// `timeout` passes (then `timed_out`, what was read kept), and answers its exit code.
pub(crate) async fn run_exec(
    docker: &Docker,
    provider: &'static str,
    exec_id: &str,
    timeout: Duration,
) -> Result<ExecResult, ProviderError> {
    let mut stdout = CappedOutput::new(MAX_OUTPUT_BYTES);
    let mut stderr = CappedOutput::new(MAX_OUTPUT_BYTES);
    let collect = async {
        if let StartExecResults::Attached { mut output, .. } =
            docker.start_exec(exec_id, None).await.map_err(|e| classify(provider, "exec", e))?
        {
            while let Some(chunk) = output.next().await {
                match chunk.map_err(|e| classify(provider, "exec", e))? {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => stdout.push(&message),
                    LogOutput::StdErr { message } => stderr.push(&message),
                    LogOutput::StdIn { .. } => {}
                }
            }
        }
        Ok::<_, ProviderError>(())
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok(result) => result?,
        Err(_) => {
            return Ok(ExecResult {
                exit_code: None,
                stdout: stdout.into_text(),
                stderr: stderr.into_text(),
                timed_out: true,
            });
        }
    }
    let inspect = docker.inspect_exec(exec_id).await.map_err(|e| classify(provider, "exec", e))?;
    Ok(ExecResult {
        exit_code: inspect.exit_code,
        stdout: stdout.into_text(),
        stderr: stderr.into_text(),
        timed_out: false,
    })
}
