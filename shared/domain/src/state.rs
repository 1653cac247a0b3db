//! The task state machine. Every state change goes through [`TaskState::transition`],
//! and the repository turns the same table into guarded SQL (`WHERE state IN (…)`), so
//! a transition the machine forbids can neither be coded nor raced into the database.

use serde::{Deserialize, Serialize};

/// Where a task is in its life.
///
/// ```text
/// scheduled ─▶ queued ─▶ running ─▶ succeeded | failed | cancelled | timed_out | dead
///     │           │  ▲        │
///     └─▶ cancelled  └────────┘ (retry after a retryable failure, or a lease handed back)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Accepted, waiting for its `run_at` time.
    Scheduled,
    /// Waiting for a worker.
    Queued,
    /// A worker holds its lease.
    Running,
    Succeeded,
    /// Failed with a final error (bad input, refused address): not retried.
    Failed,
    Cancelled,
    /// Ran past its timeout.
    TimedOut,
    /// Failed with retryable errors until it ran out of attempts.
    Dead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a task cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub from: TaskState,
    pub to: TaskState,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task state {0:?}")]
pub struct UnknownState(String);

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        Self::Scheduled,
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::TimedOut,
        Self::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Result<Self, UnknownState> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| UnknownState(text.to_owned()))
    }

    /// A terminal state is written once and never left.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::TimedOut | Self::Dead
        )
    }

    pub fn can_transition_to(self, next: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, next),
            (Scheduled, Queued)
                | (Scheduled, Cancelled)
                | (Queued, Running)
                | (Queued, Cancelled)
                | (Running, Queued)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Cancelled)
                | (Running, TimedOut)
                | (Running, Dead)
        )
    }

    pub fn transition(self, next: TaskState) -> Result<TaskState, InvalidTransition> {
        if self.can_transition_to(next) {
            Ok(next)
        } else {
            Err(InvalidTransition {
                from: self,
                to: next,
            })
        }
    }

    /// Whether a client may re-drive the task (`POST /v1/tasks/{id}/retry`): it ended
    /// without success for a reason running it again might fix. Re-driving reopens a
    /// terminal task on purpose, so it is not a transition of the run's life cycle.
    pub fn is_redrivable(self) -> bool {
        matches!(self, Self::Failed | Self::TimedOut | Self::Dead)
    }

    /// The states from which `next` may be entered: the `WHERE state IN (…)` of a guarded update.
    pub fn predecessors(next: TaskState) -> Vec<TaskState> {
        Self::ALL
            .into_iter()
            .filter(|state| state.can_transition_to(next))
            .collect()
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in TaskState::ALL
            .into_iter()
            .filter(|state| state.is_terminal())
        {
            for to in TaskState::ALL {
                assert!(
                    from.transition(to).is_err(),
                    "{from} -> {to} must be refused"
                );
            }
        }
    }

    #[test]
    fn the_happy_path_is_allowed() {
        let state = TaskState::Queued;
        let state = state
            .transition(TaskState::Running)
            .expect("queued -> running");
        assert_eq!(
            state.transition(TaskState::Succeeded),
            Ok(TaskState::Succeeded)
        );
    }

    #[test]
    fn a_running_task_cannot_skip_back_to_scheduled() {
        assert_eq!(
            TaskState::Running.transition(TaskState::Scheduled),
            Err(InvalidTransition {
                from: TaskState::Running,
                to: TaskState::Scheduled
            })
        );
    }

    #[test]
    fn predecessors_follow_the_table() {
        assert_eq!(
            TaskState::predecessors(TaskState::Cancelled),
            vec![TaskState::Scheduled, TaskState::Queued, TaskState::Running]
        );
        assert_eq!(
            TaskState::predecessors(TaskState::Running),
            vec![TaskState::Queued]
        );
    }

    #[test]
    fn wire_names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(TaskState::parse(state.as_str()), Ok(state));
        }
        assert!(TaskState::parse("paused").is_err());
    }
}
