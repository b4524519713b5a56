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
                // One entry per waiting task: the accept loop polls a new
                // `wait()` on every accept, and pushing on each poll would
                // grow this list (and the task's waker count) without bound.
                let mut waiters = self.waiters.borrow_mut();
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
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

    #[test]
    fn a_task_polling_many_waits_is_registered_once() {
        struct Task;
        impl std::task::Wake for Task {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let s = Shutdown::default();
        let waker = Waker::from(std::sync::Arc::new(Task));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..1000 {
            let mut fut = pin!(s.wait());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(s.waiters.borrow().len(), 1);
    }
}
