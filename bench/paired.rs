//! `tern-loadgen paired`: the round trips of several relays (and of the
//! echo peer alone) in one run, the targets driven in turns.
//!
//! Why: at light load a round trip is mostly wake-ups, and on a shared
//! VM their cost drifts by tens of microseconds over seconds, so relays
//! measured one after the other differ by the drift, not by what they
//! add (docs/performance.md, "The added round trip at light load").
//! Here every target is set up first; then either
//! - `--slot-ms N` (the default, 100): time is cut into slots, each
//!   driving one target at `--rate` per session while the others idle,
//!   in turn, so each target is timed alone (as in a round of its own)
//!   and any drift slower than one cycle of slots meets all alike. The
//!   first datagram of a slot finds its target idle for (T − 1) slots:
//!   its cold start is counted, and shows in the p99.
//! - `--slot-ms 0`: datagram `j` goes to target `j mod T`, every target
//!   at `--rate` per session all along: the same load per target, each
//!   beside the others' traffic.
//!
//! Round trips are kept per block (one cycle of slots, or `--block-ms`
//! when interleaved) and each comparison's 95 % interval comes from a
//! block bootstrap: whole blocks are resampled, so the targets' samples
//! stay paired.
//!
//! Loopback use only; bounded by `--seconds`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{RecvBatch, Session, Turn, on_local_runtime, open_session, receive_loop};

/// Time the round trips of several targets in one run, driven in turns.
#[derive(clap::Args)]
pub(crate) struct Paired {
    /// A target as NAME=turn:ADDR (a TURN server, through a channel to
    /// `--peer`) or NAME=raw:ADDR (plain UDP: a forwarder to the peer, or
    /// the peer itself). Repeat it; the first is the baseline the others'
    /// added round trips are measured from.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// The REST API shared secret of the TURN targets.
    #[arg(long, default_value = "")]
    secret: String,
    /// The echo peer the TURN targets relay to.
    #[arg(long)]
    peer: SocketAddr,
    /// Sessions per target (one client socket each).
    #[arg(long, default_value_t = 10)]
    sessions: usize,
    /// Datagrams per second per session.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Payload bytes per datagram (at least 16).
    #[arg(long, default_value_t = 120)]
    size: usize,
    /// Seconds of sending (at most 240: the TURN targets' permissions
    /// are not refreshed).
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Milliseconds each slot drives one target; 0: no slots, the
    /// targets' datagrams interleaved one by one.
    #[arg(long, default_value_t = 100)]
    slot_ms: u64,
    /// Milliseconds per block of the bootstrap when interleaved (with
    /// slots, a block is one cycle of them).
    #[arg(long, default_value_t = 100)]
    block_ms: u64,
}

/// One target's sessions and what came back.
struct Target {
    name: String,
    sessions: Vec<Rc<Session>>,
    failed: usize,
    sent: u64,
    /// Round trips in nanoseconds, per block.
    rtt: Rc<RefCell<Vec<Vec<u32>>>>,
}

/// Run the measurement and print one line per target and one per pair
/// of targets and statistic.
pub(crate) fn run(p: Paired) -> Result<()> {
    if p.size < 16 {
        bail!("--size must be at least 16");
    }
    if !(p.seconds > 0.0 && p.seconds <= 240.0) {
        bail!("--seconds must be above 0 and at most 240");
    }
    if p.block_ms == 0 || p.rate == 0 || p.sessions == 0 {
        bail!("--block-ms, --rate and --sessions must be above 0");
    }
    let kinds = p
        .targets
        .iter()
        .map(|t| parse_target(t))
        .collect::<Result<Vec<_>>>()?;
    let plan = Plan::new(&p, kinds.len());
    let blocks = plan.blocks;
    on_local_runtime(async move {
        let epoch = Instant::now();
        let turn = Turn {
            secret: p.secret.clone(),
            peer: p.peer,
        };
        let mut targets = Vec::new();
        for (name, is_turn, addr) in kinds {
            let mut t = Target {
                name,
                sessions: Vec::new(),
                failed: 0,
                sent: 0,
                rtt: Rc::new(RefCell::new(vec![Vec::new(); blocks])),
            };
            for i in 0..p.sessions {
                match open_session(addr, is_turn.then_some(&turn), i, p.size).await {
                    Ok(s) => t.sessions.push(Rc::new(s)),
                    Err(e) => {
                        eprintln!("{} session {i}: {e:#}", t.name);
                        t.failed += 1;
                    }
                }
            }
            targets.push(t);
        }
        let rx = Rc::new(RefCell::new(RecvBatch::new(2048)));
        for t in &targets {
            for s in &t.sessions {
                tokio::task::spawn_local(receive(
                    Rc::clone(s),
                    Rc::clone(&t.rtt),
                    Rc::clone(&rx),
                    epoch,
                ));
            }
        }
        send(&mut targets, &plan, epoch).await;
        // Let the last echoes arrive.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && targets.iter().any(|t| received(t) < t.sent) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report(&targets, blocks);
        Ok(())
    })
}

/// NAME=turn:ADDR or NAME=raw:ADDR.
fn parse_target(s: &str) -> Result<(String, bool, SocketAddr)> {
    let (name, rest) = s
        .split_once('=')
        .context("a target is NAME=turn:ADDR or NAME=raw:ADDR")?;
    let (kind, addr) = rest
        .split_once(':')
        .context("a target is NAME=turn:ADDR or NAME=raw:ADDR")?;
    let is_turn = match kind {
        "turn" => true,
        "raw" => false,
        _ => bail!("target {name}: kind {kind:?} is neither turn nor raw"),
    };
    Ok((
        name.to_owned(),
        is_turn,
        addr.parse()
            .with_context(|| format!("target {name}: address {addr:?}"))?,
    ))
}

/// When each datagram of the run is sent, and to whom.
struct Plan {
    size: usize,
    targets: u64,
    sessions: u64,
    /// Datagrams per second of one target while it is driven.
    per_second: f64,
    /// Datagrams in one slot; 0 when interleaved.
    per_slot: u64,
    slot: f64,
    block: f64,
    blocks: usize,
    total: u64,
}

impl Plan {
    fn new(p: &Paired, targets: usize) -> Self {
        let targets = targets as u64;
        let sessions = p.sessions as u64;
        let per_second = p.sessions as f64 * f64::from(p.rate);
        let slot = p.slot_ms as f64 / 1000.0;
        if p.slot_ms == 0 {
            let block = p.block_ms as f64 / 1000.0;
            return Self {
                size: p.size,
                targets,
                sessions,
                per_second,
                per_slot: 0,
                slot,
                block,
                blocks: (p.seconds / block).ceil().max(1.0) as usize,
                total: (per_second * targets as f64 * p.seconds) as u64,
            };
        }
        let per_slot = ((per_second * slot).round() as u64).max(1);
        let blocks = (p.seconds / (slot * targets as f64)).ceil().max(1.0) as usize;
        Self {
            size: p.size,
            targets,
            sessions,
            per_second,
            per_slot,
            slot,
            block: slot * targets as f64,
            blocks,
            total: blocks as u64 * targets * per_slot,
        }
    }

    /// Datagram `j`: its send time (seconds from the start), target,
    /// session and block.
    fn at(&self, j: u64) -> (f64, usize, usize, u64) {
        if self.per_slot == 0 {
            let time = j as f64 / (self.per_second * self.targets as f64);
            let (round, turn) = (j / self.targets, j % self.targets);
            let session = round % self.sessions;
            return (
                time,
                self.order(round, turn),
                session as usize,
                (time / self.block) as u64,
            );
        }
        let (k, i) = (j / self.per_slot, j % self.per_slot);
        let time = k as f64 * self.slot + i as f64 / self.per_second;
        let (cycle, turn) = (k / self.targets, k % self.targets);
        (
            time,
            self.order(cycle, turn),
            (i % self.sessions) as usize,
            cycle,
        )
    }

    /// Which target takes turn `turn` of round `round`: each round's order
    /// is shuffled afresh, so that no target always follows the same one
    /// (a target's round trip depends on what ran just before it: kernel
    /// paths and caches it leaves warm).
    fn order(&self, round: u64, turn: u64) -> usize {
        let n = self.targets as usize;
        let mut perm: Vec<usize> = (0..n).collect();
        let mut rng = XorShift(round.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for i in (1..n).rev() {
            perm.swap(i, rng.below(i + 1));
        }
        perm[turn as usize]
    }
}

/// Send every datagram of `plan` at its time; each payload carries its
/// send time and block.
async fn send(targets: &mut [Target], plan: &Plan, start: Instant) {
    let mut payload = vec![0u8; plan.size];
    let mut frame = Vec::with_capacity(payload.len() + 8);
    let mut j = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while j < plan.total {
        tick.tick().await;
        let elapsed = start.elapsed().as_secs_f64();
        while j < plan.total {
            let (time, target, session, block) = plan.at(j);
            if time > elapsed {
                break;
            }
            j += 1;
            let t = &mut targets[target];
            let Some(s) = t.sessions.get(session) else {
                continue;
            };
            let stamp = start.elapsed().as_nanos() as u64;
            let _ = s.send_stamped(&mut frame, &mut payload, [stamp, block]);
            t.sent += 1;
        }
    }
}

/// Record each echo's round trip under its block.
async fn receive(
    s: Rc<Session>,
    rtt: Rc<RefCell<Vec<Vec<u32>>>>,
    rx: Rc<RefCell<RecvBatch>>,
    start: Instant,
) {
    receive_loop(&s.sock, &rx, 0, 1, |slot, len, _| {
        let Some([sent_ns, b]) = s.echoed(slot, len) else {
            return;
        };
        let now_ns = start.elapsed().as_nanos() as u64;
        let rtt_ns = u32::try_from(now_ns.saturating_sub(sent_ns)).unwrap_or(u32::MAX);
        if let Some(c) = rtt
            .borrow_mut()
            .get_mut(usize::try_from(b).unwrap_or(usize::MAX))
        {
            c.push(rtt_ns);
        }
    })
    .await;
}

/// Echoes received so far by `t`'s sessions.
fn received(t: &Target) -> u64 {
    t.rtt.borrow().iter().map(|c| c.len() as u64).sum()
}

/// Percentile `q` of `v` (reordered), in microseconds; NaN if empty.
fn pct(v: &mut [u32], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 * q) as usize).min(v.len() - 1);
    f64::from(*v.select_nth_unstable(i).1) / 1000.0
}

/// The samples of `blocks` (by index) of one target, in one vector.
fn gather(rtt: &[Vec<u32>], blocks: impl Iterator<Item = usize>, into: &mut Vec<u32>) {
    into.clear();
    for c in blocks {
        into.extend_from_slice(&rtt[c]);
    }
}

/// Resamples of the block bootstrap.
const RESAMPLES: usize = 1000;
/// The statistics compared: median and p99.
const STATS: [(&str, f64); 2] = [("p50", 0.5), ("p99", 0.99)];

/// Print each target's line, then each pair's: every target against the
/// baseline (the first), and every other pair in the order given.
fn report(targets: &[Target], blocks: usize) {
    let rtts: Vec<_> = targets.iter().map(|t| t.rtt.borrow().clone()).collect();
    let mut buf = Vec::new();
    // Each target's median and p99 over the whole run.
    let whole: Vec<[f64; 2]> = rtts
        .iter()
        .map(|r| {
            gather(r, 0..blocks, &mut buf);
            STATS.map(|(_, q)| pct(&mut buf, q))
        })
        .collect();
    for (i, t) in targets.iter().enumerate() {
        let got = received(t);
        let loss = if t.sent > 0 {
            100.0 * t.sent.saturating_sub(got) as f64 / t.sent as f64
        } else {
            0.0
        };
        println!(
            "target={} sessions={} failed={} sent={} received={} loss_pct={loss:.3} rtt_p50_us={:.1} rtt_p99_us={:.1} added_p50_us={:.1} added_p99_us={:.1}",
            t.name,
            t.sessions.len(),
            t.failed,
            t.sent,
            got,
            whole[i][0],
            whole[i][1],
            whole[i][0] - whole[0][0],
            whole[i][1] - whole[0][1],
        );
    }
    // Block bootstrap: resample whole blocks, recompute every target's
    // statistics on the same blocks.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut boot: Vec<Vec<[f64; 2]>> = Vec::with_capacity(RESAMPLES);
    let mut pick = Vec::with_capacity(blocks);
    for _ in 0..RESAMPLES {
        pick.clear();
        pick.extend((0..blocks).map(|_| rng.below(blocks)));
        boot.push(
            rtts.iter()
                .map(|r| {
                    gather(r, pick.iter().copied(), &mut buf);
                    STATS.map(|(_, q)| pct(&mut buf, q))
                })
                .collect(),
        );
    }
    let medians: Vec<Vec<f64>> = rtts
        .iter()
        .map(|r| r.iter().map(|c| pct(&mut c.clone(), 0.5)).collect())
        .collect();
    let n = targets.len();
    let against_baseline = (1..n).map(|a| (a, 0));
    let others = (1..n).flat_map(|a| (a + 1..n).map(move |b| (a, b)));
    for pair in against_baseline.chain(others) {
        for (s, (stat, _)) in STATS.iter().enumerate() {
            print_pair(targets, &medians, &whole, &boot, pair, (s, stat));
        }
    }
}

/// One line: target `a` minus target `b` for statistic `s`, its 95 %
/// interval, and in how many blocks `a`'s median (of `medians`: per
/// target, per block) was at or below `b`'s.
fn print_pair(
    targets: &[Target],
    medians: &[Vec<f64>],
    whole: &[[f64; 2]],
    boot: &[Vec<[f64; 2]>],
    (a, b): (usize, usize),
    (s, stat): (usize, &str),
) {
    let mut diffs: Vec<f64> = boot
        .iter()
        .map(|r| r[a][s] - r[b][s])
        .filter(|d| !d.is_nan())
        .collect();
    diffs.sort_by(f64::total_cmp);
    let at = |q: f64| {
        diffs
            .get(((diffs.len() as f64 * q) as usize).min(diffs.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let below = medians[a]
        .iter()
        .zip(&medians[b])
        .filter(|(ma, mb)| ma <= mb)
        .count();
    println!(
        "pair={}-{} stat={stat} diff_us={:+.1} lo_us={:+.1} hi_us={:+.1} blocks_at_or_below={below}/{}",
        targets[a].name,
        targets[b].name,
        whole[a][s] - whole[b][s],
        at(0.025),
        at(0.975),
        medians[a].len(),
    );
}

/// A small deterministic generator for the bootstrap (xorshift64*).
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        p: Paired,
    }

    fn plan(args: &[&str], targets: usize) -> Plan {
        let mut argv = vec![
            "paired",
            "--peer",
            "127.0.0.1:9",
            "--target",
            "a=raw:127.0.0.1:9",
        ];
        argv.extend_from_slice(args);
        Plan::new(&Cli::parse_from(argv).p, targets)
    }

    #[test]
    fn slots_drive_one_target_at_a_time_in_turn() {
        // 10 sessions x 50 pps, 100 ms slots: 50 datagrams per slot, 2 ms apart.
        let p = plan(&["--seconds", "2", "--slot-ms", "100"], 4);
        assert_eq!(p.per_slot, 50);
        assert_eq!(p.blocks, 5);
        assert_eq!(p.total, 5 * 4 * 50);
        let mut last = -1.0;
        let mut slot_target = [usize::MAX; 20];
        for j in 0..p.total {
            let (time, target, session, block) = p.at(j);
            let k = (j / 50) as usize;
            // One target for the whole slot.
            if slot_target[k] == usize::MAX {
                slot_target[k] = target;
            }
            assert_eq!(target, slot_target[k], "datagram {j}");
            assert_eq!(session, ((j % 50) % 10) as usize);
            assert_eq!(block, k as u64 / 4);
            assert!(time > last && time >= k as f64 * 0.1 && time < (k + 1) as f64 * 0.1);
            last = time;
        }
        // Each cycle of four slots drives every target once.
        for cycle in slot_target.chunks(4) {
            let mut seen = cycle.to_vec();
            seen.sort_unstable();
            assert_eq!(seen, [0, 1, 2, 3]);
        }
        // Each target's slot holds all of its sessions, 5 datagrams each.
        let mut per_session = [0; 10];
        for j in 0..50 {
            per_session[p.at(j).2] += 1;
        }
        assert_eq!(per_session, [5; 10]);
    }

    #[test]
    fn interleaved_targets_take_turns_datagram_by_datagram() {
        let p = plan(
            &["--seconds", "1", "--slot-ms", "0", "--block-ms", "250"],
            3,
        );
        assert_eq!(p.total, 3 * 500);
        assert_eq!(p.blocks, 4);
        let mut round = Vec::new();
        for j in 0..p.total {
            let (time, target, session, block) = p.at(j);
            round.push(target);
            if round.len() == 3 {
                // Each round of three datagrams goes to every target once.
                round.sort_unstable();
                assert_eq!(round, [0, 1, 2], "round ending at {j}");
                round.clear();
            }
            assert_eq!(session, ((j / 3) % 10) as usize);
            // 1,500 datagrams a second in all, 500 per target.
            assert!((time - j as f64 / 1500.0).abs() < 1e-9);
            assert_eq!(block, (time / 0.25) as u64);
        }
    }

    #[test]
    fn no_target_always_follows_the_same_one() {
        // Over many rounds, every target comes right after every other.
        let p = plan(&["--seconds", "10", "--slot-ms", "0"], 4);
        let mut follows = [[0u32; 4]; 4];
        let mut prev: Option<usize> = None;
        for j in 0..4 * 1000 {
            let target = p.at(j).1;
            if let Some(before) = prev {
                follows[before][target] += 1;
            }
            prev = Some(target);
        }
        for (a, row) in follows.iter().enumerate() {
            for (b, &n) in row.iter().enumerate() {
                assert!(a == b || n > 150, "{b} after {a}: {n} times: {follows:?}");
            }
        }
    }

    #[test]
    fn percentiles_are_nearest_rank_in_microseconds() {
        let mut v: Vec<u32> = (1..=100).rev().map(|x| x * 1000).collect();
        assert_eq!(pct(&mut v, 0.5), 51.0);
        assert_eq!(pct(&mut v, 0.99), 100.0);
        assert!(pct(&mut [], 0.5).is_nan());
    }

    #[test]
    fn the_bootstrap_generator_stays_in_range_and_spreads() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[rng.below(7)] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }
}
