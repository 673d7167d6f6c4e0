//! A cancelled workflow run (the runner sends SIGINT, then SIGTERM) must still
//! put back what the deploy changed in AWS: on the first signal the ledger is
//! settled, then dropship exits as a shell reports a signal (128 + its number).
//! The agents see their connection close and put their hosts back themselves.

use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use super::aws::Aws;
use super::ledger::Ledger;

/// Settles `ledger` when a signal comes; stops watching when dropped.
pub struct OnCancel {
    handle: Handle,
}

impl OnCancel {
    /// Watches SIGINT and SIGTERM on a thread of its own.
    pub fn watch(aws: Arc<Aws>, ledger: Arc<Ledger>) -> std::io::Result<OnCancel> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        std::thread::Builder::new()
            .name("dropship-cancel".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
                    tracing::error!(
                        "cancelled ({name}): putting back what this deploy changed in AWS; hosts that had not finished put themselves back"
                    );
                    ledger.settle(&aws);
                    std::process::exit(128 + signal);
                }
            })?;
        Ok(OnCancel { handle })
    }
}

impl Drop for OnCancel {
    fn drop(&mut self) {
        self.handle.close();
    }
}
