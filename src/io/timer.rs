//! A worker's timers, on one `timerfd`, instead of tokio's time driver.
//!
//! Why: a runtime built with tokio's time driver parks through it on every
//! wake-up: it locks the timer wheel, finds the next expiry and reads the
//! clock before `epoll_wait`, and reads the clock and turns the wheel
//! after. At light load every relayed datagram pays that, cold, twice per
//! round trip. Measured side by side in one run (`tern-loadgen paired`,
//! `tern-latfloor --tokio` with and without `--time-driver`), it is 1.4–2.8 µs
//! of a light-load round trip's median (docs/performance.md).
//!
//! A worker's timers are few and never on the per-packet path: its tick,
//! the accept back-off, and per stream connection a PROXY header, TLS
//! handshake, idle and close timeout. So the worker's runtime has no time
//! driver; its timers wait in a `BTreeMap` (ordered by deadline; a dropped
//! [`Sleep`] removes its entry, so the map holds only live timers) and one
//! `timerfd`, armed for the earliest, wakes the [`Timers::drive`] task. To the reactor the
//! fd is one more descriptor: a wake-up that is not the timer's costs
//! nothing more.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The longest a timer waits (longer durations, e.g. a configured
/// timeout of `u64::MAX` seconds, wait this long).
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// One worker's timers. Create it inside the worker's runtime and spawn
/// [`Timers::drive`] on it.
pub(crate) struct Timers {
    fd: AsyncFd<OwnedFd>,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    /// Live timers by deadline, then by a number that makes each key
    /// unique.
    waiting: BTreeMap<(Instant, u64), Waker>,
    last_id: u64,
    /// The deadline the fd is armed for, if any.
    armed: Option<Instant>,
}

/// A timeout that elapsed before its future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

impl Timers {
    /// A disarmed timer fd, registered with the current runtime's reactor.
    pub(crate) fn new() -> io::Result<Rc<Self>> {
        // SAFETY: timerfd_create takes no pointers; its result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the fd, so it stays open for as long
        // as it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Rc::new(Self {
            fd,
            state: RefCell::default(),
        }))
    }

    /// Wake the timers whose deadline has passed whenever the fd fires,
    /// for as long as the worker runs.
    pub(crate) async fn drive(self: Rc<Self>) {
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                // The reactor is gone: the worker is ending.
                return;
            };
            // Whether this read finds the expiration count or EAGAIN (read
            // already), the fd is not readable until it fires again: a new
            // edge for the reactor.
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into an 8-byte buffer.
            unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            ready.clear_ready();
            self.fire(Instant::now());
        }
    }

    /// Wake every timer due at `now`, and arm the fd for the next.
    fn fire(&self, now: Instant) {
        let due = {
            let mut st = self.state.borrow_mut();
            let later = st.waiting.split_off(&(now, u64::MAX));
            let due = std::mem::replace(&mut st.waiting, later);
            st.armed = None;
            if let Some(&(next, _)) = st.waiting.keys().next() {
                self.arm(&mut st, next, now);
            }
            due
        };
        // Woken outside the borrow: a waker may drop a Sleep.
        for waker in due.into_values() {
            waker.wake();
        }
    }

    /// Arm the fd to fire at `deadline`.
    fn arm(&self, st: &mut State, deadline: Instant, now: Instant) {
        // A zero value would disarm it: fire in a nanosecond instead.
        let wait = deadline
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        let r =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r == 0 {
            st.armed = Some(deadline);
        } else {
            // Cannot happen for a valid fd and value; the next timer tries again.
            tracing::warn!(error = %io::Error::last_os_error(), "timerfd_settime failed");
        }
    }

    /// A future that completes `after` from now.
    pub(crate) fn sleep(self: &Rc<Self>, after: Duration) -> Sleep {
        self.sleep_until(Instant::now() + after.min(FOREVER))
    }

    /// A future that completes at `deadline`.
    pub(crate) fn sleep_until(self: &Rc<Self>, deadline: Instant) -> Sleep {
        Sleep {
            timers: Rc::clone(self),
            deadline,
            id: None,
        }
    }

    /// `future`'s output, or [`Elapsed`] if it takes longer than `after`
    /// (counted from this call).
    pub(crate) async fn timeout<F: Future>(
        self: &Rc<Self>,
        after: Duration,
        future: F,
    ) -> Result<F::Output, Elapsed> {
        let sleep = self.sleep(after);
        tokio::select! {
            biased;
            out = future => Ok(out),
            () = sleep => Err(Elapsed),
        }
    }

    /// Ticks every `period`, the first at once; a late tick delays the
    /// ones after it (no burst to catch up).
    pub(crate) fn every(self: &Rc<Self>, period: Duration) -> Every {
        Every {
            timers: Rc::clone(self),
            period,
            next: Instant::now(),
        }
    }

    /// How many timers wait.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state.borrow().waiting.len()
    }
}

/// A timer of [`Timers`]: completes at its deadline.
pub(crate) struct Sleep {
    timers: Rc<Timers>,
    deadline: Instant,
    /// Its key's second half, once it waits in the map.
    id: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let now = Instant::now();
        if now >= this.deadline {
            this.cancel();
            return Poll::Ready(());
        }
        let mut st = this.timers.state.borrow_mut();
        let st = &mut *st;
        let id = *this.id.get_or_insert_with(|| {
            st.last_id += 1;
            st.last_id
        });
        match st.waiting.get_mut(&(this.deadline, id)) {
            Some(w) => w.clone_from(cx.waker()),
            None => {
                st.waiting.insert((this.deadline, id), cx.waker().clone());
            }
        }
        if st.armed.is_none_or(|armed| this.deadline < armed) {
            this.timers.arm(st, this.deadline, now);
        }
        Poll::Pending
    }
}

impl Sleep {
    /// When it completes.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    fn cancel(&mut self) {
        if let Some(id) = self.id.take() {
            self.timers
                .state
                .borrow_mut()
                .waiting
                .remove(&(self.deadline, id));
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A periodic tick (see [`Timers::every`]).
pub(crate) struct Every {
    timers: Rc<Timers>,
    period: Duration,
    next: Instant,
}

impl Every {
    /// Wait for the next tick. Cancel-safe: dropped before it completes,
    /// the tick is still due.
    pub(crate) async fn tick(&mut self) {
        self.timers.sleep_until(self.next).await;
        let now = Instant::now();
        self.next += self.period;
        if self.next <= now {
            self.next = now + self.period;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `f` with timers on a current-thread runtime without a time
    /// driver, as a worker has.
    fn on_worker_runtime<F: Future<Output = ()>>(f: impl FnOnce(Rc<Timers>) -> F) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let timers = Timers::new().unwrap();
            tokio::task::spawn_local(Rc::clone(&timers).drive());
            f(timers).await;
        });
    }

    #[test]
    fn sleeps_end_in_deadline_order_and_not_before() {
        on_worker_runtime(|t| async move {
            let start = Instant::now();
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for ms in [30u64, 10, 20] {
                let (t, order) = (Rc::clone(&t), Rc::clone(&order));
                tasks.push(tokio::task::spawn_local(async move {
                    t.sleep(Duration::from_millis(ms)).await;
                    assert!(start.elapsed() >= Duration::from_millis(ms));
                    order.borrow_mut().push(ms);
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            assert_eq!(*order.borrow(), [10, 20, 30]);
            assert_eq!(t.waiting(), 0);
        });
    }

    #[test]
    fn timeout_passes_a_quick_future_through_and_cuts_a_slow_one() {
        on_worker_runtime(|t| async move {
            let quick = t.timeout(Duration::from_secs(5), async { 7 }).await;
            assert_eq!(quick, Ok(7));
            let start = Instant::now();
            let slow = t
                .timeout(Duration::from_millis(20), std::future::pending::<()>())
                .await;
            assert_eq!(slow, Err(Elapsed));
            assert!(start.elapsed() >= Duration::from_millis(20));
            // Neither leaves a timer behind.
            assert_eq!(t.waiting(), 0);
        });
    }

    #[test]
    fn a_dropped_sleep_leaves_the_map_and_an_earlier_one_rearms() {
        on_worker_runtime(|t| async move {
            // A long timer arms the fd first; a shorter one added later
            // must still fire on time (the fd re-armed for it).
            let mut long = t.sleep(Duration::from_secs(3600));
            assert!(futures_poll(Pin::new(&mut long)).is_pending());
            assert_eq!(t.waiting(), 1);
            let start = Instant::now();
            t.sleep(Duration::from_millis(15)).await;
            assert!(start.elapsed() < Duration::from_secs(60));
            drop(long);
            assert_eq!(t.waiting(), 0);
            // A huge duration is capped, not an overflow.
            let huge = t.timeout(Duration::MAX, async { 1 }).await;
            assert_eq!(huge, Ok(1));
        });
    }

    #[test]
    fn every_ticks_at_once_then_each_period() {
        on_worker_runtime(|t| async move {
            let mut every = t.every(Duration::from_millis(10));
            let start = Instant::now();
            every.tick().await;
            assert!(start.elapsed() < Duration::from_secs(5));
            every.tick().await;
            every.tick().await;
            assert!(start.elapsed() >= Duration::from_millis(20));
        });
    }

    /// Poll `f` once with a waker that does nothing.
    fn futures_poll<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }
}
