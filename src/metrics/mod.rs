//! Prometheus metrics, all defined here, and the [`Board`] they are read
//! from. Workers keep plain counters ([`crate::core::Stats`],
//! [`board::IoStats`]) and publish them to the board once a second; a
//! scrape sums them into a fresh registry, so the per-packet path never
//! touches a shared atomic.
//!
//! Every name starts with `tern_`, uses base units, and counters end in
//! `_total`; labels come from small fixed sets (transport, family,
//! direction, reason), never from users or addresses.

use prometheus::core::Collector;
use prometheus::proto::{self, MetricFamily};
use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

pub mod board;

pub use board::{
    ApiCounters, ApiOutcome, Board, HandoffPath, IoStats, ProxyCounters, Report, TlsCounters,
    TlsFailure,
};

use crate::core::stats::{AuthFailure, DURATION_BUCKETS, DropReason, Rejection};
use crate::core::{Family, Stats, Transport};
use crate::proxy::Refusal;

const DIRECTIONS: [&str; 2] = ["client_to_peer", "peer_to_client"];

/// Render the text exposition of every metric.
pub fn render(board: &Board) -> String {
    let report = board.total();
    let stats = &report.core;
    let registry = Registry::new();
    let mut ok = true;
    let mut add = |c: Box<dyn Collector>| ok &= registry.register(c).is_ok();
    add(Box::new(build_info()));
    add(Box::new(counters(stats, &report.io)));
    add(Box::new(relayed(stats, &report.io)));
    add(Box::new(reasons(stats, &report.io)));
    add(Box::new(gauges(&report, board)));
    add(Box::new(tls(&board.tls)));
    add(Box::new(proxy(&board.proxy)));
    add(Box::new(api(&board.api)));
    add(Box::new(xdp(&report, board)));
    add(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    let mut families = registry.gather();
    families.push(duration_histogram(stats));
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    if !ok || TextEncoder::new().encode(&families, &mut out).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

/// A collector made of several metrics, registered as one.
struct Group(Vec<Box<dyn Collector>>);

impl Collector for Group {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.iter().flat_map(|c| c.desc()).collect()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        self.0.iter().flat_map(|c| c.collect()).collect()
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    // Names and labels are constants of this module: valid by construction.
    IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("{name}: {e}"))
}

/// A counter with one label, one series per `(label value, count)`.
fn labelled<'a>(
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> IntCounterVec {
    let c = counter_vec(name, help, &[label]);
    for (value, count) in values {
        c.with_label_values(&[value]).inc_by(count);
    }
    c
}

fn counter(name: &str, help: &str, value: u64) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("{name}: {e}"));
    c.inc_by(value);
    c
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable!("{name}: {e}"))
}

fn gauge(name: &str, help: &str, value: f64) -> Gauge {
    let g = Gauge::new(name, help).unwrap_or_else(|e| unreachable!("{name}: {e}"));
    g.set(value);
    g
}

fn build_info() -> GaugeVec {
    let g = gauge_vec(
        "tern_build_info",
        "Build information; always 1.",
        &["version"],
    );
    g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1.0);
    g
}

fn counters(s: &Stats, io: &IoStats) -> Group {
    let binding = counter_vec(
        "tern_stun_binding_requests_total",
        "STUN Binding requests answered.",
        &["transport"],
    );
    let created = counter_vec(
        "tern_allocations_created_total",
        "TURN allocations created.",
        &["transport"],
    );
    for t in Transport::ALL {
        binding
            .with_label_values(&[t.label()])
            .inc_by(s.binding_requests[t.index()]);
        created
            .with_label_values(&[t.label()])
            .inc_by(s.allocations_created[t.index()]);
    }
    Group(vec![
        Box::new(binding),
        Box::new(created),
        Box::new(counter(
            "tern_allocations_expired_total",
            "Allocations closed because their lifetime or credential ran out.",
            s.allocations_expired,
        )),
        Box::new(counter(
            "tern_relay_steered_packets_total",
            "Datagrams to relay addresses received through BPF sk_lookup steering (all of them while steering is on).",
            io.steered,
        )),
        Box::new(counter(
            "tern_records_dropped_total",
            "Allocation records dropped because the records writer fell behind ([records] file).",
            io.records_dropped,
        )),
        Box::new(counter(
            "tern_retransmissions_total",
            "Retransmitted requests answered from the transaction cache.",
            s.retransmissions,
        )),
        Box::new(counter(
            "tern_peer_denied_total",
            "CreatePermission/ChannelBind requests refused by the peer policy.",
            s.peer_denied,
        )),
        Box::new(counter(
            "tern_auth_challenges_total",
            "Requests without credentials answered with a 401 challenge (the normal first step).",
            s.auth_failures[AuthFailure::Missing as usize],
        )),
    ])
}

fn relayed(s: &Stats, io: &IoStats) -> Group {
    let bytes = counter_vec(
        "tern_relayed_bytes_total",
        "Payload bytes relayed, by path: userspace (tern's sockets) or xdp (the fast path).",
        &["direction", "transport", "path"],
    );
    let packets = counter_vec(
        "tern_relayed_packets_total",
        "Packets relayed, by path: userspace (tern's sockets) or xdp (the fast path).",
        &["direction", "transport", "path"],
    );
    for (d, dir) in DIRECTIONS.iter().enumerate() {
        for t in Transport::ALL {
            bytes
                .with_label_values(&[dir, t.label(), "userspace"])
                .inc_by(s.relayed_bytes[d][t.index()]);
            packets
                .with_label_values(&[dir, t.label(), "userspace"])
                .inc_by(s.relayed_packets[d][t.index()]);
        }
        let udp = Transport::Udp.label();
        bytes
            .with_label_values(&[dir, udp, "xdp"])
            .inc_by(s.offloaded_bytes[d]);
        packets
            .with_label_values(&[dir, udp, "xdp"])
            .inc_by(s.offloaded_packets[d]);
    }
    let handoffs = labelled(
        "tern_relay_to_relay_packets_total",
        "Datagrams between two of tern's relays handed over in-process, by path (the receiving allocation's checks still apply).",
        "path",
        HandoffPath::ALL.map(|p| (p.label(), io.handoffs[p as usize])),
    );
    Group(vec![Box::new(bytes), Box::new(packets), Box::new(handoffs)])
}

fn reasons(s: &Stats, io: &IoStats) -> Group {
    let dropped = labelled(
        "tern_dropped_packets_total",
        "Datagrams dropped, by reason.",
        "reason",
        DropReason::ALL
            .map(|r| (r.label(), s.dropped[r as usize]))
            .into_iter()
            .chain([
                ("handoff_queue_full", io.handoffs_dropped),
                ("stream_backlog", io.stream_backlog_dropped),
            ]),
    );
    let auth = labelled(
        "tern_auth_failures_total",
        "Requests that failed authentication, by reason.",
        "reason",
        AuthFailure::ALL
            .into_iter()
            .filter(|r| *r != AuthFailure::Missing)
            .map(|r| (r.label(), s.auth_failures[r as usize])),
    );
    let rejected = labelled(
        "tern_allocation_rejections_total",
        "Authenticated Allocate requests refused, by reason.",
        "reason",
        Rejection::ALL.map(|r| (r.label(), s.rejections[r as usize])),
    );
    Group(vec![Box::new(dropped), Box::new(auth), Box::new(rejected)])
}

fn gauges(r: &Report, board: &Board) -> Group {
    let s = &r.core;
    let allocations = gauge_vec(
        "tern_allocations",
        "Live TURN allocations.",
        &["transport", "family"],
    );
    for t in Transport::ALL {
        for f in Family::ALL {
            allocations
                .with_label_values(&[t.label(), f.label()])
                .set(s.allocations[t.index()][f.index()] as f64);
        }
    }
    let steering = gauge_vec(
        "tern_relay_steering",
        "1 when relay datagrams of this family are received through BPF sk_lookup steering.",
        &["family"],
    );
    for f in Family::ALL {
        steering
            .with_label_values(&[f.label()])
            .set(f64::from(u8::from(board.steering(f))));
    }
    Group(vec![
        Box::new(allocations),
        Box::new(steering),
        Box::new(gauge(
            "tern_permissions",
            "Live permissions.",
            s.permissions as f64,
        )),
        Box::new(gauge(
            "tern_channels",
            "Live channel bindings.",
            s.channels as f64,
        )),
        Box::new(gauge(
            "tern_tcp_connections",
            "Open TCP client connections.",
            r.tcp_connections as f64,
        )),
        Box::new(gauge(
            "tern_allocations_limit",
            "The configured server-wide allocation limit.",
            f64::from(board.allocations_limit()),
        )),
    ])
}

/// The XDP fast path: its mode, what it offloaded, and what it found an
/// entry for but left to userspace.
fn xdp(r: &Report, board: &Board) -> Group {
    let active = board.xdp();
    let mode = gauge_vec(
        "tern_xdp",
        "1 for the mode the XDP fast path runs in ([relay] xdp): off, native or generic.",
        &["mode"],
    );
    for m in ["off", "native", "generic"] {
        mode.with_label_values(&[m])
            .set(f64::from(u8::from(active.unwrap_or("off") == m)));
    }
    if active.is_none() {
        return Group(vec![Box::new(mode)]);
    }
    let p = board.xdp_program();
    Group(vec![
        Box::new(mode),
        Box::new(gauge(
            "tern_xdp_allocations",
            "Allocations with channels offloaded to the XDP fast path.",
            r.offloaded as f64,
        )),
        Box::new(counter(
            "tern_xdp_offload_failures_total",
            "Channels the XDP fast path could not take (full map or no free slot); they are relayed in userspace.",
            r.io.offload_failed,
        )),
        Box::new(labelled(
            "tern_xdp_passed_total",
            "Datagrams the XDP fast path had an entry for but left to userspace, by reason.",
            "reason",
            [
                ("expired", p[2]),
                ("no_next_hop", p[3]),
                ("bandwidth_limit", p[4]),
                ("too_big", p[5]),
            ],
        )),
    ])
}

/// TLS handshakes and the certificate's expiry (only while TLS is on).
fn tls(t: &TlsCounters) -> Group {
    if t.not_after() == 0 {
        return Group(Vec::new());
    }
    Group(vec![
        Box::new(counter(
            "tern_tls_handshakes_total",
            "TLS handshakes completed.",
            t.handshakes(),
        )),
        Box::new(labelled(
            "tern_tls_handshake_failures_total",
            "TLS handshakes that failed, by reason (timeout, limit, alpn, error).",
            "reason",
            TlsFailure::ALL.map(|r| (r.label(), t.failures(r))),
        )),
        Box::new(gauge(
            "tern_tls_handshakes_in_progress",
            "TLS handshakes in progress (bounded by [tls] max-handshakes and max-handshakes-per-ip).",
            t.in_progress() as f64,
        )),
        Box::new(gauge(
            "tern_tls_certificate_expiry_timestamp_seconds",
            "When the certificate presented to new TLS clients expires (notAfter, Unix seconds).",
            t.not_after() as f64,
        )),
    ])
}

/// PROXY protocol headers from trusted proxies.
fn proxy(p: &ProxyCounters) -> Group {
    Group(vec![
        Box::new(counter(
            "tern_proxy_protocol_headers_total",
            "PROXY protocol headers read from trusted proxies ([listen] proxy-protocol-from).",
            p.accepted_count(),
        )),
        Box::new(labelled(
            "tern_proxy_protocol_refused_total",
            "Connections from trusted proxies closed for want of a usable PROXY header, by reason (missing, invalid, timeout).",
            "reason",
            Refusal::ALL.map(|r| (r.label(), p.refused_count(r))),
        )),
    ])
}

fn api(a: &ApiCounters) -> IntCounterVec {
    labelled(
        "tern_api_requests_total",
        "Requests to the credential endpoint ([api]), by outcome (issued, preflight, unauthorized, rate_limited, origin_refused, bad_request, not_found).",
        "outcome",
        ApiOutcome::ALL.map(|o| (o.label(), a.get(o))),
    )
}

/// The lifetime histogram, built from the workers' cumulative bucket counts.
fn duration_histogram(s: &Stats) -> MetricFamily {
    let mut cumulative = 0;
    let buckets = DURATION_BUCKETS
        .iter()
        .zip(&s.duration_buckets)
        .map(|(bound, count)| {
            cumulative += count;
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut h = proto::Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_count(s.duration_buckets.iter().sum());
    h.set_sample_sum(s.duration_sum_seconds);
    let mut m = proto::Metric::default();
    m.set_histogram(h);
    let mut f = MetricFamily::default();
    f.set_name("tern_allocation_duration_seconds".into());
    f.set_help("How long closed allocations lived.".into());
    f.set_field_type(proto::MetricType::HISTOGRAM);
    f.set_metric(vec![m]);
    f
}

#[cfg(test)]
mod tests;
