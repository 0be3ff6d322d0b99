//! What the `docker` and `swarm` providers share of the Docker Engine API: sorting its
//! errors, and running an exec to its end with capped output and a deadline.

use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::StartExecResults;
use futures::StreamExt;
use lapse_core::wire::ExecResult;

use crate::{CappedOutput, MAX_OUTPUT_BYTES, ProviderError};

/// The label naming a container's (or service's) environment.
pub const LABEL_ENVIRONMENT: &str = "lapse.environment";
/// The label naming the control plane that made it.
pub const LABEL_CONTROLLER: &str = "lapse.controller";

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

#[cfg(feature = "swarm")]
/// Follows the engine's container events under `controller_id`'s label and sends the
/// environment of each container that started or died on `moved` (a restart the engine made
/// on its own gives the new container another address; a dead one's address is free for the
/// next container). Returns when the stream ends or fails (an error: the caller
/// reconnects), or `Ok` when `moved` is closed.
pub(crate) async fn watch_moves(
    docker: &Docker,
    provider: &'static str,
    controller_id: &str,
    moved: tokio::sync::mpsc::Sender<crate::Move>,
) -> Result<(), ProviderError> {
    use std::collections::HashMap;

    use bollard::query_parameters::EventsOptionsBuilder;

    let controller = format!("{}={controller_id}", LABEL_CONTROLLER);
    let filters: HashMap<&str, Vec<&str>> = HashMap::from([
        ("type", vec!["container"]),
        ("event", vec!["start", "die"]),
        ("label", vec![controller.as_str()]),
    ]);
    let mut events = docker.events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| classify(provider, "events", e))?;
        let attributes = event.actor.and_then(|a| a.attributes).unwrap_or_default();
        // The filter asked for our label; a container without it (an engine that ignores the
        // filter) is not ours and is skipped.
        if attributes.get(LABEL_CONTROLLER).map(String::as_str) != Some(controller_id) {
            continue;
        }
        let Some(id) = attributes.get(LABEL_ENVIRONMENT) else { continue };
        let gone = event.action.as_deref() == Some("die");
        if moved.send(crate::Move { environment_id: id.clone(), gone }).await.is_err() {
            return Ok(());
        }
    }
    Err(ProviderError::Unavailable { provider, message: "the engine's event stream ended".into() })
}
