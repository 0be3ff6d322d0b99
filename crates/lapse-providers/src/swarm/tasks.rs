//! What a service's tasks say about its environment, pure: which task is current, and its
//! state as an [`InstanceStatus`].
//!
//! - A task is *live* until it reaches a terminal state (`complete`, `shutdown`, `failed`,
//!   `rejected`, `remove`, `orphaned`).
//! - A live task that runs and is meant to run makes the environment `Running`.
//! - Scaled to zero: `Stopping` while a task is still live (shutting down), else `Stopped`.
//! - One replica, no task running: `Pending` while any task is live (`new`, `pending`,
//!   `assigned`, `accepted`, `preparing`, `ready`, `starting`, or one waiting out its restart
//!   delay), or while the orchestrator has made none yet; otherwise the newest task ended and
//!   the environment is `Stopped`, with that task's exit code (when its container ran) and
//!   its error as the reason.

use bollard::models::{Service, Task, TaskState};

use crate::InstanceStatus;

/// What the tasks say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub status: InstanceStatus,
    /// The running task's container (for endpoints and exec).
    pub container_id: Option<String>,
    pub exit_code: Option<i64>,
    pub exit_reason: Option<String>,
    /// The newest task was refused before it ran (no such image): its error.
    pub rejected: Option<String>,
}

/// The replicas the service asks for (`None` when it is not a replicated service).
pub fn replicas(service: &Service) -> Option<u64> {
    service.spec.as_ref()?.mode.as_ref()?.replicated.as_ref()?.replicas.map(|r| r.max(0) as u64)
}

/// Whether a task in `state` is done for good.
pub fn is_terminal(state: Option<TaskState>) -> bool {
    matches!(
        state,
        Some(
            TaskState::COMPLETE
                | TaskState::SHUTDOWN
                | TaskState::FAILED
                | TaskState::REJECTED
                | TaskState::REMOVE
                | TaskState::ORPHANED
        )
    )
}

fn state(task: &Task) -> Option<TaskState> {
    task.status.as_ref().and_then(|s| s.state)
}

/// The environment's state from its service and `tasks` (every task of that service, in
/// any order; tasks of other services are ignored).
pub fn observe(service: &Service, tasks: &[Task]) -> Observed {
    let ours: Vec<&Task> = tasks.iter().filter(|t| t.service_id.is_some() && t.service_id == service.id).collect();
    let live: Vec<&Task> = ours.iter().copied().filter(|t| !is_terminal(state(t))).collect();
    let nothing = Observed {
        status: InstanceStatus::Pending,
        container_id: None,
        exit_code: None,
        exit_reason: None,
        rejected: None,
    };
    if let Some(running) =
        live.iter().find(|t| state(t) == Some(TaskState::RUNNING) && t.desired_state == Some(TaskState::RUNNING))
    {
        let container_id = running.status.as_ref().and_then(|s| s.container_status.as_ref()?.container_id.clone());
        return Observed { status: InstanceStatus::Running, container_id, ..nothing };
    }
    let wanted = replicas(service).unwrap_or(1);
    if wanted == 0 {
        let status = if live.is_empty() { InstanceStatus::Stopped } else { InstanceStatus::Stopping };
        return Observed { status, ..ended(newest(&ours)) };
    }
    if !live.is_empty() {
        return nothing;
    }
    match newest(&ours) {
        None => nothing,
        Some(task) => ended(Some(task)),
    }
}

/// The task made last.
pub fn newest<'a>(tasks: &[&'a Task]) -> Option<&'a Task> {
    tasks.iter().copied().max_by(|a, b| a.created_at.cmp(&b.created_at))
}

/// `Stopped`, with what the task `last` left.
fn ended(last: Option<&Task>) -> Observed {
    let status = last.and_then(|t| t.status.as_ref());
    let container = status.and_then(|s| s.container_status.as_ref());
    let ran = container.and_then(|c| c.container_id.as_deref()).is_some_and(|c| !c.is_empty());
    let err = status.and_then(|s| s.err.clone()).filter(|e| !e.is_empty());
    let rejected = last.filter(|t| state(t) == Some(TaskState::REJECTED)).and(err.clone());
    Observed {
        status: InstanceStatus::Stopped,
        container_id: None,
        exit_code: if ran { container.and_then(|c| c.exit_code) } else { None },
        exit_reason: err,
        rejected,
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerStatus, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskStatus};

    use super::*;

    fn service(replicas: i64) -> Service {
        Service {
            id: Some("svc".into()),
            spec: Some(ServiceSpec {
                mode: Some(ServiceSpecMode {
                    replicated: Some(ServiceSpecModeReplicated { replicas: Some(replicas) }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(at: &str, desired: TaskState, now: TaskState, container: &str, exit: i64, err: &str) -> Task {
        Task {
            id: Some(format!("t{at}")),
            service_id: Some("svc".into()),
            created_at: Some(at.parse().expect("a test date")),
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(now),
                err: Some(err.into()),
                container_status: Some(ContainerStatus {
                    container_id: Some(container.into()),
                    exit_code: Some(exit),
                    pid: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    use TaskState::*;

    fn check(replicas: i64, tasks: &[Task], expect: InstanceStatus) -> Observed {
        let seen = observe(&service(replicas), tasks);
        assert_eq!(seen.status, expect, "{tasks:?}");
        seen
    }

    #[test]
    fn task_states_map_to_instance_states() {
        let at = |n: u32| format!("2026-12-01T18:00:0{n}Z");
        let running = check(1, &[task(&at(1), RUNNING, RUNNING, "c1", 0, "")], InstanceStatus::Running);
        assert_eq!(running.container_id.as_deref(), Some("c1"));
        for early in [NEW, PENDING, ASSIGNED, ACCEPTED, PREPARING, READY, STARTING] {
            check(1, &[task(&at(1), RUNNING, early, "", 0, "")], InstanceStatus::Pending);
        }
        check(1, &[], InstanceStatus::Pending);
        // Failed, then restarted (the new task waits out its delay): on its way up.
        let restarting =
            [task(&at(1), SHUTDOWN, FAILED, "c1", 3, "task: non-zero exit (3)"), task(&at(2), READY, READY, "", 0, "")];
        check(1, &restarting, InstanceStatus::Pending);
        // Ended for good: the newest task's exit code and error.
        let ended = [
            task(&at(1), SHUTDOWN, FAILED, "c1", 1, "old"),
            task(&at(2), SHUTDOWN, FAILED, "c2", 3, "task: non-zero exit (3)"),
        ];
        let seen = check(1, &ended, InstanceStatus::Stopped);
        assert_eq!((seen.exit_code, seen.exit_reason.as_deref()), (Some(3), Some("task: non-zero exit (3)")));
        assert_eq!(seen.rejected, None);
        let done = check(1, &[task(&at(1), SHUTDOWN, COMPLETE, "c1", 0, "")], InstanceStatus::Stopped);
        assert_eq!((done.exit_code, done.exit_reason), (Some(0), None));
        // Refused before it ran: no exit code, the engine's reason.
        let refused = check(1, &[task(&at(1), SHUTDOWN, REJECTED, "", 0, "No such image: x")], InstanceStatus::Stopped);
        assert_eq!((refused.exit_code, refused.rejected.as_deref()), (None, Some("No such image: x")));
        // Scaled to zero.
        check(0, &[task(&at(1), SHUTDOWN, RUNNING, "c1", 0, "")], InstanceStatus::Stopping);
        check(0, &[task(&at(1), SHUTDOWN, SHUTDOWN, "c1", 137, "")], InstanceStatus::Stopped);
        check(0, &[], InstanceStatus::Stopped);
        // Another service's tasks do not count.
        let mut foreign = task(&at(1), RUNNING, RUNNING, "c9", 0, "");
        foreign.service_id = Some("other".into());
        check(1, &[foreign], InstanceStatus::Pending);
    }
}
