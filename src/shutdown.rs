//! Shutdown as a field, not a global: each core holds one [`Shutdown`] and
//! every task that must react to it holds an `Rc` to it.
//!
//! SIGTERM/SIGINT reaches core 0 (a blocking signal wait on glommio's
//! blocking pool), which triggers its own `Shutdown` and sends
//! `ShardMsg::Shutdown` to the others. Then, on every core: the accept loop
//! stops, `/healthz` answers 503, connections are closed with 1001, and the
//! core finishes once its connections are gone or the drain deadline passes.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// One core's shutdown state.
#[derive(Debug, Default)]
pub struct Shutdown {
    /// Set once draining has begun.
    triggered: Cell<bool>,
    /// Tasks waiting in [`Shutdown::wait`].
    waiters: RefCell<Vec<Waker>>,
}

impl Shutdown {
    /// Starts draining and wakes every waiter. Idempotent.
    pub fn trigger(&self) {
        if !self.triggered.replace(true) {
            for waker in self.waiters.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }

    /// True once draining has begun.
    pub fn is_triggered(&self) -> bool {
        self.triggered.get()
    }

    /// Completes when draining begins.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.triggered.get() {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Context;

    #[test]
    fn wait_completes_after_trigger() {
        let s = Shutdown::default();
        let mut fut = pin!(s.wait());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(!s.is_triggered());
        s.trigger();
        s.trigger();
        assert!(s.is_triggered());
        assert!(fut.as_mut().poll(&mut cx).is_ready());
    }
}
