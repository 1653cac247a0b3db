//! A task's event stream: what the `task_events` table holds after a given id, then
//! each new event as it is committed, woken by the [`EventBus`] and re-read every
//! resync interval in case a notice was lost (see [`crate::events`]).

use std::collections::VecDeque;
use std::time::Duration;

use futures::Stream;
use operator_domain::{TaskEvent, TaskId, TaskState};
use tokio::sync::broadcast;

use crate::db::{RepoError, TaskRepository};
use crate::events::{EventBus, EventNotice};

/// Whether this event ends the task's stream.
pub fn is_terminal(event: &TaskEvent) -> bool {
    event.kind == "state"
        && event
            .data
            .get("state")
            .and_then(|state| state.as_str())
            .and_then(|state| TaskState::parse(state).ok())
            .is_some_and(TaskState::is_terminal)
}

struct Reader {
    repo: TaskRepository,
    notices: Option<broadcast::Receiver<EventNotice>>,
    task_id: TaskId,
    last_id: Option<i64>,
    pending: VecDeque<TaskEvent>,
    resync: Duration,
    first_read: bool,
    done: bool,
}

impl Reader {
    async fn next_event(&mut self) -> Option<Result<TaskEvent, RepoError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.last_id = Some(event.id);
                if is_terminal(&event) {
                    self.done = true;
                    self.pending.clear();
                }
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if !self.first_read {
                self.wait_for_news().await;
            }
            self.first_read = false;
            match self.repo.events(self.task_id, self.last_id).await {
                Ok(events) => self.pending.extend(events),
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
    }

    /// Waits for a notice about this task, or for the resync interval.
    async fn wait_for_news(&mut self) {
        let deadline = tokio::time::sleep(self.resync);
        tokio::pin!(deadline);
        let Some(notices) = self.notices.as_mut() else {
            deadline.await;
            return;
        };
        loop {
            tokio::select! {
                () = &mut deadline => return,
                notice = notices.recv() => match notice {
                    Ok(notice) if notice.task_id == self.task_id => return,
                    Ok(_) => continue,
                    // Fell behind: some notice may have been ours; read the table.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        self.notices = None;
                        deadline.await;
                        return;
                    }
                },
            }
        }
    }
}

/// A task's events after `after` (all of them when `None`), oldest first: what is
/// stored, then each new one as it is committed; the stream ends after the terminal
/// state event. The caller has checked that the task belongs to its tenant.
pub fn task_events(
    repo: TaskRepository,
    task_id: TaskId,
    after: Option<i64>,
    resync: Duration,
) -> impl Stream<Item = Result<TaskEvent, RepoError>> + Send + 'static {
    // Subscribe before the first read, so nothing committed in between is missed.
    let notices = repo.event_bus().map(EventBus::subscribe);
    let reader = Reader {
        repo,
        notices,
        task_id,
        last_id: after,
        pending: VecDeque::new(),
        resync,
        first_read: true,
        done: false,
    };
    futures::stream::unfold(reader, |mut reader| async move {
        let next = reader.next_event().await?;
        Some((next, reader))
    })
}
