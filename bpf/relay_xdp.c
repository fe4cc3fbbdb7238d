// SPDX-License-Identifier: MIT OR GPL-2.0
//
// tern's XDP fast path for relayed UDP (issue #18). Two rewrites, each
// looked up in a map that userspace (src/io/xdp/table.rs) fills only for
// a bound channel with a live permission to a policy-allowed peer:
//
//   ChannelData from a UDP client   -> UDP from the relay address to the peer
//   UDP from a peer to a relay port -> ChannelData to the client
//
// Everything else returns XDP_PASS untouched and reaches tern's sockets as
// before: STUN, Send/Data indications, TCP/TLS, padded or malformed
// ChannelData, IPv4 options or fragments, IPv6 extension headers, VLAN
// tags, a UDP checksum of zero, an expired entry, a datagram that would
// exceed the MTU, a datagram over the bandwidth limit (userspace spends
// from the same bucket and drops it), and any datagram before the next
// hop towards its destination is known.
//
// Next hops are learned, not looked up: a datagram towards the client
// leaves by the interface, and to the MAC, that the client's datagrams
// came from; towards a peer, by the peer's. So the first datagrams each
// way go through userspace (whose sends resolve neighbours as usual), a
// peer on this host (relay-to-relay) is never learned and stays in
// userspace, and nothing needs IP forwarding (bpf_fib_lookup would). This
// assumes the path back is the path in, as on a host with one gateway.
//
// Built by scripts/build-bpf (clang -target bpf) into
// src/io/xdp/relay_xdp.o, which is committed so that building tern needs
// no clang; a test rebuilds it and compares when clang-16 is present.
// Self-contained on purpose: no kernel or libbpf headers, so the object
// depends only on this file and the compiler version.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define SEC(name) __attribute__((section(name), used))
#define INLINE static inline __attribute__((always_inline))

#define XDP_PASS 2
#define XDP_TX 3

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_F_NO_PREALLOC (1U << 0)
#define BPF_F_MMAPABLE (1U << 10)

#define IPPROTO_UDP 17
#define ETH_LEN 14
#define IP4_LEN 20
#define IP6_LEN 40
#define UDP_LEN 8
#define CD_LEN 4 // ChannelData header: channel number, length

// Limits shared with src/io/xdp.rs.
#define MAX_ENTRIES 65536
#define MAX_SLOTS 65536

struct xdp_md {
	u32 data;
	u32 data_end;
	u32 data_meta;
	u32 ingress_ifindex;
	u32 rx_queue_index;
	u32 egress_ifindex;
};

// Legacy map definitions (section "maps"): no BTF needed to load them.
struct bpf_map_def {
	u32 type;
	u32 key_size;
	u32 value_size;
	u32 max_entries;
	u32 map_flags;
};

// Ports are in network byte order, as on the wire. An IPv4 address fills
// the first 4 bytes of a 16-byte field; the rest is zero.

// The next hop towards one side, learned from that side's datagrams:
// their source MAC, our MAC they were sent to, and the interface.
struct hop {
	u8 their_mac[6];
	u8 our_mac[6];
	u32 ifindex; // 0: not learned yet
};

// FROM_CLIENT key: a client's ChannelData to a listener port.
struct client_key {
	u8 family; // 4 or 6
	u8 pad;
	u16 channel; // network order
	u16 client_port;
	u16 server_port;
	u8 client_ip[16];
};

// FROM_CLIENT value: where the payload goes.
struct to_peer {
	u8 relay_ip[16];
	u8 peer_ip[16];
	u16 relay_port;
	u16 peer_port;
	u32 slot;
	u64 expires_ns; // CLOCK_MONOTONIC (bpf_ktime_get_ns)
	struct hop peer; // written by the peer path
};

// FROM_PEER key: a peer's datagram to a relay port.
struct peer_key {
	u8 family;
	u8 pad[3];
	u16 peer_port;
	u16 relay_port;
	u8 peer_ip[16];
	u8 relay_ip[16];
};

// FROM_PEER value: the client and channel it goes to.
struct to_client {
	u8 server_ip[16]; // all zero: learned from the client (wildcard listener)
	u8 client_ip[16];
	u16 server_port;
	u16 client_port;
	u16 channel; // network order
	u16 pad;
	u32 slot;
	u32 pad2;
	u64 expires_ns;
	struct hop pushed; // the peer hop last written into the to_peer value
};

// SLOTS value, one per offloaded allocation, shared with userspace through
// mmap: what the fast path relayed (payload bytes and datagrams, each
// way), the allocation's bandwidth limit as one GCRA cell per direction
// that userspace's relay path spends from too (so the limit holds for
// both paths together), and what was learned of the client's side.
struct slot {
	u64 packets_to_peer;
	u64 bytes_to_peer;
	u64 packets_to_client;
	u64 bytes_to_client;
	u64 tat_to_peer; // GCRA theoretical arrival time, ns (CLOCK_MONOTONIC)
	u64 tat_to_client;
	u64 rate; // bytes per second; 0: unlimited
	u64 mtu; // the largest IP datagram towards the client
	struct hop client;
	u8 server_ip[16]; // the address the client sends to
	u64 pad[4];
};

// STATS indices (per CPU).
enum {
	STAT_TO_PEER,
	STAT_TO_CLIENT,
	STAT_EXPIRED,
	STAT_NO_HOP,
	STAT_OVER_LIMIT,
	STAT_TOO_BIG,
	STAT_MAX,
};

struct bpf_map_def SEC("maps") FROM_CLIENT = {
	.type = BPF_MAP_TYPE_HASH,
	.key_size = sizeof(struct client_key),
	.value_size = sizeof(struct to_peer),
	.max_entries = MAX_ENTRIES,
	.map_flags = BPF_F_NO_PREALLOC,
};

struct bpf_map_def SEC("maps") FROM_PEER = {
	.type = BPF_MAP_TYPE_HASH,
	.key_size = sizeof(struct peer_key),
	.value_size = sizeof(struct to_client),
	.max_entries = MAX_ENTRIES,
	.map_flags = BPF_F_NO_PREALLOC,
};

struct bpf_map_def SEC("maps") SLOTS = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = sizeof(u32),
	.value_size = sizeof(struct slot),
	.max_entries = MAX_SLOTS,
	.map_flags = BPF_F_MMAPABLE,
};

struct bpf_map_def SEC("maps") STATS = {
	.type = BPF_MAP_TYPE_PERCPU_ARRAY,
	.key_size = sizeof(u32),
	.value_size = sizeof(u64),
	.max_entries = STAT_MAX,
};

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static long (*bpf_redirect)(u32 ifindex, u64 flags) = (void *)23;
static long (*bpf_csum_diff)(u32 *from, u32 from_size, u32 *to, u32 to_size, u32 seed) = (void *)28;
static long (*bpf_xdp_adjust_head)(struct xdp_md *ctx, int delta) = (void *)44;

#define bswap16(x) __builtin_bswap16(x)
#define NS_PER_S 1000000000ULL

INLINE void count(u32 stat)
{
	u64 *n = bpf_map_lookup_elem(&STATS, &stat);
	if (n)
		*n += 1;
}

INLINE u16 fold(u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (u16)sum;
}

// The IPv4 header checksum over 20 bytes whose check field is zero.
INLINE u16 ip4_check(const u16 *h)
{
	u64 sum = 0;
#pragma unroll
	for (int i = 0; i < IP4_LEN / 2; i++)
		sum += h[i];
	return ~fold(sum);
}

// Spend `bytes` from a GCRA cell refilled at `rate` bytes per second that
// holds one second's worth (as userspace's bucket): allowed while the
// theoretical arrival time stays within a second of now. A lost race is
// retried once, then left to userspace.
INLINE int spend(u64 *tat, u64 rate, u64 now, u64 bytes)
{
	if (rate == 0)
		return 1;
	u64 inc = bytes * NS_PER_S / rate;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		u64 old = *(volatile u64 *)tat;
		u64 next = (old > now ? old : now) + inc;
		if (next - now > NS_PER_S)
			return 0;
		if (__sync_val_compare_and_swap(tat, old, next) == old)
			return 1;
	}
	return 0;
}

INLINE void add(struct slot *s, int to_peer, u64 bytes)
{
	if (to_peer) {
		__sync_fetch_and_add(&s->packets_to_peer, 1);
		__sync_fetch_and_add(&s->bytes_to_peer, bytes);
	} else {
		__sync_fetch_and_add(&s->packets_to_client, 1);
		__sync_fetch_and_add(&s->bytes_to_client, bytes);
	}
}

// The hop a frame came by.
INLINE void hop_of(struct hop *h, const u8 *eth, u32 ifindex)
{
	__builtin_memcpy(h->their_mac, eth + 6, 6);
	__builtin_memcpy(h->our_mac, eth, 6);
	h->ifindex = ifindex;
}

// Whether `n` 32-bit words at `a` and `b` are equal (no memcmp in BPF).
INLINE int same_words(const void *a, const void *b, int n)
{
	const u32 *x = a, *y = b;
	int same = 1;
#pragma unroll
	for (int i = 0; i < n; i++)
		same &= x[i] == y[i];
	return same;
}

INLINE int zero_words(const void *a, int n)
{
	const u32 *x = a;
	u32 any = 0;
#pragma unroll
	for (int i = 0; i < n; i++)
		any |= x[i];
	return any == 0;
}

INLINE int same_hop(const struct hop *a, const struct hop *b)
{
	return same_words(a, b, sizeof(*a) / 4);
}

// Address the rewritten frame to `h` and send it out by its interface.
INLINE int send(struct xdp_md *ctx, const struct hop *h)
{
	u8 *eth = (void *)(long)ctx->data;
	if ((void *)(eth + ETH_LEN) > (void *)(long)ctx->data_end)
		return XDP_PASS;
	__builtin_memcpy(eth, h->their_mac, 6);
	__builtin_memcpy(eth + 6, h->our_mac, 6);
	if (h->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(h->ifindex, 0);
}

// The new UDP checksum after the words in `from` became those in `to`
// (addresses, ports, lengths, the ChannelData header): the payload moves
// by 4 bytes, an even count, so its own sum is unchanged.
INLINE u16 new_udp_check(u16 old, void *from, void *to, u32 size)
{
	long sum = bpf_csum_diff(from, size, to, size, (u16)~old);
	u16 c = ~fold((u64)(u32)sum);
	return c ? c : 0xffff;
}

INLINE u32 pair16(u16 first, u16 second) // two u16s as they sit in memory
{
	return (u32)first | ((u32)second << 16);
}

// The checksum words that change when a datagram is readdressed and
// reframed: source and destination address, ports, UDP length (twice: the
// pseudo-header's and the header's), the ChannelData header (zero where
// there is none). IP is the address length: 4 or 16.
// One family's two rewrites. IPLEN: the IP header's length; IP: the
// address length; SRC, DST: the addresses' offsets in the IP header.
#define RELAY(FAM, IPLEN, IP, SRC, DST)                                        \
	/* The headers copied to the stack, 2 bytes in so that the IP and */ \
	/* UDP headers are 4-byte aligned (the verifier wants aligned      */ \
	/* stack access).                                                   */ \
	struct hdr##FAM {                                                      \
		u8 pad[2];                                                     \
		u8 eth[ETH_LEN];                                               \
		u8 ip[IPLEN];                                                  \
		u8 udp[UDP_LEN];                                               \
	} __attribute__((aligned(4)));                                         \
	enum { HDR##FAM = ETH_LEN + IPLEN + UDP_LEN };                         \
                                                                               \
	/* The checksum words that change when a datagram is readdressed  */ \
	/* and reframed: source and destination address, ports, the UDP   */ \
	/* length (twice: the pseudo-header's and the header's), the      */ \
	/* ChannelData header (zero where there is none).                 */ \
	struct words##FAM {                                                    \
		u8 src[IP], dst[IP];                                           \
		u32 ports, lens, cd;                                           \
	};                                                                     \
                                                                               \
	/* Readdress the copied-back headers at `n` (the frame's start):    */ \
	/* addresses and ports from `out`, lengths `grow` bytes longer, the */ \
	/* new UDP checksum.                                                */ \
	INLINE void rewrite##FAM(u8 *n, struct words##FAM *out, int grow, u16 check)   \
	{                                                                      \
		u8 *ip = n + ETH_LEN, *udp = ip + IPLEN;                       \
		__builtin_memcpy(ip + SRC, out->src, IP);                      \
		__builtin_memcpy(ip + DST, out->dst, IP);                      \
		fix_ip##FAM(ip, grow);                                         \
		*(u32 *)udp = out->ports;                                      \
		*(u16 *)(udp + 4) = bswap16(bswap16(*(u16 *)(udp + 4)) + grow); \
		*(u16 *)(udp + 6) = check;                                     \
	}                                                                      \
                                                                               \
	/* ChannelData from a client -> a datagram from the relay to the    */ \
	/* peer.                                                             */ \
	INLINE int client##FAM(struct xdp_md *ctx, u64 now, struct hdr##FAM *h, \
			       struct to_peer *v, u16 payload)                  \
	{                                                                      \
		struct slot *s = bpf_map_lookup_elem(&SLOTS, &v->slot);        \
		if (!s)                                                        \
			return XDP_PASS;                                       \
		struct hop seen;                                               \
		hop_of(&seen, h->eth, ctx->ingress_ifindex);                   \
		if (!same_hop(&s->client, &seen))                              \
			s->client = seen;                                      \
		if (!same_words(s->server_ip, h->ip + DST, IP / 4))            \
			__builtin_memcpy(s->server_ip, h->ip + DST, IP);       \
		struct hop to = v->peer;                                       \
		if (!to.ifindex) {                                             \
			count(STAT_NO_HOP);                                    \
			return XDP_PASS;                                       \
		}                                                              \
		void *data = (void *)(long)ctx->data;                          \
		if (data + HDR##FAM + CD_LEN > (void *)(long)ctx->data_end)    \
			return XDP_PASS;                                       \
		u16 old_len = *(u16 *)(h->udp + 4);                            \
		u16 new_len = bswap16(UDP_LEN + payload);                      \
		struct words##FAM from = {                                             \
			.ports = *(u32 *)h->udp,                               \
			.lens = pair16(old_len, old_len),                      \
			.cd = *(u32 *)(data + HDR##FAM),                       \
		};                                                             \
		__builtin_memcpy(from.src, h->ip + SRC, IP);                   \
		__builtin_memcpy(from.dst, h->ip + DST, IP);                   \
		struct words##FAM out = {                                              \
			.ports = pair16(v->relay_port, v->peer_port),          \
			.lens = pair16(new_len, new_len),                      \
		};                                                             \
		__builtin_memcpy(out.src, v->relay_ip, IP);                    \
		__builtin_memcpy(out.dst, v->peer_ip, IP);                     \
		u16 check = new_udp_check(*(u16 *)(h->udp + 6), &from, &out,   \
					  sizeof(from));                       \
		if (!spend(&s->tat_to_peer, s->rate, now, payload)) {          \
			count(STAT_OVER_LIMIT);                                \
			return XDP_PASS;                                       \
		}                                                              \
		if (bpf_xdp_adjust_head(ctx, CD_LEN))                          \
			return XDP_PASS;                                       \
		u8 *n = (void *)(long)ctx->data;                               \
		if ((void *)(n + HDR##FAM) > (void *)(long)ctx->data_end)      \
			return XDP_PASS;                                       \
		__builtin_memcpy(n, h->eth, HDR##FAM);                         \
		rewrite##FAM(n, &out, -CD_LEN, check);                         \
		add(s, 1, payload);                                            \
		count(STAT_TO_PEER);                                           \
		return send(ctx, &to);                                         \
	}                                                                      \
                                                                               \
	/* A peer's datagram to a relay port -> ChannelData to the client. */ \
	INLINE int peer##FAM(struct xdp_md *ctx, u64 now, struct hdr##FAM *h,   \
			     struct to_client *w, u16 payload, u32 ip_total)    \
	{                                                                      \
		struct slot *s = bpf_map_lookup_elem(&SLOTS, &w->slot);        \
		if (!s)                                                        \
			return XDP_PASS;                                       \
		struct hop seen;                                               \
		hop_of(&seen, h->eth, ctx->ingress_ifindex);                   \
		if (!same_hop(&w->pushed, &seen)) {                            \
			/* Tell the other direction how to reach this peer. */ \
			struct client_key k = {                                \
				.family = FAM,                                 \
				.channel = w->channel,                         \
				.client_port = w->client_port,                 \
				.server_port = w->server_port,                 \
			};                                                     \
			__builtin_memcpy(k.client_ip, w->client_ip, IP);       \
			struct to_peer *v = bpf_map_lookup_elem(&FROM_CLIENT, &k); \
			if (v) {                                               \
				v->peer = seen;                                \
				w->pushed = seen;                              \
			}                                                      \
		}                                                              \
		struct hop to = s->client;                                     \
		if (!to.ifindex) {                                             \
			count(STAT_NO_HOP);                                    \
			return XDP_PASS;                                       \
		}                                                              \
		if (ip_total + CD_LEN > s->mtu) {                              \
			count(STAT_TOO_BIG);                                   \
			return XDP_PASS;                                       \
		}                                                              \
		u32 server[IP / 4];                                            \
		__builtin_memcpy(server, w->server_ip, IP);                    \
		if (zero_words(server, IP / 4))                                \
			__builtin_memcpy(server, s->server_ip, IP);            \
		u16 old_len = *(u16 *)(h->udp + 4);                            \
		u16 new_len = bswap16(UDP_LEN + CD_LEN + payload);             \
		u32 cd = pair16(w->channel, bswap16(payload));                 \
		struct words##FAM from = {                                             \
			.ports = *(u32 *)h->udp,                               \
			.lens = pair16(old_len, old_len),                      \
		};                                                             \
		__builtin_memcpy(from.src, h->ip + SRC, IP);                   \
		__builtin_memcpy(from.dst, h->ip + DST, IP);                   \
		struct words##FAM out = {                                              \
			.ports = pair16(w->server_port, w->client_port),       \
			.lens = pair16(new_len, new_len),                      \
			.cd = cd,                                              \
		};                                                             \
		__builtin_memcpy(out.src, server, IP);                         \
		__builtin_memcpy(out.dst, w->client_ip, IP);                   \
		u16 check = new_udp_check(*(u16 *)(h->udp + 6), &from, &out,   \
					  sizeof(from));                       \
		if (!spend(&s->tat_to_client, s->rate, now, payload)) {        \
			count(STAT_OVER_LIMIT);                                \
			return XDP_PASS;                                       \
		}                                                              \
		if (bpf_xdp_adjust_head(ctx, -CD_LEN))                         \
			return XDP_PASS;                                       \
		u8 *n = (void *)(long)ctx->data;                               \
		if ((void *)(n + HDR##FAM + CD_LEN) > (void *)(long)ctx->data_end) \
			return XDP_PASS;                                       \
		__builtin_memcpy(n, h->eth, HDR##FAM);                         \
		*(u32 *)(n + HDR##FAM) = cd;                                   \
		rewrite##FAM(n, &out, CD_LEN, check);                          \
		add(s, 0, payload);                                            \
		count(STAT_TO_CLIENT);                                         \
		return send(ctx, &to);                                         \
	}

// The IP header of a rewritten datagram: its new length (`grow` bytes
// more), a fresh hop limit, and for IPv4 the header checksum.
INLINE void fix_ip4(u8 *ip, int grow)
{
	u16 len = bswap16(*(u16 *)(ip + 2));
	*(u16 *)(ip + 2) = bswap16(len + grow);
	ip[8] = 64; // TTL: a datagram tern sends, not one it forwards
	*(u16 *)(ip + 10) = 0;
	*(u16 *)(ip + 10) = ip4_check((u16 *)ip);
}

INLINE void fix_ip6(u8 *ip, int grow)
{
	u16 len = bswap16(*(u16 *)(ip + 4));
	*(u16 *)(ip + 4) = bswap16(len + grow);
	ip[7] = 64;
}

RELAY(4, IP4_LEN, 4, 12, 16)
RELAY(6, IP6_LEN, 16, 8, 24)

// Whether the payload at `p` is ChannelData that fills it exactly.
INLINE int channel_data(const u8 *p, const void *end, u16 payload)
{
	return payload >= CD_LEN && (const void *)(p + CD_LEN) <= end && (p[0] & 0xc0) == 0x40 &&
	       ((u16)p[2] << 8 | p[3]) == payload - CD_LEN;
}

// Look a UDP datagram up: a client's ChannelData, else a peer's datagram.
#define DISPATCH(FAM, IP, SRC, DST)                                            \
	u8 *p = data + HDR##FAM;                                               \
	if (channel_data(p, end, payload)) {                                   \
		struct client_key k = {                                        \
			.family = FAM,                                         \
			.channel = *(u16 *)p,                                  \
			.client_port = *(u16 *)h.udp,                          \
			.server_port = *(u16 *)(h.udp + 2),                    \
		};                                                             \
		__builtin_memcpy(k.client_ip, h.ip + SRC, IP);                 \
		struct to_peer *v = bpf_map_lookup_elem(&FROM_CLIENT, &k);     \
		if (v) {                                                       \
			if (now >= v->expires_ns) {                            \
				count(STAT_EXPIRED);                           \
				return XDP_PASS;                               \
			}                                                      \
			return client##FAM(ctx, now, &h, v, payload - CD_LEN); \
		}                                                              \
	}                                                                      \
	struct peer_key k = {                                                  \
		.family = FAM,                                                 \
		.peer_port = *(u16 *)h.udp,                                    \
		.relay_port = *(u16 *)(h.udp + 2),                             \
	};                                                                     \
	__builtin_memcpy(k.peer_ip, h.ip + SRC, IP);                           \
	__builtin_memcpy(k.relay_ip, h.ip + DST, IP);                          \
	struct to_client *w = bpf_map_lookup_elem(&FROM_PEER, &k);             \
	if (!w)                                                                \
		return XDP_PASS;                                               \
	if (now >= w->expires_ns) {                                            \
		count(STAT_EXPIRED);                                           \
		return XDP_PASS;                                               \
	}                                                                      \
	return peer##FAM(ctx, now, &h, w, payload, payload + UDP_LEN + sizeof(h.ip));

INLINE int ipv4(struct xdp_md *ctx, u64 now)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct hdr4 h;
	if (data + HDR4 > end)
		return XDP_PASS;
	__builtin_memcpy(h.eth, data, HDR4);
	// No options, no fragment, UDP, lengths that match the frame exactly,
	// a checksum.
	u16 ip_len = bswap16(*(u16 *)(h.ip + 2));
	if (h.ip[0] != 0x45 || h.ip[9] != IPPROTO_UDP || (*(u16 *)(h.ip + 6) & bswap16(0x3fff)))
		return XDP_PASS;
	if ((long)ip_len != end - data - ETH_LEN || bswap16(*(u16 *)(h.udp + 4)) != ip_len - IP4_LEN)
		return XDP_PASS;
	if (*(u16 *)(h.udp + 6) == 0)
		return XDP_PASS;
	u16 payload = ip_len - IP4_LEN - UDP_LEN;
	DISPATCH(4, 4, 12, 16)
}

INLINE int ipv6(struct xdp_md *ctx, u64 now)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct hdr6 h;
	if (data + HDR6 > end)
		return XDP_PASS;
	__builtin_memcpy(h.eth, data, HDR6);
	// UDP right after the fixed header (no extension headers), lengths
	// that match the frame exactly, a checksum (mandatory over IPv6).
	u16 plen = bswap16(*(u16 *)(h.ip + 4));
	if ((h.ip[0] >> 4) != 6 || h.ip[6] != IPPROTO_UDP)
		return XDP_PASS;
	if ((long)plen != end - data - ETH_LEN - IP6_LEN || bswap16(*(u16 *)(h.udp + 4)) != plen)
		return XDP_PASS;
	if (*(u16 *)(h.udp + 6) == 0 || plen < UDP_LEN)
		return XDP_PASS;
	u16 payload = plen - UDP_LEN;
	DISPATCH(6, 16, 8, 24)
}

SEC("xdp")
int tern_relay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + ETH_LEN > end)
		return XDP_PASS;
	u16 proto = *(u16 *)(data + 12);
	u64 now = bpf_ktime_get_ns();
	if (proto == bswap16(0x0800))
		return ipv4(ctx, now);
	if (proto == bswap16(0x86dd))
		return ipv6(ctx, now);
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual MIT/GPL";
