//! The reconciler's intent, for a provider call that may begin before the intent is durable.
//!
//! Contract: the reconciler records that a provision is under way (its intent) before
//! anything is created, so that a crash at any point is followed by the same step again. A
//! provider handed an [`Intent`] ([`crate::Provider::ensure_running_after`]) may *read* the
//! backend at once (look for an existing resource, resolve an image or a subnet) while the
//! store writes the intent, but must call [`Intent::wait`] before its first call that creates
//! or changes anything (locally or in the backend); when `wait` fails, the intent was not
//! written (the environment changed meanwhile) and the call must return that error at once,
//! having changed nothing.

use tokio::sync::oneshot;

use crate::ProviderError;

/// The intent of one provider step, durable or on its way to the store.
#[derive(Debug)]
pub struct Intent {
    pending: Option<oneshot::Receiver<bool>>,
    written: bool,
}

/// The reconciler's half: says whether the intent was written.
#[derive(Debug)]
pub struct IntentWriter(oneshot::Sender<bool>);

impl Intent {
    /// An intent already durable: [`Intent::wait`] succeeds at once.
    pub fn written() -> Intent {
        Intent { pending: None, written: true }
    }

    /// An intent the store is writing now; its writer says how that ended.
    pub fn pending() -> (IntentWriter, Intent) {
        let (tx, rx) = oneshot::channel();
        (IntentWriter(tx), Intent { pending: Some(rx), written: false })
    }

    /// Waits until the intent is durable; an error (changing nothing) if it was not written.
    pub async fn wait(&mut self) -> Result<(), ProviderError> {
        if let Some(rx) = self.pending.take() {
            // A writer dropped without an answer wrote nothing that it said.
            self.written = rx.await.unwrap_or(false);
        }
        if self.written {
            Ok(())
        } else {
            Err(ProviderError::Failed {
                provider: "reconciler",
                op: "record the step",
                message: "the environment changed before the step was recorded; nothing was done".into(),
            })
        }
    }
}

impl IntentWriter {
    /// Says whether the intent was written.
    pub fn done(self, written: bool) {
        let _ = self.0.send(written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_follows_what_the_writer_says() {
        assert!(Intent::written().wait().await.is_ok());
        let (w, mut i) = Intent::pending();
        w.done(true);
        assert!(i.wait().await.is_ok());
        assert!(i.wait().await.is_ok(), "a second wait answers the same");
        let (w, mut i) = Intent::pending();
        w.done(false);
        assert!(i.wait().await.is_err());
        let (w, mut i) = Intent::pending();
        drop(w);
        assert!(i.wait().await.is_err(), "a writer gone without an answer wrote nothing");
    }
}
