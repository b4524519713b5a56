//! Per-message policy checks: the sliding-window rate limit (on the user's owner core) and
//! moderation (on the room's owner core).
//!
//! Time is passed in by the caller in both types, so the rate-limit cases advance a synthetic
//! clock to stay in the state their names say (each is checked before it is measured). The
//! binary counts heap allocations and prints allocations per call for every case before the
//! timings: a clean ASCII message must cost moderation no allocation (non-ASCII content costs
//! its folded copy).
//!
//! Run with `cargo bench --bench policy`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatd::moderation::{Moderator, Verdict};
use chatd::ratelimit::{Decision, RateLimiter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// The system allocator, counting allocations (not frees) so cases can show how many they make.
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Average heap allocations (including reallocations) per call of `f` over `calls` calls.
fn allocations_per_call(calls: u64, mut f: impl FnMut()) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..calls {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / calls as f64
}

/// The server's defaults: 30 messages in any 60 s.
const MAX: u32 = 30;
const WINDOW: Duration = Duration::from_secs(60);

/// One rate-limit case: a limiter in a known state, and how each call moves the clock.
struct LimitCase {
    name: &'static str,
    limiter: RateLimiter,
    users: Vec<String>,
    next_user: usize,
    now: Instant,
    step: Duration,
    limited: bool,
}

impl LimitCase {
    fn new(name: &'static str, users: usize, step: Duration, limited: bool) -> LimitCase {
        LimitCase {
            name,
            limiter: RateLimiter::new(MAX, WINDOW),
            users: (0..users).map(|i| format!("user-{i:05}")).collect(),
            next_user: 0,
            now: Instant::now(),
            step,
            limited,
        }
    }

    /// One message from the next user, `step` after the previous one.
    fn call(&mut self) -> Decision {
        self.now += self.step;
        let user = &self.users[self.next_user];
        self.next_user += 1;
        if self.next_user == self.users.len() {
            self.next_user = 0;
        }
        self.limiter.check_and_record(black_box(user), self.now)
    }

    /// Runs `calls` messages and checks each ended as the case's name says.
    fn settle(&mut self, calls: usize) {
        for _ in 0..calls {
            let decision = self.call();
            assert_eq!(
                matches!(decision, Decision::Limited { .. }),
                self.limited,
                "{}: unexpected {decision:?}",
                self.name
            );
        }
    }
}

fn limit_cases() -> Vec<LimitCase> {
    // (a) A user sending now and then: the log holds one entry.
    let mut sparse = LimitCase::new("one_user_under_limit", 1, WINDOW, false);
    sparse.settle(10);
    // (a') A user sending just under the limit's pace: every call prunes one entry and adds one
    // to a log of 29, the most work an allowed message can cost.
    let pace = WINDOW / MAX + WINDOW / MAX / 100;
    let mut near_full = LimitCase::new("one_user_under_limit_log_near_full", 1, pace, false);
    near_full.settle(100);
    // (b) A user over the limit: the window is full, every call is refused (and not recorded).
    let mut over = LimitCase::new("one_user_over_limit", 1, Duration::ZERO, true);
    for _ in 0..MAX {
        over.call();
    }
    over.settle(10);
    // (c) 10,000 users taking turns, 1 ms apart: each sends every 10 s, so each log holds 6.
    let mut many = LimitCase::new(
        "10000_users_round_robin",
        10_000,
        Duration::from_millis(1),
        false,
    );
    many.settle(10_000 * 7);
    vec![sparse, near_full, over, many]
}

/// The built-in list (18 English profanities) plus generated words up to `total`, 4 to 12
/// letters each, from a fixed-seed generator so every run uses the same list.
fn word_list(total: usize) -> Vec<String> {
    let mut words = Moderator::default_words();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    while words.len() < total {
        let len = 4 + (next() % 9) as usize;
        let word: String = (0..len)
            .map(|_| char::from(b'a' + (next() % 26) as u8))
            .collect();
        if !words.contains(&word) {
            words.push(word);
        }
    }
    words
}

const CLEAN_100B: &str =
    "Hey team, the deploy finished and the dashboards look good. Lunch at noon? I'll book a table.";
const ONE_MASKED: &str =
    "Hey team, the deploy finished and the damn dashboards look good. Lunch at noon? I'll book it.";
/// Non-ASCII content takes the folding path (NFKD, invisible characters and marks dropped,
/// confusables): accents, Cyrillic, an emoji, about 100 characters.
const CLEAN_NON_ASCII: &str =
    "Grüße an alle, das Deploy ist fertig 👍 Обед в полдень? Je réserve une table pour nous à midi.";
/// A listed word spelled in full-width letters inside otherwise ASCII text: folded, matched, and
/// masked through the map back to the original characters.
const LOOKALIKE_MASKED: &str =
    "Hey team, the deploy finished and the ｄａｍｎ dashboards look good. Lunch at noon? I'll book.";

fn clean_1000_chars() -> String {
    const WORDS: &str =
        "The quick brown fox jumps over the lazy dog while the team ships the release. ";
    WORDS.chars().cycle().take(1000).collect()
}

fn policy(c: &mut Criterion) {
    let mut cases = limit_cases();
    let lists = [
        (
            "default_list",
            Moderator::new(Moderator::default_words(), &[]),
        ),
        ("list_200_words", Moderator::new(word_list(200), &[])),
    ]
    .map(|(name, m)| (name, m.expect("plain words build a moderator")));
    let long_clean = clean_1000_chars();
    let contents = [
        ("clean_100B", CLEAN_100B, false),
        ("one_masked_word", ONE_MASKED, true),
        ("clean_1000_chars", long_clean.as_str(), false),
        ("clean_non_ascii", CLEAN_NON_ASCII, false),
        ("lookalike_masked", LOOKALIKE_MASKED, true),
    ];
    for (list, moderator) in &lists {
        for (name, content, masked) in contents {
            match moderator.moderate(content) {
                Verdict::Clean => assert!(!masked, "{list}/{name}: expected masking"),
                Verdict::Masked(text) => {
                    assert!(masked, "{list}/{name}: masked {text:?}");
                    assert!(text.contains("****"), "{text}");
                }
                other => panic!("{list}/{name}: {other:?}"),
            }
        }
    }

    println!("allocations per call (counted over 10,000 calls after warm-up):");
    for case in &mut cases {
        let per_call = allocations_per_call(10_000, || {
            black_box(case.call());
        });
        println!("  {:<50} {per_call:.3}", format!("ratelimit/{}", case.name));
    }
    for (list, moderator) in &lists {
        for (name, content, _) in contents {
            let per_call = allocations_per_call(10_000, || {
                black_box(moderator.moderate(black_box(content)));
            });
            println!("  {:<50} {per_call:.3}", format!("moderate/{name}/{list}"));
        }
    }

    let mut group = c.benchmark_group("ratelimit_check_and_record");
    for case in &mut cases {
        group.bench_function(case.name, |b| b.iter(|| black_box(case.call())));
    }
    group.finish();
    for case in &mut cases {
        case.settle(100);
    }

    for (name, content, _) in contents {
        let mut group = c.benchmark_group(format!("moderate/{name}"));
        for (list, moderator) in &lists {
            group.bench_function(BenchmarkId::from_parameter(list), |b| {
                b.iter(|| black_box(moderator.moderate(black_box(content))))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, policy);
criterion_main!(benches);
